"""Logs a user can follow from a file: one line per epoch, progress lines, why training stopped, quiet commands,
run folders as ckpt_path, the resume hint as typed."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fer_lightning.engine.progress import StopRecord, epoch_line
from fer_lightning.engine.resume import typed_command
from fer_lightning.engine.startup import quiet_third_party
from fer_lightning.errors import FERError
from fer_lightning.runs.folder import RunFolder, resolve_checkpoint, resume_checkpoint
from fer_lightning.runs.guard import check_output_dir
from fer_lightning.runtime import listing, progress
from fer_lightning.runtime.listing import cut_long_lines, list_into, shorten

from .conftest import LONDON_FIXTURES, REPO, run_cli


@pytest.fixture(autouse=True)
def _default_settings():
    yield
    progress.configure()
    list_into(None)


# ---------------------------------------------------------------------------------------------- progress lines
def test_progress_lines_every_n_seconds_and_no_bar(caplog, monkeypatch):
    progress.configure("lines", every_s=0)
    caplog.set_level(logging.INFO, logger="fer_lightning.progress")
    with progress.Progress(4000, 1000, "decoded images") as p:
        p.update(1000)
        p.update(2000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("decoded images: 2000/4000 rows (50%)") and "ETA" in lines[0]
    assert lines[1].startswith("decoded images: 4000/4000 rows (100%)") and "\r" not in "".join(lines)
    caplog.clear()
    progress.configure("lines", every_s=3600)  # none due within the hour
    with progress.Progress(4000, 0, "decoded images") as p:
        p.update(4000)
    assert caplog.records == []


def test_progress_mode_follows_stdout(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    progress.configure("auto")
    monkeypatch.setattr(sys, "stdout", Tty())
    assert not progress.as_lines()
    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))  # a file
    assert progress.as_lines()
    progress.configure("bars")
    assert not progress.as_lines()
    with pytest.raises(FERError, match="progress.mode"):
        progress.configure("sometimes")


def test_epoch_line_numbers():
    line = epoch_line(2, 40, {"train/loss": 0.5, "val/loss": 0.25, "val/acc": 0.75, "lr": 0.1}, 61.0, 38 * 61.0)
    assert line == "epoch 2/40: train/loss 0.5000, val/loss 0.2500, val/acc 0.7500; 61.0 s, ETA at most 38m38s"


# ---------------------------------------------------------------------------------------------- long lines
def test_long_lists_are_cut_and_written_whole(tmp_path):
    names = [f"{'very/long/folder/' * 5}img_{i:03d}.png" for i in range(200)]
    list_into(tmp_path / "warnings.txt")
    text = shorten(names, "duplicates")
    assert text.endswith("and 197 more (all in warnings.txt)") and len(text) < 250
    written = (tmp_path / "warnings.txt").read_text().splitlines()
    assert written[0] == "# duplicates (200)" and written[1:201] == names


def test_no_log_line_over_300_characters(tmp_path):
    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "log.txt")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    try:
        cut_long_lines()
        logging.getLogger("fer_lightning.x").warning("files: %s; remove them", ", ".join(["a" * 40] * 30))
        logging.getLogger("fer_lightning.x").warning("short")
    finally:
        root.removeHandler(handler)
        handler.close()
        listing.stop_cutting_lines()  # pytest's own handlers: left as they were
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 2 and max(map(len, lines)) <= listing.MAX_LINE
    assert "- files: aaaa" in lines[0] and re.search(r"\[\.\.\. 12\d\d characters \.\.\.\]", lines[0])
    assert lines[0].endswith("aaaa; remove them") and lines[1].endswith("- short")  # what to do is kept


def test_lightning_advert_dropped_unless_verbose(caplog):
    lightning = logging.getLogger("lightning_fabric.utilities.rank_zero")
    caplog.set_level(logging.INFO)
    try:
        quiet_third_party(verbose=False)
        lightning.info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/...)")
        lightning.info("`Trainer.fit` stopped: `max_epochs=2` reached.")
        lightning.info("GPU available: False, used: False")
        assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    finally:
        lightning.filters.clear()


# ---------------------------------------------------------------------------------------------- run folders
def _ckpt(run: Path, name: str, mtime: float) -> Path:
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    path = run / "checkpoints" / name
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_run_folder_means_its_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    _ckpt(run, "last.ckpt", 300)
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"  # nothing better yet
    _ckpt(run, "epoch_003.ckpt", 100)
    newest = _ckpt(run, "epoch_007.ckpt", 200)
    assert resolve_checkpoint(run) == newest  # unfinished: the newest best-so-far
    assert resolve_checkpoint(run / "checkpoints") == newest
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "/elsewhere/run/checkpoints/epoch_003.ckpt"}))
    moved = tmp_path / "moved"
    shutil.move(run, moved)  # metrics.json names the old place: the file is found in the folder given
    assert resolve_checkpoint(moved) == moved / "checkpoints" / "epoch_003.ckpt"
    assert RunFolder(moved).best_checkpoint() == moved / "checkpoints" / "epoch_003.ckpt"
    assert resolve_checkpoint(moved / "checkpoints" / "last.ckpt") == moved / "checkpoints" / "last.ckpt"


def test_run_folder_without_checkpoints_is_one_line(tmp_path):
    _ckpt(tmp_path / "pipe" / "deep", "epoch_001.ckpt", 1)
    _ckpt(tmp_path / "pipe" / "hybrid", "epoch_002.ckpt", 1)
    with pytest.raises(FERError, match=r"pipeline's folder; give one of its stage folders: .*deep, .*hybrid"):
        resolve_checkpoint(tmp_path / "pipe")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FERError, match="ckpt_path=.*empty: a folder without checkpoints"):
        resolve_checkpoint(tmp_path / "empty")


def test_a_run_folder_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    _ckpt(run, "epoch_002.ckpt", 1)
    with pytest.raises(FERError, match="without checkpoints/last.ckpt to resume from"):
        resume_checkpoint(run)
    last = _ckpt(run, "last.ckpt", 2)
    assert resume_checkpoint(run) == last and resume_checkpoint(run / "checkpoints") == last
    check_output_dir(run, str(run))  # resuming the run in its own folder, given as the folder: allowed
    with pytest.raises(FERError, match="another run than ckpt_path="):
        check_output_dir(tmp_path / "other", str(run)) if _ckpt(tmp_path / "other", "last.ckpt", 1) else None


# ---------------------------------------------------------------------------------------------- resume hint
def test_resume_hint_repeats_the_command_as_typed():
    assert typed_command("/v/bin/fer-train", ["/usr/local/bin/uv", "run", "fer-train", "a=1"], {}) == "uv run fer-train"
    assert typed_command("/v/bin/fer-train", ["uv", "run", "--locked", "fer-train"], {}) == "uv run fer-train"
    assert typed_command("/v/bin/fer-train", ["/bin/bash"], {"UV_RUN_RECURSION_DEPTH": "1"}) == "fer-train"
    assert typed_command("/v/bin/fer-train", [], {"UV_RUN_RECURSION_DEPTH": "1"}) == "uv run fer-train"
    assert typed_command("/r/fer_lightning/train.py", ["uv", "run", "python", "-m", "fer_lightning.train"],
                         {}) == "uv run python -m fer_lightning.train"
    assert typed_command("/r/fer_lightning/train.py", ["sbatch"], {}) == "python -m fer_lightning.train"


# ---------------------------------------------------------------------------------------------- stop reasons
@pytest.mark.slow
def test_stop_reasons_early_stopping_and_limit_train_batches(make_cfg):
    from fer_lightning.engine.training import train

    # no val/loss improvement of 100 ever counts: stopped at epoch 2 (patience 0), half the batches per epoch
    m = train(make_cfg("trainer.max_epochs=5", "+trainer.limit_train_batches=0.5", "logger=none",
                       "callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=100"))
    assert m["stop_reason"] == "early stopping at epoch 2" and m["epochs"] == 2
    assert m["limit_train_batches"] == 0.5
    per_epoch = m["train_images_seen"] / 2
    assert 0.35 * m["n_train"] <= per_epoch <= 0.65 * m["n_train"], m["train_images_seen"]


@pytest.mark.slow
def test_stop_reason_max_time(make_cfg):
    from fer_lightning.engine.training import train

    m = train(make_cfg("trainer.max_epochs=50", "trainer.max_time=00:00:00:01",
                       "logger=none"))
    assert m["stop_reason"] == "max_time" and m["epochs"] < 50 and "limit_train_batches" not in m
    # the timer stops between batches: the last epoch is whole or cut short, and the record says which
    if "last_epoch_batches" in m:
        done, total = map(int, m["last_epoch_batches"].split("/"))
        assert 0 < done < total
        assert (m["epochs"] - 1) * m["n_train"] < m["train_images_seen"] < m["epochs"] * m["n_train"]
    else:
        assert m["train_images_seen"] == m["epochs"] * m["n_train"]


@pytest.mark.slow
def test_stop_between_batches_says_the_last_epoch_was_cut_short(make_cfg, tmp_path):
    from fer_lightning.engine.training import train

    # 130 training images in batches of 16: 9 batches an epoch; step 10 is the first batch of epoch 2
    m = train(make_cfg("trainer.max_epochs=5", "+trainer.max_steps=10", "logger=none"))
    assert m["n_train"] == 130 and m["stop_reason"] == "max_steps"
    assert m["epochs"] == 2 and m["last_epoch_batches"] == "1/9" and m["train_images_seen"] == 130 + 16
    whole = train(make_cfg("trainer.max_epochs=5", "+trainer.max_steps=9", "logger=none", out=tmp_path / "whole"))
    assert whole["epochs"] == 1 and "last_epoch_batches" not in whole and whole["train_images_seen"] == 130


# ---------------------------------------------------------------------------------------------- commands
@pytest.mark.slow
def test_train_into_a_log_file(tmp_path, cache_dir):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    args = ["data.image_size=32", "trainer.max_epochs=2", "model.backbone.weights=none", "logger=none",
            f"data.cache_dir={cache_dir}", f"paths.output_dir={out}", "hydra.run.dir=" + str(out)]
    with open(log, "w") as f:  # stdout a file, not a terminal: progress as lines
        res = subprocess.run([sys.executable, "-m", "fer_lightning.train", *args], cwd=tmp_path, stdout=f,
                             stderr=subprocess.PIPE, text=True, timeout=900,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    epochs = [line for line in lines if "fer_lightning.progress" in line and "] - epoch " in line]
    assert [e.split("] - ", 1)[1].split(":")[0] for e in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("train/loss" in e and "val/acc" in e and " s" in e for e in epochs)
    assert "\r" not in text and max(len(line) for line in text.splitlines() + res.stderr.splitlines()) <= 300
    lowered = (text + res.stderr).lower()
    assert "flops" not in lowered and "litlogger" not in lowered and "max_epochs=2` reached" not in lowered
    metrics = json.loads((out / "metrics.json").read_text())
    assert lines[-1].endswith(f"best checkpoint: {metrics['best_checkpoint']}")
    assert Path(metrics["best_checkpoint"]).is_file()
    assert metrics["stop_reason"] == "max_epochs" and metrics["train_images_seen"] == 2 * metrics["n_train"]
    assert "training stopped: max_epochs, after 2 epochs" in text


@pytest.mark.slow
def test_export_and_predict_take_the_run_folder_and_keep_quiet(tiny_checkpoints, tmp_path):
    pytest.importorskip("onnx")
    run = RunFolder.of_checkpoint(tiny_checkpoints["deep"]).path
    res = run_cli("fer_lightning.export", f"ckpt_path={run}", f"output={tmp_path / 'm.onnx'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "m.onnx").is_file() and res.stdout.strip() == f"wrote {tmp_path / 'm.onnx'}"
    assert len((res.stdout + res.stderr).splitlines()) <= 10, res.stdout + res.stderr
    assert str(tiny_checkpoints["deep"]) in res.stderr  # which checkpoint the run folder meant
    folder = tmp_path / "in"
    shutil.copytree(LONDON_FIXTURES / "neutral", folder)
    (folder / "bad.jpg").write_bytes(b"nope")
    res = run_cli("fer_lightning.predict", f"ckpt_path={run}", f"input={folder}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = res.stdout.splitlines()
    assert len(rows) == 6 and all(r.startswith(str(folder)) and len(r.split("\t")) == 3 for r in rows), rows
    assert "bad.jpg" not in res.stdout and "skipped 1 unreadable file(s)" in res.stderr


def test_stop_sentence_names_the_fraction():
    one = {"stop_reason": "max_time", "epochs": 1, "train_images_seen": 130}
    assert StopRecord.sentence(one) == "training stopped: max_time, after 1 epoch; 130 training images seen"
    summary = {"stop_reason": "max_epochs", "epochs": 3, "train_images_seen": 195, "limit_train_batches": 0.5}
    assert StopRecord.sentence(summary) == ("training stopped: max_epochs, after 3 epochs (each on "
                                            "limit_train_batches=0.5 of the training batches); 195 training images "
                                            "seen")
