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
from torch.utils.data import DataLoader

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
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with warnings.catch_warnings():
            bench.main(["--sizes", "32", "--rows", "100", "--epochs", "2", "--repeats", "1", "--device", "cpu",
                        "--threads", str(threads)])
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        configure_progress()
        torch.set_num_threads(threads)  # the bench sets its own; the Trainers it builds set deterministic mode
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"cpu\s+32\s+64(\s+\d+\.\d+){4}\s+\d+\.\d\dx\s+\d+\.\d\d-\d+\.\d\d\s+\d+\.\d\dx",
                        lines[2]), lines[2]
    fields = lines[2].split()
    ratio, (low, high) = float(fields[-3].rstrip("x")), (float(v) for v in fields[-2].split("-"))
    assert low <= ratio <= high, lines[2]  # the median pair between the lowest and the highest
    assert re.fullmatch(r"cpu 32 px, training : validation images/s: framework .* = 1:\d+\.\d, plain .* = 1:\d+\.\d",
                        lines[3]), lines[3]
    assert re.fullmatch(r".* ratio: \d+\.\d\dx", lines[-1]), lines[-1]


class _Tiny:
    """A FERClassifier over 8x8 images with one linear layer, and the batches of two epochs (dicts, as the data
    module gives them, some classes absent from some batches)."""

    @staticmethod
    def model():
        from fer_lightning.models.base import FERClassifier

        class Linear(FERClassifier):
            def __init__(self, class_names):
                super().__init__(class_names, optim={"lr": 0.05})
                self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, len(class_names)))

            def forward(self, images):
                return self.net(images)

        return Linear(CLASS_NAMES)

    @staticmethod
    def batches():
        g = torch.Generator().manual_seed(1)
        sizes = (16, 16, 5)  # a short last batch
        return [{"image": torch.rand(n, 1, 8, 8, generator=g), "label": torch.randint(0, 5, (n,), generator=g),
                 "index": torch.arange(n)} for n in sizes]


def test_training_metrics_logged_per_epoch_equal_the_per_step_updates():
    """The training metrics take an epoch's outputs in one update at its end: the logged ``train/*`` values of each
    epoch are those of a metric set updated at every step (with input checks) with the same softmax and labels, bit
    for bit, and nothing carries over from one epoch to the next."""
    import pytorch_lightning as pl

    seen, logged = [], []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[-1].append(tuple(t.clone() for t in pl_module._seen[-1]))

        def on_train_epoch_start(self, trainer, pl_module):
            seen.append([])

    class Logged(pl.Callback):  # after the module's epoch end, which logs the metrics
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch:
                logged.append(dict(trainer.callback_metrics))

        def on_train_end(self, trainer, pl_module):
            logged.append(dict(trainer.callback_metrics))

    with torch.random.fork_rng():  # the global generator as it was, after
        torch.manual_seed(0)
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[Record(), Logged()])
        trainer.fit(_Tiny.model(), train_dataloaders=DataLoader(_Tiny.batches(), batch_size=None))
    assert len(seen) == len(logged) == 2 and all(len(s) == 3 for s in seen)
    for steps, values in zip(seen, logged, strict=True):
        reference = ClassificationMetrics(CLASS_NAMES)  # the old way: one checked update per step
        for probs, label in steps:
            reference.update(probs, label)
        want = reference.compute()
        assert {k for k in values if k.startswith("train/") and k != "train/loss"} == {f"train/{k}" for k in want}
        for k, v in want.items():
            assert torch.equal(values[f"train/{k}"], v), k
