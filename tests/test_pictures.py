"""Pictures: Grad-CAM, the face figures, the TensorBoard pictures callback and the report's picture figures."""

import csv
import json
import logging
import shutil

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from skimage.feature import hog as sk_hog
from skimage.feature import local_binary_pattern
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from fer_lightning.engine.callbacks import TrainingPictures
from fer_lightning.models.deep import DeepFER
from fer_lightning.reporting.explain import GradCAM, cam_layer
from fer_lightning.reporting.faces import Labelled, grad_cam_figure, misclassified_figure
from fer_lightning.reporting.mosaics import hog_figure, image_grid_figure, lbp_figure, mosaic, tile_at

CLASSES = ["anger", "happiness", "neutral"]


# ------------------------------------------------------------------------------------------------ Grad-CAM
class GapNet(nn.Module):
    """conv -> ReLU -> global average pooling -> linear: Grad-CAM of such a net is its class activation map."""

    def __init__(self, channels: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_grad_cam_equals_the_class_activation_map_of_a_gap_net():
    """For GAP -> linear, alpha_k = W[c, k] / (h w), so Grad-CAM = ReLU(sum_k W[c, k] A_k) up to scale (Zhou et al.'s
    CAM); the model's mode, gradients and hooks are left as they were."""
    torch.manual_seed(0)
    net = GapNet().train()
    x = torch.rand(4, 1, 12, 12)
    target = torch.tensor([0, 1, 2, 1])
    cams, probs = GradCAM(net, net.conv)(x, target)
    with torch.no_grad():
        acts = net.conv(x)
        ref = torch.relu(torch.einsum("bk,bkhw->bhw", net.fc.weight[target], acts))
        ref = ref / ref.flatten(1).amax(1).view(-1, 1, 1)
        assert torch.allclose(probs, net.eval()(x).softmax(-1), atol=1e-6)
    assert torch.allclose(cams, ref, atol=1e-5) and cams.shape == (4, 12, 12)
    assert net.train().training and all(p.grad is None for p in net.parameters()) and not net.conv._forward_hooks
    default, _ = GradCAM(net, net.conv)(x)  # the predicted class by default
    assert torch.allclose(default, GradCAM(net, net.conv)(x, probs.argmax(1))[0])


def test_grad_cam_localises_what_a_trained_cnn_looks_at():
    """A small CNN learns whether a 6x6 bright square or a 6x6 cross sits somewhere in noise; Grad-CAM of the
    predicted class peaks on the object in nearly every held-out image."""
    g = torch.Generator().manual_seed(0)

    def images(n):
        x = torch.rand(n, 1, 24, 24, generator=g) * 0.3
        y = torch.randint(0, 2, (n,), generator=g)
        pos = torch.randint(0, 18, (n, 2), generator=g)
        for i in range(n):
            r, c = pos[i].tolist()
            if y[i] == 0:
                x[i, 0, r : r + 6, c : c + 6] += 0.7
            else:
                x[i, 0, r + 2 : r + 4, c : c + 6] += 0.7
                x[i, 0, r : r + 6, c + 2 : c + 4] += 0.7
        return x, y, pos

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait for each other on a busy machine
    try:
        for _ in range(150):
            x, y, _ = images(32)
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    x, y, pos = images(40)
    cams, probs = GradCAM(net, net[3])(x)
    assert (probs.argmax(1) == y).float().mean() > 0.9
    peaks = cams.flatten(1).argmax(1)
    rows, cols = peaks // 24, peaks % 24
    inside = (rows >= pos[:, 0] - 1) & (rows < pos[:, 0] + 7) & (cols >= pos[:, 1] - 1) & (cols < pos[:, 1] + 7)
    assert inside.float().mean() >= 0.9


@pytest.mark.parametrize("trainable", [True, False])
def test_grad_cam_on_the_deep_model_matches_a_split_forward_pass(trainable):
    """On the project's MobileNetV2 model (trainable or frozen backbone), the hook-based maps equal Grad-CAM
    computed by hand from the backbone's last block and the head."""
    torch.manual_seed(0)
    model = DeepFER(CLASSES, backbone={"weights": "none", "trainable": trainable}).eval()
    layer = cam_layer(model)
    assert layer is model.backbone.features[-1]
    x = torch.rand(3, 1, 64, 64)
    cams, probs = GradCAM(model, layer)(x)
    acts = model.backbone.features(model.backbone.to_input(x)).detach().requires_grad_(True)
    logits = model.head(model.backbone.pool(acts).flatten(1))
    (grad,) = torch.autograd.grad(logits.max(1).values.sum(), acts)
    ref = torch.relu((grad.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True)).detach()
    ref = nn.functional.interpolate(ref, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    ref = ref / ref.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(cams, ref, atol=1e-5) and torch.allclose(probs, logits.softmax(-1), atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert cam_layer(nn.Linear(2, 2)) is None  # no CNN (the handcrafted model): no Grad-CAM


# ------------------------------------------------------------------------------------------------ figures
def _faces(n=3, size=48):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8)


def _tiles(ax, n, shape, ncols, band=0):
    """The ``n`` tiles of the mosaic shown in ``ax``."""
    image = ax.images[0].get_array()
    return [np.asarray(image[tile_at(i, shape, ncols, band=band)]) for i in range(n)]


def test_a_mosaic_puts_each_tile_where_tile_at_says_and_nothing_else():
    tiles = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
    m = mosaic(tiles, ncols=2, gap=2, band=1)
    assert m.shape == (3 * (1 + 3 + 2) - 2, 2 * (4 + 2) - 2)
    for i in range(5):
        assert np.array_equal(m[tile_at(i, (3, 4), 2, gap=2, band=1)], tiles[i])
    assert int(np.isnan(m).sum()) == m.size - tiles.size  # the rest is background


def test_image_grid_shows_each_image_with_its_title_above_it():
    images = _faces(5).astype(np.float32) / 255
    fig = image_grid_figure(images, ["a", "b", "c", "d", "e"], "grid", ncols=4)
    (ax,) = fig.axes  # one axes, one image: the mosaic
    band = round(0.18 * 48)
    assert all(np.array_equal(t, im) for t, im in zip(_tiles(ax, 5, (48, 48), 4, band), images, strict=True))
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c", "d", "e"]
    for i, text in enumerate(ax.texts):  # centred over its image, in the band above it
        rows, cols = tile_at(i, (48, 48), 4, band=band)
        x, y = text.get_position()
        assert cols.start < x < cols.stop and rows.start - band <= y < rows.start
    assert fig.get_suptitle() == "grid" and fig.get_figwidth() <= 7.5
    assert np.allclose(_tiles(image_grid_figure(_faces(2), ["a", "b"], "uint8").axes[0], 2, (48, 48), 2,
                              band)[1], _faces(2)[1] / 255, atol=1e-7)


@pytest.mark.parametrize("size, cell, orientations", [(48, 8, 9), (53, 6, 8), (70, 12, 12), (40, 16, 9)])
def test_hog_glyphs_are_scikit_images_hog_picture(size, cell, orientations):
    """The same lines and sums as ``hog(visualize=True)``, at any image size, cell size and number of bins."""
    from fer_lightning.features.hog import hog_glyphs

    faces = np.random.default_rng(size).integers(0, 256, (3, size, size + 5), dtype=np.uint8)
    ours = hog_glyphs(torch.from_numpy(faces).unsqueeze(1), orientations, cell)
    for face, glyphs in zip(faces, ours, strict=True):
        _, reference = sk_hog(face, orientations, (cell, cell), (1, 1), visualize=True)
        assert glyphs.shape == reference.shape and np.array_equal(glyphs != 0, reference != 0)
        assert np.allclose(glyphs, reference, rtol=1e-5, atol=1e-9)


def test_images_larger_than_the_grid_shows_are_shrunk_keeping_their_aspect():
    big = np.full((3, 600, 300), 0.25, np.float32)  # 3 images: each at most about 190 px wide in the figure
    (ax,) = image_grid_figure(big, ["a", "b", "c"], "big", ncols=3).axes
    m = ax.images[0].get_array()
    data = ~np.isnan(np.asarray(m))
    rows, cols = data.any(1).sum(), data.any(0).sum() // 3  # one row of 3 tiles
    assert rows < 600 and rows == 2 * cols and data.sum() == 3 * rows * cols
    assert np.allclose(np.asarray(m)[data], 0.25)  # shrunk, not changed


def test_hog_and_lbp_figures_show_the_descriptors():
    faces = _faces(2)
    cfg = {"orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2, "block_norm": "L2-Hys"}
    (ax,) = hog_figure(faces, cfg).axes
    shown = _tiles(ax, 4, (48, 48), 2)  # row 1: the faces, row 2: their HOG glyphs
    for i, face in enumerate(faces):
        assert np.allclose(shown[i], face / 255, atol=1e-7)
        _, glyphs = sk_hog(face, 9, (8, 8), (2, 2), "L2-Hys", visualize=True)
        expected = np.clip(glyphs / np.percentile(glyphs, 99.5), 0, 1)  # scaled to each face's 99.5th percentile
        assert np.allclose(shown[2 + i], expected, atol=1e-5)
    fig = lbp_figure(faces, {"P": 8, "R": 1.0, "grid": [4, 4]})
    face_ax, code_ax, hist_ax = fig.axes[:3]  # then the two colour bars
    assert len(fig.axes) == 5
    for i, face in enumerate(faces):
        assert np.allclose(_tiles(face_ax, 2, (48, 48), 2)[i], face / 255, atol=1e-7)
        assert np.array_equal(_tiles(code_ax, 2, (48, 48), 2)[i], local_binary_pattern(face, 8, 1, "uniform"))
        hists = _tiles(hist_ax, 2, (16, 48), 2)[i]  # 16 cells x 10 codes, each code's column widened to 48
        assert np.allclose(hists[:, ::5].sum(1), 1.0) and len(np.unique(hists[0, :5])) == 1
    (cells,) = code_ax.collections  # the 4x4 cell grid of each face: 3 + 3 lines
    assert len(cells.get_segments()) == 12


def test_misclassified_and_grad_cam_figures_are_labelled():
    faces = _faces(3)
    items = [Labelled(faces[0], "anger", "neutral", [0.2, 0.1, 0.7]),
             Labelled(faces[1], "happiness", "anger", [0.5, 0.3, 0.2])]
    fig = misclassified_figure(items, CLASSES, "mistakes", ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["true: anger\npred: neutral (0.70)", "true: happiness\npred: anger (0.50)"]
    bars = [ax for ax in fig.axes if ax.patches]
    assert [round(p.get_height(), 2) for p in bars[0].patches] == [0.2, 0.1, 0.7]
    assert [t.get_text() for t in bars[0].get_xticklabels()] == ["ang", "hap", "neu"]
    colours = [p.get_facecolor()[:3] for p in bars[0].patches]
    assert colours[0] == pytest.approx((0.173, 0.627, 0.173), abs=1e-2)  # true class: green
    assert colours[2] == pytest.approx((0.839, 0.153, 0.157), abs=1e-2)  # predicted: red

    cams = np.linspace(0, 1, 48 * 48).reshape(48, 48)
    fig = grad_cam_figure({"anger": [(items[0], cams)], "happiness": [(items[1], cams), (items[1], cams)]},
                          CLASSES, "cams")
    heads = sorted(t.get_text() for ax in fig.axes for t in ax.texts)
    assert heads == ["anger", "happiness"]
    tiles = [ax for ax in fig.axes if len(ax.images) == 2]  # face + heatmap
    assert len(tiles) == 3 and tiles[0].get_title() == "pred: neutral 0.70"


# ---------------------------------------------------------------------------------- the training callback
class RngProbe(pl.Callback):
    def __init__(self):
        self.states = []

    def on_train_start(self, trainer, pl_module):
        self.states.append(torch.get_rng_state())


def test_callback_logs_what_the_model_sees_without_moving_the_random_streams(tmp_path, synthetic_dir, cache_dir):
    from fer_lightning.data import JAFFEDataModule
    from fer_lightning.models.handcrafted import HandcraftedFER

    features = {"hog": {"scales": [64]}, "lbp": {"scales": [64], "grid": [4, 4]}}
    dm = JAFFEDataModule(image_size=64, cache_dir=str(cache_dir), features=features, feature_device="cpu")
    model = HandcraftedFER(dm.class_names, features=features)
    before, after, pictures = RngProbe(), RngProbe(), TrainingPictures(n_images=6, n_faces=2)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="", version="")
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=logger,
                         callbacks=[before, pictures, after], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    seen = {}
    real = pictures.draw
    pictures.draw = lambda parts: seen.setdefault("figs", real(parts))  # on the drawing thread
    trainer.fit(model, datamodule=dm)
    assert torch.equal(before.states[0], after.states[0])
    figs = seen["figs"]
    assert set(figs) == {"pictures/augmented_batch", "pictures/hog", "pictures/lbp"}
    (grid,) = figs["pictures/augmented_batch"].axes
    assert len(grid.texts) == 6 and all(t.get_text() in dm.class_names for t in grid.texts)
    pixels = np.stack(_tiles(grid, 6, (64, 64), 6, band=round(0.18 * 64)))
    assert 0 <= pixels.min() and pixels.max() <= 1 and not np.isnan(pixels).any()
    stored = dm.decoded.images[:, 0].float().numpy() / 255
    assert not any(np.allclose(p, s, atol=1e-3) for p in pixels for s in stored)  # augmented, not stored ones
    assert figs["pictures/hog"].axes[0].images[0].get_array().shape == (2 * 64 + 4, 2 * 64 + 4)  # 2 faces, 2 rows
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert {"pictures/augmented_batch", "pictures/hog", "pictures/lbp"} <= set(events.Tags()["images"])


# ------------------------------------------------------------------------- a real tiny pipeline and report
@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, cache_dir):
    """The three models, 1 epoch at 64 px, through the default configs (callbacks=default, TensorBoard)."""
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir
    from fer_lightning.engine.pipeline import run_pipeline

    from .conftest import TINY

    out = tmp_path_factory.mktemp("pictures") / "job"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "experiment=paper", "trainer.max_epochs=1",
                                          "pipeline.models.deep.backbone.weights=none",
                                          f"data.cache_dir={cache_dir}", f"paths.output_dir={out}"])
    run_pipeline(cfg)
    return out


