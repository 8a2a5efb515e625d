"""The report's pictures of faces, built from run folders alone: misclassified test images and Grad-CAM maps.

A training run's folder holds what they need: ``predictions.csv`` (test files, relative to the image folder),
``run_info.json`` (that folder: ``image_root``, or ``dataset_root`` in runs written before it was recorded),
``config.yaml`` (the face crop and image size the images were prepared with) and ``checkpoints/`` (the tested
one is ``metrics.json``'s ``best_checkpoint``, read with ``weights_only``). Where images or checkpoints are gone,
its figures are skipped with one log line per model and the report goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from fer_lightning.data.preprocessing import Preprocessing, to_unit
from fer_lightning.errors import FERError
from fer_lightning.models import load_model
from fer_lightning.reporting.explain import GradCAM, cam_layer
from fer_lightning.reporting.faces import Labelled, grad_cam_figure, misclassified_figure
from fer_lightning.runs.folder import CONFIG, RUN_INFO, RunFolder
from fer_lightning.runtime.devices import resolve_device

log = logging.getLogger("fer_lightning.report")
# what a missing, moved or damaged run file raises on the way: the picture is skipped, the report goes on
UNAVAILABLE = (FERError, OSError, KeyError, ValueError, RuntimeError)


class RunImages:
    """A run's images by their ``predictions.csv`` name, prepared as in training: grey, the run's face crop,
    resized to the run's image size. Raises :class:`FERError` when the run does not say where they are."""

    def __init__(self, run_dir: Path) -> None:
        run = RunFolder(run_dir)
        if not (run / RUN_INFO).is_file():
            raise FERError(f"{run_dir} has no {RUN_INFO} to say where its images are")
        info = run.read_run_info()
        if info is None:
            raise FERError(f"{run / RUN_INFO} is not readable JSON")
        root = info.get("image_root") or info.get("dataset_root")
        if not root:
            raise FERError(f"{run / RUN_INFO} records no image folder")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FERError(f"the image folder {self.root} is not there")
        config = run.read_config()
        if config is None:
            raise FERError(f"{run_dir} has no {CONFIG} to say how its images were prepared")
        data = config.data
        self.preprocessing = Preprocessing.from_options(int(data.image_size), str(data.get("face_crop", "none")),
                                                        float(data.get("crop_margin", 0.2)), data.get("crop_box"))

    def __call__(self, file: str) -> np.ndarray:
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise FERError(f"{file}: not a path inside the image folder {self.root}")
        return self.preprocessing.read(self.root / file)


def _probs(row: dict[str, str], class_names: Sequence[str]) -> list[float]:
    return [float(row[f"p_{c}"]) for c in class_names]


