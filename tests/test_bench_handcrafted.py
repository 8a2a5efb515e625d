"""bench/handcrafted.py, the handcrafted model end to end (issue #20): its stage breakdown read from a run's log, the
JAFFE-format set it generates, and its ``--dry-run`` (the tiny run the suite can afford), so that it cannot rot."""

import importlib.util
import re
import subprocess
import sys
from datetime import datetime

import pytest

from .conftest import REPO

SCRIPT = REPO / "bench" / "handcrafted.py"


def bench():
    spec = importlib.util.spec_from_file_location("bench_handcrafted", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(1_800_000_000 + seconds).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]


def test_stages_split_the_run_at_its_log_lines_and_add_up():
    lines = [(10.0, "fer_lightning.io.chunked", "built decoded jaffe images /c/x: 213 rows in 1.5 s (142 rows/s)"),
             (10.1, "fer_lightning.data.datamodule", "paper split of 213 images: 133 train / 23 val / 57 test"),
             (12.6, "fer_lightning.io.chunked", "built features /c/f: 213 rows in 2.0 s (106 rows/s)"),
             (15.0, "fer_lightning.data.device", "data on cpu: 213 images, batches drawn there"),
             (16.0, "fer_lightning.engine.callbacks", "TensorBoard pictures (drawn while training runs): pictures/hog"),
             (16.5, "fer_lightning.progress", "epoch 1/2: train/loss 1.9, val/loss 1.9, val/acc 0.1; 0.5 s"),
             (17.5, "fer_lightning.progress", "epoch 2/2: train/loss 1.8, val/loss 1.9, val/acc 0.2; 0.4 s"),
             (18.0, "fer_lightning.training", "training stopped: max_epochs, after 2 epochs"),
             (18.25, "fer_lightning.training", "handcrafted on jaffe (paper split): test acc 0.40, macro F1 0.41")]
    log = "\n".join(f"[{stamp(t)}][{name}][INFO] - {msg}" for t, name, msg in lines) + "\n  | a table line |\n"
    got = bench().stages(log, 1_800_000_000.0, 1_800_000_020.0)
    assert [name for name, _ in got] == [
        "start-up: Python, imports, config", "data: decode images", "data: split, settings", "features: HOG+LBP",
        "fitted layers, model, trainer", "pictures at train start", "epochs (2)", "end of fit", "test, outputs",
        "exit: loggers closed, process ends"]
    assert [round(s, 3) for _, s in got] == [8.5, 1.5, 0.6, 2.0, 2.4, 1.0, 1.5, 0.5, 0.25, 1.75]
    # a run without pictures (no TensorBoard logger): their time goes to the next stage found
    without = bench().stages(log.replace("TensorBoard pictures", "something else"), 1_800_000_000.0,
                             1_800_000_020.0)
    assert dict(without)["epochs (2)"] == pytest.approx(2.5) and "pictures at train start" not in dict(without)


def test_the_set_keeps_the_first_images_of_each_expression_then_the_extra_ones(tmp_path, monkeypatch):
    module = bench()
    made = []

    def fake_generate(out, n_subjects, per_expression, seed):
        out.mkdir(parents=True)
        paths = []
        for s in range(n_subjects):
            for e in ("AN", "HA"):
                for k in range(1, per_expression + 1):
                    paths.append(out / f"Z{'AB'[s]}.{e}{k}.{len(paths) + 1}.tiff")
                    paths[-1].write_bytes(b"x")
        made.append(1)
        return paths

    monkeypatch.setattr(module, "generate", fake_generate)
    folder = module.jaffe_set(tmp_path, 2, 3, 9)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["ZA.AN1.1.tiff", "ZA.AN2.2.tiff", "ZA.HA1.4.tiff", "ZA.HA2.5.tiff", "ZB.AN1.7.tiff", "ZB.AN2.8.tiff",
         "ZB.HA1.10.tiff", "ZB.HA2.11.tiff", "ZA.AN3.3.tiff"])
    assert module.jaffe_set(tmp_path, 2, 3, 9) == folder and made == [1]  # built once, then reused
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind


@pytest.mark.slow
def test_dry_run_trains_and_prints_its_stages_and_ratio(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--folder", str(tmp_path / "data"),
                          "--out", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout.splitlines()
    assert re.fullmatch(r"handcrafted 48 px, 30 images: [\d.]+ s wall \(target 30 s\) ratio: \d+\.\dx", out[-1])
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert len(list((tmp_path / "data" / "jaffe-v1-2x3-30").glob("*.tiff"))) == 30
    wall = float(re.search(r"wall ([\d.]+) s, CPU ([\d.]+) s", out[-2]).group(1))
    parts = {m.group(1).strip(): float(m.group(2)) for ln in out if (m := re.fullmatch(r"  (.+?)\s+([\d.]+) s", ln))}
    assert {"start-up: Python, imports, config", "features: HOG+LBP", "epochs (2)", "test, outputs"} <= set(parts)
    assert sum(parts.values()) == pytest.approx(wall, abs=0.1 * len(parts) + 0.5)
