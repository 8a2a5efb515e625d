"""python -m fer_lightning.predict: any model, any image, the run's preprocessing, bad files skipped."""

import csv
import shutil
from pathlib import Path

import pytest
import torch

from fer_lightning.deploy.prediction import predict
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError

from .conftest import run_cli

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "fixtures" / "london-faces"


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_reproduces_run(run: Path, rows: list[dict], root: Path | None = None, atol: float = 1e-5) -> int:
    """Predicted probabilities equal the run's own predictions.csv for the files both hold (``file`` there is
    relative to the dataset folder ``root``; without ``root``, the file name)."""
    expected = {r["file"]: r for r in rows_of(run / "predictions.csv")}
    matched = 0
    for r in rows:
        key = Path(r["file"]).relative_to(root).as_posix() if root else Path(r["file"]).name
        e = expected.get(key)
        if e is None:
            continue
        matched += 1
        assert r["predicted"] == e["predicted"]
        for k in (k for k in e if k.startswith("p_")):
            assert abs(float(r[k]) - float(e[k])) <= atol, (r["file"], k)
    return matched


@pytest.mark.parametrize("model", ["deep", "handcrafted", "hybrid"])
def test_predict_folder_with_a_corrupt_file(make_cfg, tmp_path, synthetic_dir, model):
    m = train(make_cfg(f"model={model}", "trainer.max_epochs=1"))
    run = tmp_path / "run"
    test_files = [r["file"] for r in rows_of(run / "splits.csv") if r["split"] == "test"][:5]
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    for name in test_files:
        shutil.copy(synthetic_dir / name, folder / name)
    shutil.copy(FIXTURES / "happiness" / "001.jpg", folder / "sub" / "colour_photo.jpg")  # colour, 256 px
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    rows, skipped = predict(m["best_checkpoint"], folder)
    assert len(rows) == 6 and [Path(f).name for f, _ in skipped] == ["broken.png"]
    assert "broken.png: cannot read this image" in skipped[0][1]
    for r in rows:
        probs = [float(v) for k, v in r.items() if k.startswith("p_")]
        assert len(probs) == 7 and abs(sum(probs) - 1) < 1e-4
    assert assert_reproduces_run(run, rows) == 5


def test_predict_uses_the_runs_face_crop(make_cfg, tmp_path):
    faces = tmp_path / "faces"
    shutil.copytree(FIXTURES / "happiness", faces / "happy")
    shutil.copytree(FIXTURES / "neutral", faces / "neutral")
    m = train(make_cfg("data=folder", f"data.root={faces}", "data.folds=3", "data.val_size=2",
                       "data.face_crop=detect", "model=handcrafted", "trainer.max_epochs=1"))
    record = torch.load(m["best_checkpoint"], weights_only=True)["fer_lightning"]
    assert record["preprocessing"] == {"image_size": 64, "face_crop": {"mode": "detect", "margin": 0.2,
                                                                      "min_face": 0.15, "fallback": 0.6}}
    rows, _ = predict(m["best_checkpoint"], faces)
    assert len(rows) == 12 and {k for k in rows[0] if k.startswith("p_")} == {"p_happiness", "p_neutral"}
    test_rows = [r for r in rows_of(tmp_path / "run" / "predictions.csv")]
    assert all("/" in r["file"] for r in test_rows)  # happy/001.jpg and neutral/001.jpg stay apart
    assert assert_reproduces_run(tmp_path / "run", rows, root=faces) == len(test_rows) > 0


def test_predict_errors(tmp_path):
    with pytest.raises(FERError, match="no such file or folder"):
        predict(str(tmp_path / "x.ckpt"), tmp_path / "missing")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(FERError, match="not a fer-lightning checkpoint"):
        predict(str(tmp_path / "foreign.ckpt"), FIXTURES)


def test_predict_cli(make_cfg, tmp_path):
    m = train(make_cfg("trainer.max_epochs=1"))
    folder = tmp_path / "in"
    shutil.copytree(FIXTURES / "neutral", folder)
    (folder / "bad.jpg").write_bytes(b"nope")
    out = tmp_path / "preds.csv"
    res = run_cli("fer_lightning.predict", f"ckpt_path={m['best_checkpoint']}", f"input={folder}", f"output={out}",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(rows_of(out)) == 6 and "skipped 1 unreadable file(s)" in res.stderr and "bad.jpg" in res.stderr
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    res = run_cli("fer_lightning.predict", f"ckpt_path={tmp_path / 'foreign.ckpt'}", f"input={folder}", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("fer-lightning: error: ")
    assert "not a fer-lightning checkpoint" in res.stderr and "Traceback" not in res.stderr
