"""A refactor changes no number: tiny ``experiment=paper`` and ``experiment=late_fusion`` jobs on the synthetic set give
bit for bit the test and validation metrics, confusion matrices, epochs and ``predictions.csv`` of the 0.1 code (before
the 0.2 redesign), recorded in ``fixtures/golden/tiny_pipelines.json``.

Float results depend on the machine as well as the code (the CPU's vector units pick other kernels in MKL, oneDNN and
OpenBLAS, and the number of torch threads splits the sums differently), so the fixture holds the numbers per
:func:`machine`: on a machine it has no numbers for, the test skips and says so. To add a machine, run the 0.1 code
(``git worktree add ../v01 f7dcb29``, the same locked versions) and this code there with ``python
tests/fixtures/golden/record.py``: it writes the machine's entry only when the two agree on every row that no
deliberate change moved. Recorded on a second machine (Xeon with AVX-512 and AMX, 2 threads) on 2026-12-04, where the
first machine's numbers differed in the last digits of every stage for both codes alike.

When a change is *meant* to change numbers, record the rows again with the change and say so in its commit and in
``record.py``'s ``MOVED``. Recorded again since: ``late_fusion/late_fusion`` only, when ``experiment=late_fusion``'s
fusion weights became ``mean`` instead of ``loglik`` (issue #21, chosen on validation: docs "Fusion weights"); its
members and the ``paper`` rows are the 0.1 numbers still, and the fused predictions here are unchanged (only the NLLs
and the probabilities in ``predictions.csv`` moved).

The deep model's default ``model.channels_last=auto`` (issue #20: channels-last convolutions on the CPU, about 1.5x
faster, other roundings) is a deliberate change too; this code runs the tiny jobs with ``channels_last=false``
(``CURRENT``), the 0.1 arithmetic, so every recorded row still checks every other code path against 0.1.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.pipeline import run_pipeline

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "tiny_pipelines.json"
TINY = ["data.image_size=64", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "logger=none", "callbacks.training_pictures=null",
        "pipeline.models.deep.backbone.weights=none"]
STAGES = {
    "paper": ["pipeline.models.hybrid.backbone.weights=none", "recipe.finetune.max_epochs=2",
              "recipe.head.max_epochs=2"],
    "late_fusion": ["recipes.paper.finetune.max_epochs=2", "recipes.converged.head.max_epochs=3",
                    "recipes.converged.augment.copies=2"],
}

# this code's settings that give the 0.1 arithmetic where a default moved on purpose (not sent to the 0.1 code)
CURRENT = ["pipeline.models.deep.channels_last=false"]


def machine() -> str:
    """What decides the last digits besides the code: the CPU (model and vector extensions), torch's version and
    its number of threads."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = {f for f in value.split() if f.startswith(("avx", "amx", "fma", "f16c"))}
    except OSError:  # not Linux: the model alone
        pass
    return (f"{platform.machine()} {model} [{' '.join(sorted(flags))}] torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def run_tiny_pipelines(out: Path, cache_dir: Path, config_dir=config_dir, run_pipeline=run_pipeline,
                       current=()) -> dict:
    """The rows of both tiny jobs, run into ``out`` (``config_dir`` and ``run_pipeline``: another code's, for
    ``fixtures/golden/record.py``; ``current``: this code's :data:`CURRENT`)."""
    got = {}
    for experiment, overrides in STAGES.items():
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            where = [f"data.cache_dir={cache_dir}", f"paths.output_dir={out / experiment}"]
            cfg = compose("train", overrides=[f"experiment={experiment}", *TINY, *overrides, *current, *where])
        run_pipeline(cfg)
        got.update(results(out, experiment))
    return got


def results(out: Path, experiment: str) -> dict:
    found = {}
    for metrics_file in sorted((out / experiment).glob("*/metrics.json")):
        m = json.loads(metrics_file.read_text())
        keep = {k: v for k, v in m.items() if k.startswith(("test/", "val/"))
                or k in ("confusion_matrix", "epochs", "n_train", "n_val", "n_test")}
        keep["predictions_sha256"] = hashlib.sha256(metrics_file.with_name("predictions.csv").read_bytes()).hexdigest()
        found[f"{experiment}/{metrics_file.parent.name}"] = keep
    return found


@pytest.mark.slow
def test_paper_and_late_fusion_reproduce_the_recorded_numbers(tmp_path, cache_dir):
    recorded = json.loads(GOLDEN.read_text())["machines"]
    here = machine()
    if here not in recorded:
        pytest.skip(f"no golden numbers for this machine ({here}): record them with "
                    "tests/fixtures/golden/record.py (see this test's docstring)")
    golden = recorded[here]
    got = run_tiny_pipelines(tmp_path, cache_dir, current=CURRENT)
    assert sorted(got) == sorted(golden)
    for stage in golden:
        assert got[stage] == golden[stage], stage