def _image_tags(run_dir):
    tags = set()
    for f in run_dir.joinpath("tensorboard").rglob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f), size_guidance={"images": 0})
        ea.Reload()
        tags |= set(ea.Tags()["images"])
    return {t for t in tags if t.startswith("pictures/")}


@pytest.mark.slow
def test_default_training_logs_the_pictures(pipeline_run, synthetic_dir):
    assert _image_tags(pipeline_run / "deep") == {"pictures/augmented_batch"}
    for model in ("hybrid", "handcrafted"):
        assert _image_tags(pipeline_run / model) == {"pictures/augmented_batch", "pictures/hog", "pictures/lbp"}
    info = json.loads((pipeline_run / "deep" / "run_info.json").read_text())
    assert info["image_root"] == str(synthetic_dir.resolve())  # where predictions.csv's files lie


@pytest.mark.slow
def test_report_pictures_from_run_folders(pipeline_run, tmp_path, caplog):
    from fer_lightning.reporting.document import report
    from fer_lightning.reporting.run_pictures import grad_cam_of_run
    from fer_lightning.runs.survey import find_runs

    out = report([pipeline_run], tmp_path / "report")
    made = {p.stem for p in out.glob("*.png")}
    assert {"misclassified_deep", "misclassified_hybrid", "misclassified_handcrafted", "grad_cam_deep",
            "grad_cam_hybrid"} <= made and "grad_cam_handcrafted" not in made
    md = (out / "report.md").read_text()
    assert "![grad_cam_hybrid](grad_cam_hybrid.png)" in md
    # Grad-CAM runs the run's own checkpoint on the images as training prepared them: it reproduces the
    # probabilities of predictions.csv
    runs, _ = find_runs([pipeline_run])
    for run in (r for r in runs if r.model in ("deep", "hybrid")):
        cam = grad_cam_of_run(run, per_class=1)
        assert len(cam["rows"]) == 7 and cam["cams"].shape == (7, 64, 64)
        assert 0 <= cam["cams"].min() and cam["cams"].max() <= 1
        expected = np.array([[float(r[f"p_{c}"]) for c in cam["class_names"]] for r in cam["rows"]])
        assert np.allclose(cam["probs"], expected, atol=1e-4), run.model

    # the images and the checkpoints gone: the same report without those figures, one line per model
    moved = tmp_path / "moved"
    shutil.copytree(pipeline_run, moved)
    for model in ("deep", "hybrid", "handcrafted"):
        shutil.rmtree(moved / model / "checkpoints")
        info_file = moved / model / "run_info.json"
        info = json.loads(info_file.read_text())
        info["image_root"] = str(tmp_path / "gone")
        info_file.write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="fer_lightning.report"):
        out = report([moved], tmp_path / "report2")
    made = {p.stem for p in out.glob("*.png")}
    assert not any(n.startswith(("misclassified", "grad_cam")) for n in made) and "roc_curves" in made
    skips = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(skips) == 3 and all("is not there" in s for s in skips)
    assert "misclassified_deep, grad_cam_deep" in skips[0]
    assert list(csv.DictReader(open(out / "table2.csv")))
