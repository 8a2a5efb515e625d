"""Heads on fixed features without per-epoch machinery: the fitted z-score/PCA layers are written once per run beside
the checkpoints (``fitted-<digest>.pt``, named in every checkpoint), checkpoints of the old layout (fitted layers
inside) still load and resume exactly, and ``last.ckpt`` is written every ``callbacks.last_checkpoint.every_s``
seconds, at the end and on interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from lightning_fabric.plugins import TorchCheckpointIO

from fer_lightning.deploy.prediction import predict
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.evaluate import evaluate
from fer_lightning.runs.checkpoints import FITTED_KEY, CheckedCheckpointIO, read_checkpoint, tensors_digest

from .conftest import TINY

SETTINGS = [*TINY, "model=handcrafted", "trainer.max_epochs=3", "callbacks.early_stopping=null", "logger=none"]
VOLATILE = {"fit_seconds", "best_checkpoint"}


def test_fitted_layers_are_written_once_and_read_back_or_refused_in_one_line(tmp_path):
    tensors = {"fusion.pca.components": torch.randn(3, 5), "fusion.pca.fitted": torch.tensor(True)}
    ckpt = {"fer_lightning": {"model": "handcrafted"}, "state_dict": {"fusion.mlp.0.weight": torch.ones(2)},
            FITTED_KEY: {"digest": tensors_digest(tensors), "tensors": tensors}}
    io = CheckedCheckpointIO(TorchCheckpointIO())
    folder = tmp_path / "checkpoints"
    for name in ("a.ckpt", "b.ckpt"):
        io.save_checkpoint(ckpt, folder / name)
    fitted = sorted(folder.glob("fitted-*.pt"))
    assert [p.name for p in fitted] == [f"fitted-{tensors_digest(tensors)}.pt"]  # once for both checkpoints
    raw = torch.load(folder / "a.ckpt", weights_only=True)
    assert FITTED_KEY not in raw and list(raw["state_dict"]) == ["fusion.mlp.0.weight"]
    assert raw["fer_lightning"]["fitted"] == {"file": fitted[0].name, "digest": tensors_digest(tensors)}
    for source in (folder / "b.ckpt", tmp_path / "inside.ckpt"):  # named in the record; or inside the checkpoint
        if source.name == "inside.ckpt":
            torch.save(ckpt, source)
        back = read_checkpoint(source)["state_dict"]
        assert sorted(back) == sorted([*tensors, "fusion.mlp.0.weight"])
        assert all(torch.equal(back[k], v) for k, v in tensors.items())

    torch.save({k: v + 1 for k, v in tensors.items() if v.is_floating_point()}, fitted[0])
    with pytest.raises(FERError, match=r"a.ckpt: its fitted z-score/PCA layers \(fitted-.*\) are damaged"):
        read_checkpoint(folder / "a.ckpt")
    fitted[0].write_bytes(b"not a file of tensors")
    with pytest.raises(FERError, match="are unreadable"):
        read_checkpoint(folder / "a.ckpt")
    fitted[0].unlink()
    with pytest.raises(FERError, match="are missing; copy the run's whole checkpoints/ folder") as e:
        read_checkpoint(folder / "a.ckpt")
    assert "\n" not in str(e.value)


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*SETTINGS, *overrides])


@pytest.fixture(scope="module")
def whole(tmp_path_factory, cache_dir) -> tuple[Path, dict, list[str]]:
    """A run of 3 epochs with last.ckpt every epoch: its folder, metrics and the checkpoint files written."""
    out = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as mp:
        writes = spy_writes(mp)
        metrics = train(compose_train("callbacks.last_checkpoint.every_s=0", f"data.cache_dir={cache_dir}",
                                      f"paths.output_dir={out}"))
    return out, metrics, writes


def spy_writes(mp: pytest.MonkeyPatch) -> list[str]:
    """The names of the checkpoint files written from now on."""
    writes: list[str] = []
    real = CheckedCheckpointIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        writes.append(Path(path).name)
        return real(self, checkpoint, path, storage_options)

    mp.setattr(CheckedCheckpointIO, "save_checkpoint", save)
    return writes


def old_layout(ckpt_path: Path, dest: Path) -> Path:
    """``ckpt_path`` as the code before the fitted files wrote it: the fitted layers inside ``state_dict``."""
    ckpt = read_checkpoint(ckpt_path)
    del ckpt["fer_lightning"]["fitted"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dest)
    return dest


@pytest.mark.slow
def test_every_checkpoint_names_one_fitted_file_and_old_checkpoints_still_load(whole, tmp_path, cache_dir,
                                                                                synthetic_dir):
    out, metrics, writes = whole
    assert writes.count("last.ckpt") == 3  # every_s=0: every epoch, as before
    fitted = sorted((out / "checkpoints").glob("fitted-*.pt"))
    assert len(fitted) == 1
    stored = torch.load(fitted[0], weights_only=True)
    assert any(k.endswith("pca.components") for k in stored) and any(".zscore." in k for k in stored)
    best = Path(metrics["best_checkpoint"])
    for ckpt in sorted((out / "checkpoints").glob("*.ckpt")):
        raw = torch.load(ckpt, weights_only=True)
        assert raw["fer_lightning"]["fitted"]["file"] == fitted[0].name and not set(stored) & set(raw["state_dict"])
        full = read_checkpoint(ckpt)["state_dict"]
        assert all(torch.equal(full[k], v) for k, v in stored.items())

    old = old_layout(best, tmp_path / "old" / "checkpoints" / best.name)
    assert old.stat().st_size > best.stat().st_size + 0.9 * fitted[0].stat().st_size  # the fitted layers inside
    image = sorted(synthetic_dir.glob("*.tiff"))[0]
    assert predict(old, image)[0] == predict(best, image)[0]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={old}", f"data.cache_dir={cache_dir}",
                                         f"paths.output_dir={tmp_path / 'eval'}"])
    evaluated = evaluate(cfg)
    assert abs(evaluated["test/acc"] - metrics["test/acc"]) <= 1e-6
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]


class InterruptAtEpoch2(pl.Callback):
    """Ctrl+C at the start of epoch 2."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_with_no_last_checkpoint_due_it_is_written_and_an_old_layout_one_resumes_exactly(
        whole, tmp_path, cache_dir):
    out, _, _ = whole
    cut = tmp_path / "cut"
    settings = ["callbacks.last_checkpoint.every_s=3600", f"data.cache_dir={cache_dir}", f"paths.output_dir={cut}"]
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
        writes = spy_writes(mp)
        train(compose_train(*settings, f"+callbacks.stop._target_={__name__}.InterruptAtEpoch2"))
    assert writes.count("last.ckpt") == 1  # not due after epochs 0 and 1: written once, when interrupted
    last = cut / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1

    old_layout(last, last)  # the resume point as the code before the fitted files wrote it, and no fitted file
    for f in (cut / "checkpoints").glob("fitted-*.pt"):
        f.unlink()
    with pytest.MonkeyPatch.context() as mp:
        writes = spy_writes(mp)
        train(compose_train(*settings, f"ckpt_path={last}"))
    assert writes.count("last.ckpt") == 1  # every_s not reached: written at the end only
    assert torch.load(last, weights_only=True)["epoch"] == 2
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out, cut))
    assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    assert (out / "predictions.csv").read_bytes() == (cut / "predictions.csv").read_bytes()
    sa, sb = (read_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (out, cut))
    assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_best_checkpoint_held_in_memory_leaves_the_same_files_and_is_written_before_last(tmp_path, cache_dir):
    out = tmp_path / "run"
    runs = {}
    for every_s in ("0", "3600"):  # at every improvement (as before) / held until the end
        with pytest.MonkeyPatch.context() as mp:
            writes = spy_writes(mp)
            train(compose_train(f"callbacks.last_checkpoint.every_s={every_s}", f"data.cache_dir={cache_dir}",
                                f"paths.output_dir={out}"))
        runs[every_s] = writes, {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
        out.rename(tmp_path / f"every_{every_s}")
    (at_once, files), (held, held_files) = runs["0"], runs["3600"]
    assert held_files == files  # the same names (best epoch included), byte for byte
    assert any(name.startswith("epoch_") for name in files)
    assert at_once.count("last.ckpt") == 3 and held.count("last.ckpt") == 1
    assert len([w for w in held if w.startswith("epoch_")]) == 1  # written once, at the end
    last = torch.load(tmp_path / "every_3600" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("ModelCheckpoint{") for k in last["callbacks"])  # the key of checkpoints written before
    # last.ckpt due every epoch, the best held: a new best is written with last.ckpt, just before it
    with pytest.MonkeyPatch.context() as mp:
        writes = spy_writes(mp)
        train(compose_train("callbacks.last_checkpoint.every_s=0", "callbacks.model_checkpoint.every_s=3600",
                            f"data.cache_dir={cache_dir}", f"paths.output_dir={out}"))
    assert writes == at_once
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == files


@pytest.mark.slow
def test_logged_values_are_those_of_lightnings_own_log(tmp_path, cache_dir, caplog):
    """The model's fast path into Lightning's results (``FERClassifier._log``) against plain ``self.log``: the same
    CSV rows (train, val and test metrics of every epoch), epoch lines, best checkpoint and metrics."""
    from fer_lightning.models.base import FERClassifier

    seen = {}
    for name in ("fast", "plain"):
        out = tmp_path / name
        with pytest.MonkeyPatch.context() as mp:
            if name == "plain":
                mp.setattr(FERClassifier, "_log", lambda self, key, value, batch_size=None, **meta:
                           self.log(key, value, batch_size=batch_size, **meta))
            caplog.clear()
            with caplog.at_level("INFO", logger="fer_lightning.progress"):
                metrics = train(compose_train("logger=csv", "progress.mode=lines", "trainer.enable_progress_bar=true",
                                              "trainer.max_epochs=4", f"data.cache_dir={cache_dir}",
                                              f"paths.output_dir={out}"))
        lines = [r.getMessage().split(";")[0] for r in caplog.records if r.name == "fer_lightning.progress"]
        seen[name] = ((out / "csv" / "metrics.csv").read_text(), lines, Path(metrics["best_checkpoint"]).name,
                      {k: v for k, v in metrics.items() if k not in VOLATILE})
    fast, plain = seen["fast"], seen["plain"]
    assert fast[0].count("\n") > 8 and "val/acc_happiness" in fast[0] and "train/loss" in fast[0]
    assert [line for line in fast[1] if line.startswith("epoch ")] and fast[1] == plain[1]
    assert fast == plain


@pytest.mark.slow
def test_validation_projects_stored_blocks_once_with_the_same_numbers(tmp_path, cache_dir):
    """A validation batch of stored blocks gives the same fused features every epoch: the fixed layers run on it once
    per data module (HandcraftedFER.logits), and the run's CSV rows, metrics and weights are those of a run that
    projects every batch every epoch. 23 validation images in batches of 16: 2 batches an epoch."""
    from fer_lightning.models import handcrafted
    from fer_lightning.models.components.fusion import FusionHead

    seen, original = {}, FusionHead.reduce
    for name in ("kept", "every epoch"):
        out, calls = tmp_path / name, []

        def counted(self, blocks, calls=calls):
            calls.append(self.training)
            return original(self, blocks)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(FusionHead, "reduce", counted)
            if name == "every epoch":
                mp.setattr(handcrafted, "MAX_REDUCED_BYTES", 0)
            metrics = train(compose_train("logger=csv", "trainer.max_epochs=4", f"data.cache_dir={cache_dir}",
                                          f"paths.output_dir={out}"))
        weights = read_checkpoint(Path(metrics["best_checkpoint"]))["state_dict"]
        seen[name] = ((out / "csv" / "metrics.csv").read_text(), {k: v for k, v in metrics.items()
                                                                 if k not in VOLATILE}, weights,
                      calls.count(False), calls.count(True))
    kept, every = seen["kept"], seen["every epoch"]
    assert kept[0] == every[0] and "val/loss" in kept[0] and kept[1] == every[1]
    assert kept[2].keys() == every[2].keys() and all(torch.equal(kept[2][k], every[2][k]) for k in kept[2])
    assert kept[4] == every[4] > 0  # training batches: projected every step, as before
    assert every[3] - kept[3] == 4 * 2  # every epoch's 2 validation batches, projected once in the sanity check
