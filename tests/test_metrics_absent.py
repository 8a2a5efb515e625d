"""A class with no image is absent from the per-class metrics (never 0), and macro averages and AUROC are over the
classes that have images; with every class present the numbers are torchmetrics' own."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from fer_lightning.models.components.metrics import ClassificationMetrics
from fer_lightning.reporting.document import report

CLASSES = ["anger", "contempt", "happiness", "sadness"]


def _data(n: int = 60, absent: tuple[int, ...] = (1, 3), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    present = [k for k in range(len(CLASSES)) if k not in absent]
    target = torch.tensor([present[i % len(present)] for i in range(n)])
    logits = torch.randn(n, len(CLASSES), generator=g) + 1.5 * torch.nn.functional.one_hot(target, len(CLASSES))
    return logits.softmax(-1), target, present


def test_absent_classes_have_no_per_class_metric_and_macro_is_over_present():
    probs, target, present = _data()
    m = ClassificationMetrics(CLASSES)
    for i in range(0, len(target), 16):
        m.update(probs[i:i + 16], target[i:i + 16])
    out = {k: float(v) for k, v in m.compute().items()}
    assert "acc_contempt" not in out and "acc_sadness" not in out  # no image: no value, not 0
    assert {"acc_anger", "acc_happiness"} <= set(out)
    y, p = target.numpy(), probs.argmax(-1).numpy()
    assert (p == 1).any() or (p == 3).any()  # an absent class is predicted: torchmetrics' macro would count it
    for key, fn in (("precision_macro", precision_score), ("recall_macro", recall_score), ("f1_macro", f1_score)):
        expected = fn(y, p, labels=present, average="macro", zero_division=0)
        assert out[key] == pytest.approx(expected, abs=1e-6), key
    auroc = np.mean([roc_auc_score(y == k, probs[:, k].numpy()) for k in present])
    assert out["auroc"] == pytest.approx(auroc, abs=1e-5)
    everything = MulticlassAUROC(len(CLASSES), average="macro")(probs, target)
    assert abs(float(everything) - out["auroc"]) > 1e-3  # what was reported before: absent classes averaged in


def test_every_class_present_gives_torchmetrics_numbers_exactly():
    probs, target, _ = _data(absent=())
    m = ClassificationMetrics(CLASSES)
    m.update(probs, target)
    out = m.compute()
    n = len(CLASSES)
    assert torch.equal(out["auroc"], MulticlassAUROC(n, average="macro")(probs, target))
    assert torch.equal(out["f1_macro"], MulticlassF1Score(n, average="macro")(probs, target))
    assert torch.equal(out["precision_macro"], MulticlassPrecision(n, average="macro")(probs, target))
    assert torch.equal(out["recall_macro"], MulticlassRecall(n, average="macro")(probs, target))
    assert all(f"acc_{c}" in out for c in CLASSES)


def test_report_prints_na_for_a_class_with_no_test_image(tmp_path):
    run = tmp_path / "runs" / "deep"
    run.mkdir(parents=True)
    cm = [[3, 0, 1, 0], [0, 0, 0, 0], [1, 0, 4, 0], [0, 0, 0, 0]]
    rows = ["file,subject,true,predicted," + ",".join(f"p_{c}" for c in CLASSES)]
    for k, row in enumerate(cm):
        for j, count in enumerate(row):
            probs = ["0.1"] * 4
            probs[j] = "0.7"
            rows += [f"{CLASSES[k]}/{j}_{i}.png,s,{CLASSES[k]},{CLASSES[j]}," + ",".join(probs) for i in range(count)]
    (run / "predictions.csv").write_text("\n".join(rows) + "\n")
    metrics = {"test/acc": 7 / 9, "test/precision_macro": 0.775, "test/recall_macro": 0.775, "test/f1_macro": 0.775,
               "test/auroc": 0.8, "test/acc_anger": 0.75, "test/acc_happiness": 0.8, "confusion_matrix": cm,
               "class_names": CLASSES, "n_test": 9, "dataset": "fake", "dataset_fingerprint": "f", "split": "paper",
               "fold": None, "seed": 0, "model": "deep"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = (report([tmp_path / "runs"]) / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| deep | 75.00"))
    assert row == "| deep | 75.00 | n/a | 80.00 | n/a | 77.50 |"  # the average is over the present classes
    assert "n/a: no test image of that class" in text


@pytest.mark.slow
def test_a_run_whose_validation_and_test_lack_a_class(make_cfg, tmp_path):
    """The CK+ case: a class in training only. metrics.json has no val/test metric of it, and the macro averages and
    AUROC of the test are those of the two classes it has (from predictions.csv)."""
    from PIL import Image

    from fer_lightning.engine.training import train

    rng = np.random.default_rng(0)
    lines = ["path,label,subject,split"]
    for label, offset in (("happy", 40), ("neutral", 0), ("sad", -40)):
        for j in range(4):
            for i in range(4):
                name = f"{label}_{j}_{i}.png"
                img = np.clip(rng.normal(110 + offset, 40, (40, 40)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(tmp_path / name)
                split = "train" if label == "sad" or j < 2 else ("val" if j == 2 else "test")
                lines.append(f"{name},{label},s{j},{split}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    m = train(make_cfg("data=manifest", f"data.root={tmp_path}", "data.manifest=list.csv", "data.split=manifest",
                       "data.image_size=32", "trainer.max_epochs=1", "logger=none", "callbacks.training_pictures=null",
                       "model=handcrafted"))
    assert m["class_names"] == ["happiness", "neutral", "sadness"] and m["n_val"] == 8 and m["n_test"] == 8
    assert "val/acc_sadness" not in m and "test/acc_sadness" not in m  # no image: no value, never 0
    assert {"val/acc_happiness", "val/acc_neutral", "test/acc_happiness", "test/acc_neutral"} <= set(m)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test/acc_sadness" not in written and "val/acc_sadness" not in written
    import csv

    with open(tmp_path / "run" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([r["true"] for r in rows])
    scores = {c: np.array([float(r[f"p_{c}"]) for r in rows]) for c in ("happiness", "neutral")}
    auroc = np.mean([roc_auc_score(y == c, scores[c]) for c in ("happiness", "neutral")])
    assert m["test/auroc"] == pytest.approx(auroc, abs=1e-5)
    assert m["test/recall_macro"] == pytest.approx((m["test/acc_happiness"] + m["test/acc_neutral"]) / 2, abs=1e-6)