def misclassified(runs: Sequence[Any], model: str, class_names: Sequence[str], k: int = 12) -> Figure | None:
    """The ``k`` most confidently misclassified test images of ``model``, pooled over its runs, each with its
    true and predicted labels and its probability bar. Raises :class:`FERError` saying why there is none."""
    mine = [r for r in runs if r.model == model]
    wrong = sorted(
        ((float(p[f"p_{p['predicted']}"]), str(r.path), p["file"], r, p)
         for r in mine for p in r.predictions if p["true"] != p["predicted"]),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    if not wrong:
        raise FERError("every test image is classified right")
    readers: dict[Path, RunImages | Exception] = {}
    items, reasons = [], []
    for _, _, file, run, row in wrong:
        if len(items) == k:
            break
        if run.path not in readers:
            try:
                readers[run.path] = RunImages(run.path)
            except UNAVAILABLE as e:
                readers[run.path] = e
        reader = readers[run.path]
        try:
            if isinstance(reader, Exception):
                raise reader
            items.append(Labelled(reader(file), row["true"], row["predicted"], _probs(row, class_names)))
        except UNAVAILABLE as e:
            reasons.append(e)
    if not items:
        raise FERError(f"the test images are unavailable ({reasons[0]})")
    runs_note = f"{len(mine)} runs pooled" if len(mine) > 1 else "1 run"
    which = f"all {len(wrong)}" if len(items) == len(wrong) else f"the {len(items)} most confident of {len(wrong)}"
    return misclassified_figure(items, list(class_names), f"{model}: {which} misclassified test images ({runs_note})")


def tested_checkpoint(run: Any) -> Path:
    """The checkpoint a run was tested with: ``best_checkpoint`` in the run's ``checkpoints/`` (or where
    ``metrics.json`` says it was written)."""
    best = run.metrics.get("best_checkpoint")
    if not best:
        raise FERError(f"{run.path}: no checkpoint was kept (metrics.json has no best_checkpoint)")
    for path in (RunFolder(run.path).checkpoint_dir / Path(best).name, Path(best)):
        if path.is_file():
            return path
    raise FERError(f"{run.path}: its checkpoint {Path(best).name} is not there")


def grad_cam_of_run(run: Any, per_class: int = 3, device: str = "auto") -> dict[str, Any] | None:
    """Grad-CAM of the predicted class for up to ``per_class`` test images per class of one run, with the
    run's own checkpoint; None for a model without a CNN. Returns ``rows`` (the predictions.csv rows used),
    ``images`` ``(N, S, S)`` uint8, ``cams`` ``(N, S, S)`` in ``[0, 1]``, ``probs`` ``(N, C)`` (recomputed) and
    ``class_names``."""
    config = RunFolder(run.path).read_config()
    if config is not None and "backbone" not in config.get("model", {}):
        return None  # the run's model has no CNN (handcrafted)
    model = load_model(str(tested_checkpoint(run)), map_location="cpu")
    layer = cam_layer(model)
    if layer is None:
        return None
    classes = list(model.class_names)
    rows = [p for c in classes for p in [p for p in run.predictions if p["true"] == c][:per_class]]
    if not rows:
        raise FERError(f"{run.path}: predictions.csv lists no test images")
    reader = RunImages(run.path)
    images = np.stack([reader(p["file"]) for p in rows])
    dev = resolve_device(device)
    x = to_unit(torch.from_numpy(images).unsqueeze(1)).to(dev)
    cams, probs = GradCAM(model.to(dev), layer)(x)
    return {"rows": rows, "images": images, "cams": cams.cpu().numpy(), "probs": probs.cpu().numpy(),
            "class_names": classes}


def grad_cam(runs: Sequence[Any], model: str, per_class: int = 3) -> Figure | None:
    """Grad-CAM figure of ``model`` from its first run (in path order) whose checkpoint and images are there;
    None for a model without a CNN. Raises :class:`FERError` when no run has both."""
    reasons = []
    for run in sorted((r for r in runs if r.model == model), key=lambda r: str(r.path)):
        try:
            cam = grad_cam_of_run(run, per_class)
        except UNAVAILABLE as e:
            reasons.append(e)
            continue
        if cam is None:
            return None
        classes = cam["class_names"]
        columns: dict[str, list] = {c: [] for c in classes}
        for row, image, heat, p in zip(cam["rows"], cam["images"], cam["cams"], cam["probs"], strict=True):
            item = Labelled(image, row["true"], classes[int(p.argmax())], p.tolist())
            columns[row["true"]].append((item, heat))
        where = "/".join(run.path.parts[-2:])
        return grad_cam_figure({c: v for c, v in columns.items() if v}, classes,
                               f"{model}: Grad-CAM of the predicted class, last MobileNetV2 block ({where})")
    raise FERError(f"no run with its checkpoint and test images ({reasons[0]})" if reasons else "no runs")


def report_pictures(runs: Sequence[Any], models: Sequence[str], class_names: Sequence[str],
                    k_misclassified: int = 12, per_class: int = 3) -> dict[str, Figure]:
    """``misclassified_<model>`` and (models with a CNN) ``grad_cam_<model>`` figures for the report; a figure
    that cannot be made is left out with one log line per model saying why."""
    out = {}
    builders = (("misclassified", misclassified, {"class_names": class_names, "k": k_misclassified}),
                ("grad_cam", grad_cam, {"per_class": per_class}))
    for model in models:
        skipped: dict[str, str] = {}
        for name, build, options in builders:
            try:
                fig = build(runs, model, **options)
            except FERError as e:
                skipped[f"{name}_{model}"] = str(e)
                continue
            if fig is not None:
                out[f"{name}_{model}"] = fig
        if skipped:
            log.warning("report: figure(s) %s left out: %s", ", ".join(skipped), "; ".join(dict.fromkeys(
                skipped.values())))
    return out
