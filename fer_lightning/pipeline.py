"""The paper's whole pipeline in one job: fine-tune the deep model, fuse its backbone (hybrid), train the
handcrafted model, and write a Table-2-style summary.

Selected by a config with a ``pipeline`` node (``experiment=paper``). Every stage trains on the job's own split
(``data.seed`` / ``data.fold``), so in a Hydra multirun over seeds or leave-one-subject-out folds each job
fine-tunes the backbone of its own split, and no backbone sees its job's test images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from fer_lightning.distributed import is_global_zero
from fer_lightning.errors import FERError
from fer_lightning.results import write_csv, write_json
from fer_lightning.storage import atomic_write_text
from fer_lightning.training import train

log = logging.getLogger(__name__)

# The paper's Table 2 (percent), for comparison in the summary.
PAPER_TABLE_2 = {
    "deep": {"acc": 94.37, "precision_macro": 94.63, "recall_macro": 95.12, "f1_macro": 95.17},
    "handcrafted": {"acc": 95.17},
    "hybrid": {"acc": 96.51, "precision_macro": 95.69, "recall_macro": 96.72, "f1_macro": 96.95},
}
LABELS = {"deep": "MobileNetV2 (deep)", "handcrafted": "LBP + HOG (handcrafted)", "hybrid": "Proposed (hybrid)"}
COLUMNS = [("acc", "Accuracy"), ("precision_macro", "Precision"), ("recall_macro", "Recall"), ("f1_macro", "F1-Score"),
           ("auroc", "AUROC")]


def _stage_config(cfg: DictConfig, stage: str, out: Path) -> DictConfig:
    stage_cfg = cfg.copy()
    with open_dict(stage_cfg):
        stage_cfg.model = cfg.pipeline.models[stage]
        stage_cfg.paths.output_dir = str(out / stage)
        stage_cfg.pipeline = None
    return stage_cfg


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for stage, m in results.items():
        row = {"model": stage, "label": LABELS.get(stage, stage), "n_test": m["n_test"]}
        row.update({key: round(100 * m[f"test/{key}"], 2) for key, _ in COLUMNS})
        row.update({f"paper_{k}": v for k, v in PAPER_TABLE_2.get(stage, {}).items()})
        rows.append(row)
    return rows


def summary_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = "| Model | " + " | ".join(title + " (%)" for _, title in COLUMNS) + " | n test | Paper acc. (%) |"
    lines = [
        f"# Table 2: test performance ({meta['dataset']}, {meta['split']} split"
        + (f", fold {meta['fold']}" if meta["fold"] is not None else "") + f", seed {meta['seed']})",
        "",
        head,
        "|" + " --- |" * (len(COLUMNS) + 3),
    ]
    for r in rows:
        paper = r.get("paper_acc")
        cells = " | ".join(f"{r[k]:.2f}" for k, _ in COLUMNS)
        lines.append(f"| {r['label']} | {cells} | {r['n_test']} | {'' if paper is None else f'{paper:.2f}'} |")
    lines += [
        "",
        "Macro-averaged precision, recall and F1; AUROC is macro one-vs-rest. The paper's column is its Table 2 "
        "(one random 133/23/57 JAFFE split);",
        f"one test image here is {100 / max(rows[0]['n_test'], 1):.2f} points.",
    ]
    return "\n".join(lines) + "\n"


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Train the stages of ``cfg.pipeline.models`` in order, each in ``<output_dir>/<stage>``; returns
    ``{"<stage>/<metric>": value}`` and writes ``summary.md``, ``summary.csv`` and ``summary.json``."""
    out = Path(cfg.paths.output_dir)
    if (out / "summary.json").exists():
        raise FERError(f"{out} already holds a finished pipeline; give hydra.run.dir a new folder")
    stages = list(cfg.pipeline.models)
    if "hybrid" in stages and cfg.pipeline.get("hybrid_from_deep", True):
        if "deep" not in stages or stages.index("deep") > stages.index("hybrid"):
            raise FERError("pipeline: hybrid_from_deep needs the deep stage to run before the hybrid stage")
    results: dict[str, dict[str, Any]] = {}
    for stage in stages:
        stage_cfg = _stage_config(cfg, stage, out)
        if stage == "hybrid" and cfg.pipeline.get("hybrid_from_deep", True):
            ckpt = results["deep"]["best_checkpoint"] or str(out / "deep" / "checkpoints" / "last.ckpt")
            with open_dict(stage_cfg):
                stage_cfg.model.backbone.checkpoint = ckpt
            log.info("pipeline: hybrid uses the fine-tuned backbone of %s", ckpt)
        log.info("pipeline: stage %s (%d of %d)", stage, stages.index(stage) + 1, len(stages))
        results[stage] = train(stage_cfg)

    any_run = next(iter(results.values()))
    meta = {k: any_run[k] for k in ("dataset", "split", "fold", "seed")}
    rows = summary_rows(results)
    if is_global_zero():
        fields = ["model", "label", *[k for k, _ in COLUMNS], "n_test"]
        write_csv(out / "summary.csv", [{k: r[k] for k in fields} for r in rows], fields)
        write_json(out / "summary.json", {"meta": meta, "rows": rows, "config": OmegaConf.to_container(cfg.pipeline)})
        atomic_write_text(out / "summary.md", summary_markdown(rows, meta))
        log.info("pipeline summary:\n%s", (out / "summary.md").read_text())
    return {f"{stage}/{k}": v for stage, m in results.items() for k, v in m.items()}
