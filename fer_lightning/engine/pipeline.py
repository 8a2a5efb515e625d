"""Several models trained in one job on the same split: the paper's pipeline (fine-tune the deep model, fuse its
backbone in the hybrid model, train the handcrafted model) and the fusion ablation (more fusion variants,
out-of-fold features, late fusion), with a Table-2-style summary. The trainings run in order, or side by side
(``pipeline.workers``, :mod:`~fer_lightning.engine.parallel`).

Selected by a config with a ``pipeline`` node (``experiment=paper``, ``experiment=fusion_ablation``). Every
stage trains on the job's own split (``data.seed`` / ``data.fold``), so in a Hydra multirun over seeds or
leave-one-subject-out folds each job fine-tunes the backbone of its own split, and no backbone sees its job's test
images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from fer_lightning.engine.build import model_needs
from fer_lightning.engine.checks import check_config
from fer_lightning.engine.parallel import Results, Unit, check_workers, run_units
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.models.late_fusion import crossfit_folds
from fer_lightning.reporting.summary import COLUMNS, summary_markdown, summary_rows
from fer_lightning.runs.folder import METRICS, SUMMARY_JSON, RunFolder
from fer_lightning.runs.legacy import renamed_targets
from fer_lightning.runtime.ranks import is_global_zero

log = logging.getLogger(__name__)


def _stage_config(cfg: DictConfig, stage: str, out: Path) -> DictConfig:
    """The job's config for one stage: its model, folder and name; ``model.init_from`` (the job's, e.g.
    ``experiment=paper model.init_from=...``) goes to every stage whose model takes it and does not fuse the deep
    stage's backbone (that stage follows from the deep stage's checkpoint instead)."""
    stage_cfg = cfg.copy()
    init_from = (cfg.get("model") or {}).get("init_from")
    with open_dict(stage_cfg):
        stage_cfg.model = cfg.pipeline.models[stage]
        follows_deep = model_needs(stage_cfg.model).fuses_backbone and cfg.pipeline.get("hybrid_from_deep", True)
        if init_from and "init_from" in stage_cfg.model and not stage_cfg.model.init_from and not follows_deep:
            stage_cfg.model.init_from = init_from
        stage_cfg.paths.output_dir = str(out / stage)
        stage_cfg.variant = stage
        stage_cfg.pipeline = None
    return stage_cfg


def _plan(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """What each stage needs from earlier ones, checked before anything trains: ``{stage: {"backbone_from":
    stage | None, "members": [stages], "crossfit": k}}`` (k: the inner folds its members are trained on again for
    cross-fitted fusion weights, 0 for none)."""
    stages = list(cfg.pipeline.models)
    deep_stage = cfg.pipeline.get("deep_stage", "deep")
    plan: dict[str, dict[str, Any]] = {}
    for i, stage in enumerate(stages):
        node = cfg.pipeline.models[stage]
        traits = model_needs(node)
        needs: dict[str, Any] = {"backbone_from": None, "members": [], "crossfit": 0}
        if traits.fuses_backbone and cfg.pipeline.get("hybrid_from_deep", True):
            if deep_stage not in stages[:i]:
                raise FERError(f"pipeline: stage '{stage}' fuses the backbone of stage '{deep_stage}', which must "
                               f"run before it (stages in order: {', '.join(stages)})")
            needs["backbone_from"] = deep_stage
        if traits.members_from_stages:
            members = list(node.get("members") or [])
            missing = [m for m in members if m not in stages[:i]]
            if len(members) < 2 or missing:
                raise FERError(f"pipeline: stage '{stage}' combines stages {members}; give two or more stages that "
                               f"run before it (missing: {', '.join(missing) or 'none'})")
            needs["members"] = members
            needs["crossfit"] = crossfit_folds(node)
            built = [m for m in members if plan[m]["backbone_from"] or plan[m]["members"]]
            if needs["crossfit"] and built:
                raise FERError(f"pipeline: stage '{stage}' cross-fits its weights, which retrains each member on "
                               f"inner folds; stage(s) {', '.join(built)} build on other stages and cannot be; "
                               "use model.weights=loglik or mean there")
        plan[stage] = needs
    return plan


def _finished(stage_cfg: DictConfig) -> dict[str, Any] | None:
    """The metrics of a stage that already finished in this job's folder with exactly this configuration (a
    re-run of an interrupted pipeline goes on from there); None if it has not run."""
    run = RunFolder(stage_cfg.paths.output_dir)
    if not (run / METRICS).is_file():
        return None
    before = run.read_config()
    now = OmegaConf.create(OmegaConf.to_yaml(stage_cfg, resolve=True))
    if before is None or renamed_targets(before) != now:
        raise FERError(f"{run.path} holds a finished stage with another configuration; give hydra.run.dir a new "
                       "folder")
    log.info("pipeline: %s already finished in %s; reusing its results", stage_cfg.variant, run.path)
    return run.read_metrics()


def _train_stage(stage_cfg: DictConfig) -> dict[str, Any]:
    finished = _finished(stage_cfg)
    if finished is not None:
        return finished
    last = RunFolder(stage_cfg.paths.output_dir).last_checkpoint
    if last.is_file() and not stage_cfg.get("ckpt_path"):  # a stage interrupted in an earlier attempt: go on
        log.info("pipeline: %s was interrupted in %s; resuming it from %s", stage_cfg.variant, last.parent.parent,
                 last)
        with open_dict(stage_cfg):
            stage_cfg.ckpt_path = str(last)
    return train(stage_cfg)


def _best(result: dict[str, Any], stage_dir: Path) -> str:
    return result.get("best_checkpoint") or str(RunFolder(stage_dir).last_checkpoint)


def _oof_unit(cfg: DictConfig, stage: str, folds: int, i: int, out: Path) -> Unit:
    """Stage ``stage`` (same config, recipe and seed) trained without inner fold ``i`` of ``folds`` of the
    training images (``data.inner_folds``), in ``<job>/<stage>_oof<folds>/fold<i>/``: the deep stage's give a
    hybrid out-of-fold features, any member's give a late fusion out-of-fold predictions (cross-fitted weights)."""

    def config(_: Results) -> DictConfig:
        stage_cfg = _stage_config(cfg, stage, out)
        with open_dict(stage_cfg):
            stage_cfg.data.inner_folds = folds
            stage_cfg.data.inner_fold = i
            stage_cfg.variant = f"{stage}_oof"
            stage_cfg.paths.output_dir = str(out / f"{stage}_oof{folds}" / f"fold{i}")
        return stage_cfg

    return Unit(_oof_key(stage, folds, i), (), config, f"{stage} on inner fold {i + 1} of {folds}",
                _fine_tunes(cfg.pipeline.models[stage]) * (folds - 1) / folds)


