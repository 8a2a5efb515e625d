"""Bad input gets one clear line naming the file or option (FERError, exit code 2), never a traceback, and never
destroys anything: unreadable folders, decompression bombs, impossible or non-finite options, unknown keys,
one-subject LOSO, predict outputs that would overwrite inputs, file names that are not UTF-8."""

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fer_lightning.data import FolderDataModule, JAFFEDataModule
from fer_lightning.data.splits import loso_split
from fer_lightning.deploy.prediction import predict
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError

from .conftest import london_folder, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "london-faces"


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A PNG that claims 20000 x 20000 pixels (PIL's decompression-bomb limit is about 179 million)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def faces(tmp_path) -> Path:
    return london_folder(tmp_path / "faces")


def test_unreadable_data_folders(jaffe_dir, faces, monkeypatch):
    real_iterdir, real_scandir = Path.iterdir, os.scandir

    def iterdir(self):
        if self == jaffe_dir:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    def scandir(path="."):
        if Path(path) == faces / "happy":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(FERError, match=r"data.root=.*jaffe cannot be read \(Permission denied\)"):
        JAFFEDataModule(root=str(jaffe_dir), image_size=64, cache_dir=None).prepare_data()
    # a class folder that cannot be listed is an error, not a class silently missing its images
    with pytest.raises(FERError, match=r"faces/happy cannot be read \(Permission denied\)"):
        FolderDataModule(root=str(faces), image_size=64, cache_dir=None).prepare_data()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_data_folder_for_real(jaffe_dir):
    jaffe_dir.chmod(0)
    try:
        with pytest.raises(FERError, match="cannot be read"):
            JAFFEDataModule(root=str(jaffe_dir), image_size=64, cache_dir=None).prepare_data()
    finally:
        jaffe_dir.chmod(0o755)


def test_decompression_bomb_in_the_data(jaffe_dir):
    first = sorted(jaffe_dir.glob("*.tiff"))[0]
    bomb_png(first)
    with pytest.raises(FERError, match=rf"{first.name}: cannot read this image \(DecompressionBombError"):
        JAFFEDataModule(root=str(jaffe_dir), image_size=64, cache_dir=None).prepare_data()


def test_one_subject_loso():
    with pytest.raises(FERError, match=r"data.split=loso needs at least 2 subjects; the data hold 1 \(S1\)"):
        loso_split(["anger", "fear"] * 5, ["S1"] * 10, fold=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.optim.lr=nan"], "model.optim.lr=nan is not a finite number"),
        (["model.optim.lr=0"], "model.optim.lr=0 is not valid: give a positive number"),
        (["model.optim.weight_decay=-1e-4"],
         "model.optim.weight_decay=-0.0001 is not valid: give zero or a positive number"),
        # the recipe's setting, named where the user set it (not model.optim.lr that follows it)
        (["recipe.finetune.lr=-1"], "recipe.finetune.lr=-1 is not valid: give a positive number"),
        (["model.head.dropout=[1.5]"], r"model.head.dropout=\[1.5\] is not valid: give a probability in \[0, 1\)"),
        (["model=handcrafted", "recipe.augment.copies=-2"],
         "recipe.augment.copies=-2 is not valid: give zero or a positive whole number of augmented copies"),
        (["trainer.max_epochs=inf"], "trainer.max_epochs=inf is not a finite number"),
        (["data.batch_size=0"], "data.batch_size=0 is not valid: give a positive whole number"),
        # the option the user set is named, not features.hog.scales that follows it
        (["model=handcrafted", "data.image_size=abc"], "data.image_size='abc' is not valid: give a whole number"),
        (["+data.unknown_key=1"], r"data.unknown_key is not an option of "
                                  r"fer_lightning.data.FERDataModule.from_options; "
                                  r"valid keys: augment, batch_size, .*val_size"),
        (["+model.depth=3"], "model.depth is not an option of fer_lightning.models.deep.DeepFER"),
        (["+trainer.max_epoch=3"], "trainer.max_epoch is not an option of pytorch_lightning.Trainer"),
        (["callbacks.early_stopping.patience=-2"], "callbacks.early_stopping.patience=-2 is not valid"),
    ],
)
def test_bad_options_name_the_option(make_cfg, tmp_path, overrides, message):
    with pytest.raises(FERError, match=message):
        train(make_cfg(*overrides))
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_good_configs_pass(make_cfg):
    from fer_lightning.engine.checks import check_config

    for model in ("deep", "handcrafted", "hybrid"):
        check_config(make_cfg(f"model={model}"))
    check_config(make_cfg("experiment=smoke", "trainer=gpu", "data=folder", "data.root=x", "callbacks=none"))


