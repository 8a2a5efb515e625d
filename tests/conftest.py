"""Shared fixtures: a session-wide synthetic set and cache, tiny Hydra configs, CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fer_lightning.data.synthetic import ensure_synthetic
from fer_lightning.engine.configs import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LONDON = SHARED / "data" / "london-faces-256"

# Tests never touch the user's cache; the shared offline torchvision cache is used when it is there.
if "TORCH_HOME" not in os.environ and (SHARED / "torch-home").is_dir():
    os.environ["TORCH_HOME"] = str(SHARED / "torch-home")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def synthetic_dir(cache_dir) -> Path:
    """The default synthetic set (10 subjects x 7 expressions x 3), generated once per test session."""
    return ensure_synthetic(cache_dir)


@pytest.fixture
def jaffe_dir(tmp_path, synthetic_dir) -> Path:
    """A user's JAFFE-format folder (a copy of the synthetic files) that a test may damage."""
    dest = tmp_path / "jaffe"
    dest.mkdir()
    for p in synthetic_dir.glob("*.tiff"):
        shutil.copy2(p, dest / p.name)
    return dest


TINY = [
    "data.image_size=64",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


LONDON_FIXTURES = Path(__file__).parent / "fixtures" / "london-faces"


def london_folder(dest: Path, happy: str = "happy", neutral: str = "neutral") -> Path:
    """A class-folder dataset of the 12 London-faces fixture photos, its class folders named ``happy`` / ``neutral``."""
    shutil.copytree(LONDON_FIXTURES / "happiness", dest / happy)
    shutil.copytree(LONDON_FIXTURES / "neutral", dest / neutral)
    return dest


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """Compose the training config as Hydra would, with tiny settings and a fresh output dir."""

    def _make(*overrides: str, out: Path | None = None) -> DictConfig:
        out = out or tmp_path / "run"
        with_cnn = not any(o == "model=handcrafted" for o in overrides)
        tiny = TINY + (["model.backbone.weights=none"] if with_cnn else [])
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(
                "train",
                overrides=[*tiny, f"data.cache_dir={cache_dir}", f"paths.output_dir={out}", *overrides],
            )

    return _make


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """``python -m fer_lightning.<args>`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


class _TinyCheckpoints(dict):
    """``checkpoints[model]``: trained on first use, then kept for the session."""

    def __init__(self, out: Path, cache_dir: Path) -> None:
        super().__init__()
        self.out, self.cache_dir = out, cache_dir

    def __missing__(self, model: str) -> Path:
        from fer_lightning.engine.training import train

        overrides = [*TINY, "trainer.max_epochs=1", "logger=none", f"model={model}",
                     f"data.cache_dir={self.cache_dir}", f"paths.output_dir={self.out / model}"]
        if model != "handcrafted":
            overrides.append("model.backbone.weights=none")
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            self[model] = Path(train(compose("train", overrides=overrides))["best_checkpoint"])
        return self[model]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """A 64 px, one-epoch checkpoint of a model on the synthetic set (random-init backbone), trained the first
    time a test asks for it, for the tests that only need a trained model (export, video)."""
    return _TinyCheckpoints(tmp_path_factory.mktemp("tiny-runs"), cache_dir)


@pytest.fixture(scope="session")
def fer2013_csv(tmp_path_factory) -> Path:
    """A small FER2013-format file: 600 distinct synthetic 48x48 faces (480 Training, 60 PublicTest, 60
    PrivateTest), generated once per test session."""
    from fer_lightning.data.synthetic import write_fer2013

    return write_fer2013(tmp_path_factory.mktemp("fer2013") / "fer2013.csv", 600, n_subjects=2)
