"""The report's tables: Table 2 (test metrics per model, mean +/- SD with CIs), Table 3 (per-class recall), paired
McNemar tests on the same test images, and the honest "best on val" selection."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import numpy as np

from fer_lightning.reporting.statistics import mcnemar, mean_ci
from fer_lightning.runs.survey import Run

METRICS = [("acc", "Accuracy"), ("precision_macro", "Precision"), ("recall_macro", "Recall"),
           ("f1_macro", "F1"), ("auroc", "AUROC")]


ORDER = ("deep", "handcrafted", "hybrid")


def _models(runs: list[Run]) -> list[str]:
    present = {r.model for r in runs}
    return [m for m in ORDER if m in present] + sorted(present - set(ORDER) - {BEST_ON_VAL}) + (
        [BEST_ON_VAL] if BEST_ON_VAL in present else [])


def table2(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for model in _models(runs):
        mine = [r for r in runs if r.model == model]
        row: dict[str, Any] = {"model": model, "n_runs": len(mine)}
        for key, _ in METRICS:
            mean, sd, lo, hi = mean_ci([100 * r.metrics[f"test/{key}"] for r in mine])
            lo, hi = max(lo, 0.0), min(hi, 100.0)  # percentages: the interval is clipped to 0..100
            row.update({f"{key}_mean": round(mean, 2), f"{key}_sd": round(sd, 2), f"{key}_ci_low": round(lo, 2),
                        f"{key}_ci_high": round(hi, 2)})
        rows.append(row)
    return rows


def table3(runs: list[Run], classes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for model in _models(runs):
        mine = [r for r in runs if r.model == model]
        row: dict[str, Any] = {"model": model}
        for c in classes:
            values = [100 * r.metrics[f"test/acc_{c}"] for r in mine if f"test/acc_{c}" in r.metrics]
            row[c] = round(statistics.fmean(values), 2) if values else None
        present = [row[c] for c in classes if row[c] is not None]  # a class with no test image: n/a, not 0
        row["average"] = round(statistics.fmean(present), 2) if present else None
        rows.append(row)
    return rows


def _correct_by_image(runs: list[Run], model: str) -> dict[tuple, bool]:
    return {(r.key, p["file"]): p["true"] == p["predicted"] for r in runs if r.model == model for p in r.predictions}


BEST_ON_VAL = "best on val"


def select_on_validation(runs: list[Run]) -> tuple[list[Run], dict[str, int]]:
    """Per test set (runs sharing :attr:`Run.key`), the variant with the highest validation accuracy (ties: the
    lower validation NLL, then the table order), as runs of the variant ``best on val`` carrying that run's test
    results; and how often each variant was chosen. Test results never enter the choice."""
    order = {m: i for i, m in enumerate(_models(runs))}
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    chosen, counts = [], {}
    for group in groups.values():
        if len({r.model for r in group}) < 2 or any("val/acc" not in r.metrics for r in group):
            continue  # nothing to choose from, or runs without validation results
        best = min(group, key=lambda r: (-r.metrics["val/acc"], r.metrics.get("val/nll", float("inf")),
                                         order[r.model]))
        counts[best.model] = counts.get(best.model, 0) + 1
        chosen.append(Run(best.path, {**best.metrics, "variant": BEST_ON_VAL, "selected": best.model},
                          best.predictions, best.match))
    return chosen, counts


def _selection_row(chosen: Run, runs: list[Run]) -> dict[str, Any]:
    m = chosen.metrics
    deep = [r for r in runs if r.key == chosen.key and r.model == "deep"]
    return {"dataset": m.get("dataset"), "split": m.get("split"), "fold": m.get("fold"), "seed": m.get("seed"),
            "selected": m["selected"], "val_acc": round(100 * m.get("val/acc", float("nan")), 2),
            "val_nll": round(m.get("val/nll", float("nan")), 4), "test_acc": round(100 * m["test/acc"], 2),
            "test_acc_deep": round(100 * deep[0].metrics["test/acc"], 2) if deep else None}


def fusion_weights(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per late-fusion or ensemble run: its weighting and the weights (and temperatures) it fitted, as
    ``member weight`` pairs (from ``metrics.json``)."""

    def pairs(values: dict[str, float] | None) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in (values or {}).items())

    return [{"model": r.model, "dataset": r.metrics.get("dataset"), "split": r.metrics.get("split"),
             "fold": r.metrics.get("fold"), "seed": r.metrics.get("seed"),
             "weighting": r.metrics.get("fusion_weighting"), "fitted_on": r.metrics.get("fusion_fitted_on"),
             "weights": pairs(r.metrics["fusion_weights"]),
             "temperatures": pairs(r.metrics.get("fusion_temperatures"))}
            for r in runs if r.metrics.get("fusion_weights")]


def paired_tests(runs: list[Run], reference: str | None = None) -> list[dict[str, Any]]:
    """McNemar's test for each pair of models (or, with ``reference``, each model against it)."""
    rows = []
    models = _models(runs)
    pairs = ([(reference, m) for m in models if m != reference] if reference in models
             else itertools.combinations(models, 2))
    for a, b in pairs:
        ca, cb = _correct_by_image(runs, a), _correct_by_image(runs, b)
        shared = sorted(set(ca) & set(cb), key=str)
        if not shared:
            continue
        ya, yb = np.array([ca[k] for k in shared]), np.array([cb[k] for k in shared])
        only_a, only_b, p = mcnemar(ya, yb)
        rows.append({"model_a": a, "model_b": b, "n_images": len(shared), "acc_a": round(100 * ya.mean(), 2),
                     "acc_b": round(100 * yb.mean(), 2), "a_right_b_wrong": only_a, "a_wrong_b_right": only_b,
                     "mcnemar_p": p})
    return rows


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def _pct(value: float | None) -> str:
    """A percentage cell: ``n/a`` where there is nothing to report (a class with no image)."""
    return "n/a" if value is None else f"{value:.2f}"


def _fmt(row: dict[str, Any], key: str) -> str:
    mean, sd, lo, hi = (row[f"{key}_{part}"] for part in ("mean", "sd", "ci_low", "ci_high"))
    return f"{mean:.2f} ± {sd:.2f} [{lo:.2f}, {hi:.2f}]"