def test_no_validation_images_is_refused(make_cfg, tmp_path):
    with pytest.raises(FERError, match=r"data.val_size=0 leaves no validation images, but early stopping"):
        train(make_cfg("model=handcrafted", "data.val_size=0"))


@pytest.mark.slow
def test_cli_bad_option_is_one_line(tmp_path, cache_dir):
    res = run_cli("fer_lightning.train", "experiment=smoke", "model=handcrafted", "data.image_size=abc",
                  f"data.cache_dir={cache_dir}", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == (
        "fer-lightning: error: data.image_size='abc' is not valid: give a whole number")


@pytest.fixture(scope="module")
def latin1_run(tmp_path_factory, cache_dir):
    """A handcrafted run on a folder whose file names include one that is not UTF-8 (Latin-1 'café')."""
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir

    from .conftest import TINY

    base = tmp_path_factory.mktemp("latin1")
    faces = base / "faces"
    shutil.copytree(FIXTURES / "happiness", faces / "happy")
    shutil.copytree(FIXTURES / "neutral", faces / "neutral")
    os.rename(faces / "happy" / "001.jpg", os.path.join(os.fsencode(faces / "happy"), b"caf\xe9.jpg"))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "model=handcrafted", "data=folder", f"data.root={faces}",
                                          "data.folds=3", "data.val_size=2", "trainer.max_epochs=1",
                                          f"data.cache_dir={cache_dir}", f"paths.output_dir={base / 'run'}"])
    return base / "run", faces, train(cfg)


@pytest.mark.slow
def test_non_utf8_file_names_train_and_are_written_escaped(latin1_run):
    run, _, _ = latin1_run
    text = (run / "splits.csv").read_bytes().decode("utf-8")  # valid UTF-8
    assert "happy/caf\\xe9.jpg,caf\\xe9," in text


@pytest.mark.slow
def test_predict_outputs_never_destroy_and_never_lose(latin1_run, tmp_path, capsys):
    from fer_lightning.predict import main

    _, faces, m = latin1_run
    image = faces / "neutral" / "002.jpg"
    before = image.read_bytes()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")

    def run(output, target=faces):
        cfg = OmegaConf.create({"ckpt_path": m["best_checkpoint"], "input": str(target), "output": output,
                                "batch_size": 32, "device": "cpu"})
        with pytest.raises(SystemExit) as e:
            main(cfg)
            raise SystemExit(0)
        return e.value.code, capsys.readouterr()

    for output, message in ((str(image), "is one of the input images"),
                            (str(tmp_path / "notes.txt"), "exists and is not a .csv file"),
                            (str(tmp_path), "is a folder; give a CSV file name")):
        code, cap = run(output)
        assert code == 2 and cap.err.strip() == f"fer-lightning: error: output={output} {message}" + (
            "; give another file name" if "input" in message else
            "; it is not overwritten: give a new file name" if "csv" in message else
            f" such as output={tmp_path / 'predictions.csv'}"), cap.err
    assert image.read_bytes() == before and (tmp_path / "notes.txt").read_text() == "mine"
    # an output that cannot be written: the predictions are printed, then one line, exit 2
    code, cap = run(str(tmp_path / "a_file" / "preds.csv"))
    assert code == 2 and "cannot be written" in cap.err.strip().splitlines()[-1]
    lines = cap.out.strip().splitlines()
    assert len(lines) == 12 and any(line.startswith(str(faces / "happy" / "caf\\xe9.jpg\t")) for line in lines)
    from fer_lightning.deploy.prediction import check_output

    check_output(tmp_path / "new.csv", [image])  # a new file, or an existing CSV file, is fine


@pytest.mark.slow
def test_decompression_bomb_is_skipped_by_predict(latin1_run, tmp_path):
    _, _, m = latin1_run
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FIXTURES / "neutral" / "001.jpg", folder / "ok.jpg")
    bomb_png(folder / "bomb.png")
    rows, skipped = predict(m["best_checkpoint"], folder)
    assert [Path(r["file"]).name for r in rows] == ["ok.jpg"]
    assert [Path(f).name for f, _ in skipped] == ["bomb.png"] and "DecompressionBombError" in skipped[0][1]
