"""The summary of one pipeline job (``experiment=paper``): the paper's Table 2 for the job's stages, beside the
paper's own numbers (``summary.md``, ``summary.csv``, ``summary.json`` in the job's folder)."""

from __future__ import annotations

from typing import Any

# The paper's Table 2 (percent), for comparison in the summary.
PAPER_TABLE_2 = {
    "deep": {"acc": 94.37, "precision_macro": 94.63, "recall_macro": 95.12, "f1_macro": 95.17},
    "handcrafted": {"acc": 95.17},
    "hybrid": {"acc": 96.51, "precision_macro": 95.69, "recall_macro": 96.72, "f1_macro": 96.95},
}


LABELS = {"deep": "MobileNetV2 (deep)", "handcrafted": "LBP + HOG (handcrafted)", "hybrid": "Proposed (hybrid)"}


COLUMNS = [("acc", "Accuracy"), ("precision_macro", "Precision"), ("recall_macro", "Recall"), ("f1_macro", "F1-Score"),
           ("auroc", "AUROC")]


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
