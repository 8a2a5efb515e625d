"""``experiment=cross_dataset``: train on a source dataset, then test the chosen checkpoint on every target dataset.

In one job: the model is trained on ``data`` (the source: its own split, e.g. ``data=fer2013 data.split=official``,
with the checkpoint chosen on its validation split) in ``<job>/source/``, then evaluated
(:func:`~fer_lightning.engine.evaluation.evaluate`) on each dataset of ``cross_dataset.targets`` in
``<job>/on_<target>/``: the classes both share are scored (:mod:`fer_lightning.engine.crossdata`), on every image
of a target (``cross_dataset.test_images=all``) or on its test split (``split``). The job's ``summary.md`` /
``.csv`` / ``.json`` hold its row of the source x target matrix; ``fer-report`` of one or more such jobs (a
multirun over sources) writes the whole matrix with 95% intervals. A re-run in the same folder reuses what
finished.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from fer_lightning.engine.crossdata import TEST_IMAGES
from fer_lightning.engine.evaluation import evaluate
from fer_lightning.engine.pipeline import _train_stage
from fer_lightning.errors import FERError
from fer_lightning.reporting.crossdata import CELL_FIELDS, cross_matrix, matrix_markdown
from fer_lightning.runs.folder import METRICS, SUMMARY_JSON, RunFolder
from fer_lightning.runs.survey import Run
from fer_lightning.runtime.ranks import is_global_zero
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)


def target_config(cfg: DictConfig, name: str, ckpt: str, out: Path) -> DictConfig:
    """The evaluation config of target ``name``: its data node (with the job's cache folder), the job's trainer."""
    node = cfg.cross_dataset.targets[name]
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise FERError(f"cross_dataset.targets.{name}: not a data option; add one with "
                       f"'+data@cross_dataset.targets.{name}=<option>' (e.g. folder, jaffe, manifest)")
    data = OmegaConf.to_container(node, resolve=True)
    data["cache_dir"] = OmegaConf.select(cfg, "data.cache_dir")
    return OmegaConf.create({
        "ckpt_path": ckpt, "use_run_config": False, "allow_changed_data": False,
        "test_images": cfg.cross_dataset.get("test_images", "all"), "data": data,
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True), "paths": {"output_dir": str(out / f"on_{name}")},
    })


def run_cross_dataset(cfg: DictConfig) -> dict[str, Any]:
    """Train on the source, evaluate on every target; returns the source run's metrics and ``<target>/<metric>``
    of each target."""
    out = Path(cfg.paths.output_dir)
    if (out / SUMMARY_JSON).exists():
        raise FERError(f"{out} already holds a finished cross-dataset job; give hydra.run.dir a new folder")
    targets = list(cfg.cross_dataset.get("targets") or {})
    if not targets:
        raise FERError("cross_dataset.targets is empty: add a target with '+data@cross_dataset.targets.<name>="
                       "<option>' and its data settings (cross_dataset.targets.<name>.root=...)")
    choose(cfg.cross_dataset.get("test_images", "all"), TEST_IMAGES, "cross_dataset.test_images")
    strategy = OmegaConf.to_container(cfg.trainer, resolve=True).get("strategy", "auto")
    name = str(strategy.get("_target_", strategy) if isinstance(strategy, dict) else strategy).split(".")[-1]
    if "ddp" in name.lower():  # evaluate runs in one process: refuse before training, not after
        raise FERError(f"experiment=cross_dataset evaluates its targets in one process; trainer.strategy={name} "
                       "starts several: use trainer=default or trainer=gpu")
    source_cfg = cfg.copy()
    with open_dict(source_cfg):
        source_cfg.cross_dataset = None
        source_cfg.paths.output_dir = str(out / "source")
    log.info("cross-dataset: training on the source (%s) in %s", cfg.data.get("source"), source_cfg.paths.output_dir)
    source = _train_stage(source_cfg)
    ckpt = source.get("best_checkpoint") or str(RunFolder(source_cfg.paths.output_dir).last_checkpoint)
    results: dict[str, dict[str, Any]] = {}
    for name in targets:
        tcfg = target_config(cfg, name, ckpt, out)
        done = RunFolder(tcfg.paths.output_dir)
        if (done / METRICS).is_file():
            log.info("cross-dataset: %s already evaluated in %s; reusing it", name, done.path)
            results[name] = done.read_metrics()
            continue
        log.info("cross-dataset: evaluating on target %s", name)
        results[name] = evaluate(tcfg)
    runs = [Run(Path(source_cfg.paths.output_dir), source)] + [Run(out / f"on_{n}", m) for n, m in results.items()]
    cells = cross_matrix(runs)
    if is_global_zero():
        markdown = "\n".join(matrix_markdown(cells)) + "\n"
        RunFolder(out).write_summary(cells, CELL_FIELDS, {"source": source.get("dataset"), "cells": cells,
                                                          "targets": targets}, markdown)
        log.info("cross-dataset summary:\n%s", markdown)
    return {**source, **{f"{n}/{k}": v for n, m in results.items() for k, v in m.items()}}
