"""Checkpoints are read once per command, always with weights_only=True (Lightning's own reads included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from fer_lightning.deploy.prediction import predict
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.evaluate import evaluate
from fer_lightning.models import HandcraftedFER
from fer_lightning.models.backbone import imagenet_weights_file, load_mobilenet_v2

pytestmark = pytest.mark.slow
LIMITS = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


@pytest.fixture
def reads(monkeypatch) -> list[tuple[str, object]]:
    """Every ``torch.load`` of a checkpoint or weights file, as ``(file name, weights_only)``, whoever calls it."""
    seen: list[tuple[str, object]] = []
    real = torch.load

    def spy(f, *args, **kwargs):
        name = str(getattr(f, "path", getattr(f, "name", f)))
        if name.endswith((".ckpt", ".pth")):
            seen.append((Path(name).name, kwargs.get("weights_only")))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return seen


def test_each_command_reads_each_checkpoint_once_and_safely(make_cfg, tmp_path, cache_dir, synthetic_dir, reads):
    first = train(make_cfg("model=handcrafted", "trainer.max_epochs=1", *LIMITS, out=tmp_path / "a"))
    best_a = Path(first["best_checkpoint"]).name
    assert reads == [(best_a, True)]  # the best checkpoint, once, for validation and test

    reads.clear()
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    resumed = train(make_cfg("model=handcrafted", "trainer.max_epochs=2", *LIMITS, f"ckpt_path={last}",
                             out=tmp_path / "b"))
    assert resumed["epochs"] == 2
    assert reads == [("last.ckpt", True), (Path(resumed["best_checkpoint"]).name, True)]  # Lightning's read too

    reads.clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={resumed['best_checkpoint']}", f"data.cache_dir={cache_dir}",
                                         f"paths.output_dir={tmp_path / 'eval'}"])
    evaluate(cfg)
    image = sorted(synthetic_dir.glob("*.tiff"))[0]
    rows, _ = predict(resumed["best_checkpoint"], image)
    assert len(rows) == 1 and reads == [(Path(resumed["best_checkpoint"]).name, True)] * 2

    reads.clear()  # Lightning's own loader, called directly, reads safely too
    assert isinstance(HandcraftedFER.load_from_checkpoint(last), HandcraftedFER) and reads == [("last.ckpt", True)]


def test_resuming_from_a_bad_file_is_a_one_line_error(make_cfg, tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    for name, expected in [("garbage.ckpt", "not a loadable PyTorch checkpoint"),
                           ("foreign.ckpt", "not a fer-lightning checkpoint")]:
        with pytest.raises(FERError, match=expected) as e:
            train(make_cfg("model=handcrafted", f"ckpt_path={tmp_path / name}", out=tmp_path / name[:-5]))
        assert f"ckpt_path={tmp_path / name}" in str(e.value) and "\n" not in str(e.value)


def test_imagenet_weights_are_unpickled_safely(reads):
    file = imagenet_weights_file()
    if not file.is_file():
        pytest.skip(f"needs {file} (offline)")
    load_mobilenet_v2("imagenet")
    assert reads == [(file.name, True)]  # torchvision's own default is weights_only=False
