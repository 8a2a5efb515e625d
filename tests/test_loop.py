"""The training step's own costs: what it reads back from the device, and the benchmark that compares it with a plain
loop (``bench/loop.py``)."""

import importlib.util
import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fer_lightning.data.classes import CLASS_NAMES
from fer_lightning.models.components.metrics import ClassificationMetrics
from fer_lightning.runtime.progress import configure as configure_progress

REPO = Path(__file__).resolve().parents[1]
# operators whose result size or value the host needs: on a GPU each one waits for the device
UNIQUE_OPS = {"aten::unique", "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive"}


def ops_run(fn, *args) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*args)
    return [e.name for e in prof.events()]


def test_training_metrics_skip_the_input_checks_and_compute_the_same():
    """The training metrics (updated at every step) skip torchmetrics' input checks, which count the targets'
    distinct values (a read-back from the device, each step); what they compute is the same."""
    torch.manual_seed(0)
    checked, unchecked = ClassificationMetrics(CLASS_NAMES), ClassificationMetrics(CLASS_NAMES, validate_args=False)
    for _ in range(3):
        probs, target = torch.randn(16, len(CLASS_NAMES)).softmax(-1), torch.randint(0, len(CLASS_NAMES), (16,))
        assert any(op in UNIQUE_OPS for op in ops_run(checked.update, probs, target))
        assert not any(op in UNIQUE_OPS for op in ops_run(unchecked.update, probs, target))
    want, got = checked.compute(), unchecked.compute()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert torch.equal(checked.confusion_matrix(), unchecked.confusion_matrix())


def test_the_model_checks_only_what_it_measures_once():
    """Per step: the training metrics without checks; validation and test (updated once per epoch with every
    image) keep them."""
    from fer_lightning.models.deep import DeepFER

    model = DeepFER(CLASS_NAMES, backbone={"weights": "none"})
    assert not model.train_metrics.auroc.validate_args and not model.train_metrics.confmat.validate_args
    assert model.val_metrics.auroc.validate_args and model.test_metrics.confmat.validate_args


@pytest.mark.slow
def test_bench_loop_runs_both_sides_and_prints_its_ratios(capsys):
    """``bench/loop.py`` on a tiny setting: a row per size, the train:eval line and the last ``ratio:`` line."""
    spec = importlib.util.spec_from_file_location("bench_loop", REPO / "bench" / "loop.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the bench quiets the loggers and warnings and sets progress lines for its process: give them back after
    names = ("pytorch_lightning", "lightning.pytorch", "fer_lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        with warnings.catch_warnings():
            bench.main(["--sizes", "32", "--rows", "100", "--epochs", "2", "--repeats", "1", "--device", "cpu"])
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        configure_progress()
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"cpu\s+32\s+64(\s+\d+\.\d+){4}\s+\d+\.\d\dx", lines[2]), lines[2]
    assert re.fullmatch(r"cpu 32 px, training : validation images/s: framework .* = 1:\d+\.\d, plain .* = 1:\d+\.\d",
                        lines[3]), lines[3]
    assert re.fullmatch(r".* ratio: \d+\.\d\dx", lines[-1]), lines[-1]