def _oof_key(stage: str, folds: int, i: int) -> str:
    return f"{stage}_oof{folds}/fold{i}"


def _fine_tunes(model_cfg: DictConfig) -> float:
    """1 for a model that fine-tunes a CNN, else 0 (:attr:`Unit.length`)."""
    return float((model_cfg.get("backbone") or {}).get("trainable", False))


def _units(cfg: DictConfig, plan: dict[str, dict[str, Any]], out: Path) -> list[Unit]:
    """The pipeline's trainings in its order, each after what it needs: every stage, preceded by the inner-fold
    runs it needs and that no earlier stage needed (shared by every stage with the same k)."""
    units: list[Unit] = []
    keys: set[str] = set()

    def inner_folds(source: str, k: int) -> list[str]:
        folds = [_oof_key(source, k, i) for i in range(k)]
        for i, key in enumerate(folds):
            if key not in keys:
                units.append(_oof_unit(cfg, source, k, i, out))
                keys.add(key)
        return folds

    for n, (stage, needs) in enumerate(plan.items(), start=1):
        after: list[str] = []
        backbone_oof: list[str] = []
        crossfit: dict[str, list[str]] = {}
        if source := needs["backbone_from"]:
            after.append(source)
            if k := int(cfg.pipeline.models[stage].get("backbone", {}).get("oof_folds") or 0):
                backbone_oof = inner_folds(source, k)
        after += needs["members"]
        if k := needs["crossfit"]:
            crossfit = {m: inner_folds(m, k) for m in needs["members"]}
        after += backbone_oof + [key for folds in crossfit.values() for key in folds]
        units.append(Unit(stage, tuple(after), _stage_with(cfg, stage, needs, out, backbone_oof, crossfit),
                          f"stage {stage} ({n} of {len(plan)})", _fine_tunes(cfg.pipeline.models[stage])))
        keys.add(stage)
    return units


