"""Dataset formats: FER2013 (+ FER+), manifests, RAF-DB and AffectNet layouts, on small files in each exact format."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_lightning.data import FERDataModule
from fer_lightning.data.sources.fer2013 import FER2013_CODES, FERPLUS_COLUMNS, scan_fer2013
from fer_lightning.errors import FERError

FIXTURES = Path(__file__).parent / "fixtures" / "london-faces"


def dm(tmp_path, **kw):
    return FERDataModule.from_options(image_size=48, cache_dir=str(tmp_path / "c"), decode_workers=0, **kw)


def test_fer2013_official_split_labels_and_counts(fer2013_csv, tmp_path):
    d = dm(tmp_path, source="fer2013", root=str(fer2013_csv.parent), split="official")
    d.setup()
    assert (len(d.split.train), len(d.split.val), len(d.split.test)) == (480, 60, 60)
    assert d.class_names == ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
    assert d.dataset_name == "fer2013" and d.file_names()[17] == "fer2013.csv#17"
    with open(fer2013_csv) as f:
        rows = list(csv.DictReader(f))
    for i in (0, 17, 599):  # label, pixels and split of a row, as written
        assert d.decoded.labels[i] == FER2013_CODES[int(rows[i]["emotion"])]
        pixels = np.array(rows[i]["pixels"].split(), dtype=np.uint8).reshape(48, 48)
        assert np.array_equal(d.decoded.images[i, 0].numpy(), pixels)
    assert d.split_rows()[500]["split"] == "val" and d.split_rows()[599]["split"] == "test"
    assert {r["subject"] for r in d.split_rows()} == {""}
    paper = dm(tmp_path, source="fer2013", root=str(fer2013_csv), split="paper", test_size=0.1, val_size=0.1)
    paper.setup()
    assert (len(paper.split.test), len(paper.split.val)) == (60, 60)
    for split in ("loso", "subject_kfold"):
        with pytest.raises(FERError, match=f"data.split={split} needs a subject id for every image, and fer2013 has"):
            dm(tmp_path, source="fer2013", root=str(fer2013_csv), split=split).setup()


def _rewrite(src: Path, dest: Path, edit) -> Path:
    lines = src.read_text().splitlines()
    dest.write_text("\n".join(edit(lines)) + "\n")
    return dest


@pytest.mark.parametrize("edit, message", [
    (lambda ls: ["emotion,pixels"] + [line.rsplit(",", 1)[0] for line in ls[1:]], r"missing column\(s\) Usage"),
    (lambda ls: ls[:5] + [ls[5].replace(",Training", ",Trainig")] + ls[6:], r"row 4: unknown Usage 'Trainig'"),
    (lambda ls: ls[:3] + ["9" + ls[3][1:]] + ls[4:], r"row 2: unknown emotion code '9'"),
    (lambda ls: ls[:8] + [ls[8].replace(" ", " x", 1)] + ls[9:], r"fer2013.csv#7: 'pixels' holds 'x\d+', not a number"),
    (lambda ls: ls[:8] + [ls[8].replace(" ", "", 1)] + ls[9:], r"fer2013.csv#7: 'pixels' has 2303 values"),
])
def test_fer2013_bad_input(fer2013_csv, tmp_path, edit, message):
    bad = _rewrite(fer2013_csv, tmp_path / "fer2013.csv", edit)
    with pytest.raises(FERError, match=message):
        dm(tmp_path, source="fer2013", root=str(bad)).setup()
    assert not [p for p in (tmp_path / "c").glob("*") if p.is_dir()]  # nothing half-written left as a store


def _ferplus(fer2013_csv: Path, dest: Path, votes) -> Path:
    rows = scan_fer2013(fer2013_csv)
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FERPLUS_COLUMNS)
        for i, r in enumerate(rows):
            w.writerow([usage[r.split], f"fer{i:07d}.png", *votes(i)])
    return dest


def _votes(i):
    """neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF"""
    if i % 10 == 0:
        return [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]  # not a face
    if i % 10 == 1:
        return [4, 4, 0, 0, 0, 0, 0, 0, 2, 0]  # a tie
    v = [0] * 10
    v[i % 8] = 6
    v[(i + 1) % 8] = 4
    return v


def test_ferplus_majority_and_soft(fer2013_csv, tmp_path, caplog):
    votes = _ferplus(fer2013_csv, tmp_path / "fer2013new.csv", _votes)
    major = dm(tmp_path, source="fer2013", root=str(fer2013_csv), ferplus=str(votes))
    major.setup()
    assert len(major.decoded.labels) == 480  # 60 not-a-face and 60 ties dropped
    assert "dropped 60 with no emotion majority (unknown / not a face) and 60 tied" in caplog.text
    assert "contempt" in major.class_names and len(major.class_names) == 8 and major.dataset_name == "ferplus"
    i = major.file_names().index("fer2013.csv#2")
    assert major.decoded.labels[i] == "surprise"  # votes 6 surprise, 4 sadness
    soft = dm(tmp_path, source="fer2013", root=str(fer2013_csv), ferplus=str(votes), ferplus_mode="soft")
    soft.setup()
    assert len(soft.decoded.labels) == 540  # ties kept as distributions, not-a-face dropped
    j = soft.file_names().index("fer2013.csv#2")
    expected = {"surprise": 0.6, "sadness": 0.4}
    assert soft.soft[j].tolist() == pytest.approx([expected.get(c, 0.0) for c in soft.class_names])
    batch = next(iter(soft.train_dataloader()))
    assert batch["soft"].shape == (16, 8) and torch.allclose(batch["soft"].sum(1), torch.ones(16))
    tie = soft.file_names().index("fer2013.csv#1")
    assert soft.soft[tie].max() == 0.5 and soft.decoded.labels[tie] in ("happiness", "neutral")


def test_ferplus_rows_must_match(fer2013_csv, tmp_path):
    votes = _ferplus(fer2013_csv, tmp_path / "fer2013new.csv", _votes)
    lines = votes.read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FERError, match=r"has 599 rows but fer2013.csv has 600"):
        dm(tmp_path, source="fer2013", root=str(fer2013_csv), ferplus=str(tmp_path / "short.csv")).setup()
    swapped = lines[:2] + [lines[2].replace("Training", "PrivateTest")] + lines[3:]
    (tmp_path / "swapped.csv").write_text("\n".join(swapped) + "\n")
    with pytest.raises(FERError, match=r"row 1: Usage 'PrivateTest' but fer2013.csv#1 is 'train'"):
        dm(tmp_path, source="fer2013", root=str(fer2013_csv), ferplus=str(tmp_path / "swapped.csv")).setup()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """24 distinct JPEG faces (the 12 London fixtures, and their mirror images)."""
    out = tmp_path_factory.mktemp("photos")
    files = []
    for i, p in enumerate(sorted(FIXTURES.glob("*/*.jpg"))):
        img = Image.open(p).convert("L").resize((64, 64))
        for k, im in enumerate((img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
            f = out / f"{i:02d}_{k}.jpg"
            im.save(f)
            files.append(f)
    return files


def test_manifest_labels_subjects_and_split(photos, tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    names = ["happy", "Neutral", "sad", "surprised"]
    with open(root / "list.csv", "w") as f:
        f.write("path,label,subject,split\n")
        for i, p in enumerate(photos):
            shutil.copy(p, root / "img" / p.name)
            f.write(f"img/{p.name},{names[i % 4]},s{i // 4},{('train', 'train', 'val', 'test')[(i // 4) % 4]}\n")
    d = dm(tmp_path, source="manifest", root=str(root), manifest="list.csv", split="manifest")
    d.setup()
    assert d.class_names == ("happiness", "neutral", "sadness", "surprise") and d.dataset_name == "list"
    assert (len(d.split.train), len(d.split.val), len(d.split.test)) == (16, 4, 4)
    assert d.split_rows()[5] == {"file": "img/02_1.jpg", "subject": "s1", "label": "neutral", "split": "train"}
    kfold = dm(tmp_path, source="manifest", root=str(root), manifest="list.csv", split="subject_kfold", folds=3,
               val_size=4)
    kfold.setup()
    test_subjects = {kfold.decoded.subjects[i] for i in kfold.split.test}
    assert test_subjects.isdisjoint(kfold.decoded.subjects[i] for i in kfold.split.train)


@pytest.mark.parametrize("line, message", [
    ("img/missing.jpg,happy", r"list.csv line 3: image 'img/missing.jpg' does not exist under data.root"),
    ("../outside.jpg,happy", r"list.csv line 3: path '../outside.jpg' is outside data.root"),
    ("img/00_0.jpg,bored", r"list.csv line 3: unknown label 'bored'; give a class name"),
])
def test_manifest_bad_input(photos, tmp_path, line, message):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    shutil.copy(photos[0], root / "img" / "00_0.jpg")
    shutil.copy(photos[1], tmp_path / "outside.jpg")
    (root / "list.csv").write_text(f"path,label\nimg/00_0.jpg,neutral\n{line}\n")
    with pytest.raises(FERError, match=message):
        dm(tmp_path, source="manifest", root=str(root), manifest="list.csv").setup()


def test_rafdb_layout(photos, tmp_path, make_cfg):
    """RAF-DB basic: EmoLabel/list_patition_label.txt ("train_00001.jpg 5") and Image/aligned/*_aligned.jpg."""
    root = tmp_path / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    lines = []
    for i, p in enumerate(photos):
        part, code = ("train", "test")[i % 3 == 0], 4 + i % 2  # 4 happiness, 5 sadness
        name = f"{part}_{i:05d}"
        shutil.copy(p, root / "Image" / "aligned" / f"{name}_aligned.jpg")
        lines.append(f"{name}.jpg {code}")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    cfg = make_cfg("data=rafdb", f"data.root={root}", "data.val_size=2", "data.decode_workers=0")
    from hydra.utils import instantiate

    d = instantiate(cfg.data)
    d.setup()
    assert d.dataset_name == "rafdb" and d.class_names == ("happiness", "sadness")
    assert (len(d.split.train) + len(d.split.val), len(d.split.test)) == (16, 8) and len(d.split.val) == 2
    assert d.file_names()[0] == "Image/aligned/test_00000_aligned.jpg" and d.decoded.labels[0] == "happiness"
    assert d.decoded.labels[1] == "sadness"
    lines[3] = "train_00003.jpg 9"
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(FERError, match=r"list_patition_label.txt line 4: unknown label code '9'"):
        instantiate(cfg.data).setup()


def test_affectnet_layout(photos, tmp_path, make_cfg, caplog):
    """AffectNet: training.csv / validation.csv with subDirectory_filePath and expression 0-10 (8-10 dropped)."""
    root = tmp_path / "AffectNet"
    (root / "Manually_Annotated_file_lists").mkdir(parents=True)
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    for part, chunk in (("training", photos[:16]), ("validation", photos[16:])):
        rows = [header]
        for i, p in enumerate(chunk):
            sub = root / "Manually_Annotated_Images" / f"{i % 3}"
            sub.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, sub / p.name)
            expression = (1, 2, 9)[i % 3] if part == "training" else (1, 2)[i % 2]
            rows.append(f"{i % 3}/{p.name},0,0,64,64,\"1.0;2.0\",{expression},0.1,-0.2")
        (root / "Manually_Annotated_file_lists" / f"{part}.csv").write_text("\n".join(rows) + "\n")
    cfg = make_cfg("data=affectnet", f"data.root={root}", "data.val_size=2", "data.decode_workers=0")
    from hydra.utils import instantiate

    d = instantiate(cfg.data)
    d.setup()
    assert d.dataset_name == "affectnet" and d.class_names == ("happiness", "sadness")
    assert len(d.decoded.labels) == 19 and "dropped 5 images whose label code is mapped to null (9: 5)" in caplog.text
    assert (len(d.split.train), len(d.split.val), len(d.split.test)) == (9, 2, 8)  # validation.csv = test


@pytest.fixture(scope="module")
def skewed_csv(fer2013_csv, tmp_path_factory):
    """The FER2013 fixture with 70% of its rows relabelled happiness (3)."""
    lines = fer2013_csv.read_text().splitlines()
    out = [lines[0]] + [("3" + line[1:]) if i % 10 < 7 else line for i, line in enumerate(lines[1:])]
    path = tmp_path_factory.mktemp("skewed") / "fer2013.csv"
    path.write_text("\n".join(out) + "\n")
    return path


def test_balanced_sampler_draws_classes_equally(skewed_csv, tmp_path):
    torch.manual_seed(0)
    shares = {}
    for sampler in ("random", "balanced"):
        d = dm(tmp_path, source="fer2013", root=str(skewed_csv), split="official", sampler=sampler, batch_size=32)
        labels = torch.cat([b["label"] for b in d.train_dataloader()])
        assert len(labels) == 480
        shares[sampler] = torch.bincount(labels, minlength=7).float() / len(labels)
    happy = d.class_names.index("happiness")
    assert shares["random"][happy] > 0.6 and shares["balanced"][happy] < 0.25
    assert shares["balanced"].min() > 0.07  # every class drawn about 1/7 of the time
    counts = d.model_data().class_counts("train")
    assert counts.sum() == 480 and counts[happy] > 300


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deep", "handcrafted", "hybrid"])
def test_three_models_train_on_fer2013(make_cfg, skewed_csv, tmp_path, model):
    from fer_lightning.engine.training import train

    m = train(make_cfg("data=fer2013", f"data.root={skewed_csv}", f"model={model}", "data.image_size=48",
                       "model.class_weights=balanced", "data.sampler=balanced", "trainer.max_epochs=1",
                       "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                       "+trainer.limit_test_batches=1",
                       "model.pca.fit_samples=100" if model != "deep" else "data.decode_workers=0"))
    assert m["dataset"] == "fer2013" and m["split"] == "official" and m["model"] == model
    rows = (tmp_path / "run" / "splits.csv").read_text().splitlines()
    assert rows[1].startswith("fer2013.csv#0,,") and len(rows) == 601
    if model != "deep":
        hp = torch.load(m["best_checkpoint"], weights_only=True)
        assert hp["hyper_parameters"]["fitted_components"] <= 99  # fitted on a sample of 100 training images