def _stage_with(cfg: DictConfig, stage: str, needs: dict[str, Any], out: Path, backbone_oof: list[str],
                crossfit: dict[str, list[str]]) -> Callable[[Results], DictConfig]:
    """The config of ``stage`` given the results of what it needs: the fine-tuned backbone it fuses (and the
    out-of-fold ones), the best checkpoints of the stages it combines (and of their inner-fold runs)."""

    def config(results: Results) -> DictConfig:
        def best(key: str) -> str:
            return _best(results[key], out / key)

        stage_cfg = _stage_config(cfg, stage, out)
        with open_dict(stage_cfg):
            if source := needs["backbone_from"]:
                stage_cfg.model.backbone.checkpoint = best(source)
                log.info("pipeline: %s uses the fine-tuned backbone of %s", stage, stage_cfg.model.backbone.checkpoint)
                if backbone_oof:
                    stage_cfg.model.backbone.oof_checkpoints = [best(key) for key in backbone_oof]
            if needs["members"]:
                stage_cfg.model.members = {m: best(m) for m in needs["members"]}
            if crossfit:
                stage_cfg.model.crossfit_members = {m: [best(key) for key in keys] for m, keys in crossfit.items()}
        return stage_cfg

    return config


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Train the stages of ``cfg.pipeline.models``, each in ``<output_dir>/<stage>``; returns
    ``{"<stage>/<metric>": value}`` and writes ``summary.md``, ``summary.csv`` and ``summary.json``.

    A model that fuses a backbone (hybrid) gets the deep stage's fine-tuned one (``pipeline.hybrid_from_deep``)
    and, with ``model.backbone.oof_folds=k``, out-of-fold training features from k more fine-tunings (shared by
    every stage with the same k); a late-fusion stage combines the best checkpoints of the stages it names, and
    with cross-fitted weights (``model.weights=crossfit``) fits them on the out-of-fold predictions of k more runs
    of each member (shared the same way). The trainings run in order, or ``pipeline.workers`` at a time
    (:mod:`~fer_lightning.engine.parallel`).
    Stages already finished in the job's folder with the same configuration are reused.
    """
    out = Path(cfg.paths.output_dir)
    if (out / SUMMARY_JSON).exists():
        raise FERError(f"{out} already holds a finished pipeline; give hydra.run.dir a new folder")
    workers, threads = check_workers(cfg.pipeline.get("workers"), cfg.pipeline.get("threads"), cfg.get("trainer"))
    plan = _plan(cfg)
    for stage in plan:  # every stage's options, before the first stage trains
        check_config(_stage_config(cfg, stage, out))
    try:
        done = run_units(_units(cfg, plan, out), _train_stage, workers, threads)
    except KeyboardInterrupt:
        if workers == 1:  # Lightning has said how to resume the interrupted training
            raise
        raise FERError(f"pipeline: interrupted; the finished trainings are kept and the interrupted ones go on from "
                       f"their last.ckpt: run the same command with hydra.run.dir={out}") from None
    results = {stage: done[stage] for stage in plan}

    any_run = next(iter(results.values()))
    meta = {k: any_run[k] for k in ("dataset", "split", "fold", "seed")}
    rows = summary_rows(results)
    if is_global_zero():
        fields = ["model", "label", *[k for k, _ in COLUMNS], "n_test"]
        markdown = summary_markdown(rows, meta)
        RunFolder(out).write_summary(rows, fields, {"meta": meta, "rows": rows,
                                                    "config": OmegaConf.to_container(cfg.pipeline)}, markdown)
        log.info("pipeline summary:\n%s", markdown)
    return {f"{stage}/{k}": v for stage, m in results.items() for k, v in m.items()}
