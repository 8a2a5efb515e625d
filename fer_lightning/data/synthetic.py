"""A deterministic synthetic face set in the JAFFE file format, for demos and tests.

JAFFE itself cannot be redistributed, so with no ``data.root`` the project draws its own: ``n_subjects`` synthetic
posers x 7 expressions x ``per_expression`` images, 256x256 8-bit grey TIFFs named by the JAFFE grammar
(``ZA.HA2.31.tiff``), written once to a cache folder and then read back through the same code path as real JAFFE.

Each face is drawn procedurally from signed-distance shapes (face outline, hair, eyes with irises, brows, nose,
mouth). The expression sets brow angle and height, eye opening, mouth curvature, opening and width (and a nose
wrinkle for disgust); each subject has its own geometry and shading; each image has a random intensity of the
expression, a small pose change (rotation, shift, scale), a lighting gradient and sensor noise. Fear and surprise,
and anger and disgust, differ only in a few parameters, so a classifier confuses them sometimes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import AffineTransform, warp

from fer_lightning.io.atomic import current_umask

log = logging.getLogger(__name__)

SIZE = 256
GENERATOR_VERSION = 1
# subject codes of the synthetic posers: ZA, ZB, ... (real JAFFE subjects are KA, KL, ...)
SUBJECT_PREFIX = "Z"

# expression -> (brow_angle, brow_raise, eye_open, mouth_curve, mouth_open, mouth_width, nose_wrinkle)
# brow_angle > 0 pulls the inner brow ends down (anger); < 0 lifts them (sadness, fear).
_NEUTRAL = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
EXPRESSION_PARAMS: dict[str, np.ndarray] = {
    "AN": np.array([0.9, -0.5, 0.75, -0.25, 0.0, 0.85, 0.25]),
    "DI": np.array([0.6, -0.35, 0.65, -0.55, 0.15, 0.95, 0.9]),
    "FE": np.array([-0.5, 0.65, 1.35, -0.3, 0.55, 1.1, 0.0]),
    "HA": np.array([0.0, 0.1, 0.75, 1.0, 0.3, 1.25, 0.0]),
    "NE": _NEUTRAL,
    "SA": np.array([-0.8, 0.2, 0.8, -0.7, 0.0, 0.9, 0.0]),
    "SU": np.array([0.0, 1.0, 1.5, 0.0, 1.0, 0.8, 0.0]),
}
_PARAM_NOISE = np.array([0.15, 0.15, 0.1, 0.15, 0.1, 0.07, 0.15])


def _soft(d: np.ndarray) -> np.ndarray:
    """Coverage of a shape from its signed distance (negative inside), antialiased over about one pixel."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry):
    return (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0) * min(rx, ry)


def _segment(x, y, x0, y0, x1, y1, half_width):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)) - half_width


def _paint(img: np.ndarray, alpha: np.ndarray, value) -> None:
    img *= 1.0 - alpha
    img += alpha * value


def _subject(rng: np.random.Generator) -> dict:
    """Geometry and shading of one synthetic poser."""
    return {
        "face_rx": rng.uniform(66, 80),
        "face_ry": rng.uniform(88, 102),
        "face_cy": rng.uniform(132, 142),
        "eye_dx": rng.uniform(27, 35),
        "eye_y": rng.uniform(112, 122),
        "eye_rx": rng.uniform(11, 15),
        "eye_ry": rng.uniform(5.5, 7.5),
        "iris": rng.uniform(3.8, 5.2),
        "brow_gap": rng.uniform(15, 21),
        "brow_len": rng.uniform(13, 18),
        "brow_w": rng.uniform(1.6, 3.0),
        "nose_len": rng.uniform(28, 38),
        "mouth_y": rng.uniform(186, 198),
        "mouth_w": rng.uniform(20, 27),
        "lip": rng.uniform(1.8, 3.0),
        "skin": rng.uniform(0.55, 0.8),
        "hair": rng.uniform(0.05, 0.3),
        "hair_top": rng.uniform(18, 40),
        "fringe": rng.uniform(0, 22),
        "background": rng.uniform(0.3, 0.65),
        "feature_dark": rng.uniform(0.08, 0.22),
    }


def render_face(subject: dict, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one face as a ``(256, 256)`` uint8 array.

    ``params`` = (brow_angle, brow_raise, eye_open, mouth_curve, mouth_open, mouth_width, nose_wrinkle).
    """
    brow_angle, brow_raise, eye_open, mouth_curve, mouth_open, mouth_width, wrinkle = params
    s = subject
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cx = SIZE / 2
    img = np.full((SIZE, SIZE), s["background"])
    dark = s["feature_dark"]

    # hair behind the head, face, fringe over the forehead, ears
    _paint(img, _soft(_ellipse(x, y, cx, s["face_cy"] - 18, s["face_rx"] + 14, s["face_ry"] + 10)), s["hair"])
    _paint(img, _soft(_ellipse(x, y, cx - s["face_rx"], s["eye_y"] + 12, 9, 17)), s["skin"] * 0.92)
    _paint(img, _soft(_ellipse(x, y, cx + s["face_rx"], s["eye_y"] + 12, 9, 17)), s["skin"] * 0.92)
    _paint(img, _soft(_ellipse(x, y, cx, s["face_cy"], s["face_rx"], s["face_ry"])), s["skin"])
    top = s["face_cy"] - s["face_ry"]
    _paint(img, _soft(_ellipse(x, y, cx, top + s["hair_top"] * 0.4, s["face_rx"] * 0.95, s["hair_top"] * 0.6
                               + s["fringe"])), s["hair"])

    # eyes: white, iris, upper lid line
    for side in (-1, 1):
        ex, ey = cx + side * s["eye_dx"], s["eye_y"]
        ry = max(s["eye_ry"] * eye_open, 0.8)
        white = _soft(_ellipse(x, y, ex, ey, s["eye_rx"], ry))
        _paint(img, white, min(s["skin"] + 0.22, 0.97))
        _paint(img, white * _soft(_ellipse(x, y, ex, ey, s["iris"], s["iris"])), dark)
        lid = _soft(np.abs(_ellipse(x, y, ex, ey, s["eye_rx"], ry)) - 0.8) * (y <= ey)
        _paint(img, lid, dark + 0.05)

        # brow: a thick segment; inner end moves with brow_angle, both ends with brow_raise
        by = ey - s["brow_gap"] - 9.0 * brow_raise
        inner_x, outer_x = ex - side * 4.0, ex + side * s["brow_len"]
        inner_y, outer_y = by + 7.0 * brow_angle, by - 2.0 * brow_angle
        _paint(img, _soft(_segment(x, y, inner_x, inner_y, outer_x, outer_y, s["brow_w"])), s["hair"] + 0.05)

    # nose: bridge shading, nostrils, wrinkles (disgust)
    nose_top, nose_tip = s["eye_y"] + 4, s["eye_y"] + s["nose_len"]
    _paint(img, 0.35 * _soft(_segment(x, y, cx + 3, nose_top, cx + 5, nose_tip - 4, 1.2)), s["skin"] * 0.75)
    for side in (-1, 1):
        _paint(img, _soft(_ellipse(x, y, cx + side * 6, nose_tip, 3.2, 2.0)), dark + 0.1)
    if wrinkle > 0.05:
        for k in range(3):
            yy = nose_top + 2 + 4 * k
            _paint(img, min(wrinkle, 1.0) * 0.8 * _soft(_segment(x, y, cx - 7, yy, cx + 7, yy + 1, 0.9)),
                   s["skin"] * 0.6)

    # mouth: a curved band around y_c(u) = my + curve * 9 (1 - u^2); opening shows a dark interior
    half_w = s["mouth_w"] * mouth_width
    u = (x - cx) / half_w
    inside_u = np.clip(1.0 - np.abs(u), 0.0, None)
    y_c = s["mouth_y"] + 9.0 * mouth_curve * (1.0 - np.clip(u, -1, 1) ** 2) - 2.5 * wrinkle
    opening = max(mouth_open, 0.0) * 13.0 * np.sqrt(inside_u)
    horizontal = (np.abs(u) - 1.0) * half_w  # signed distance to the mouth corners' verticals
    across = _soft(np.abs(y - y_c) - (opening + s["lip"])) * _soft(horizontal)
    _paint(img, across, s["skin"] * 0.55)
    if mouth_open > 0.05:
        _paint(img, _soft(np.abs(y - y_c) - opening) * _soft(horizontal + 1.5), dark * 0.6)

    # lighting gradient, pose, blur-free sensor noise
    angle = rng.uniform(0, 2 * np.pi)
    img *= 1.0 + rng.uniform(0.0, 0.18) * ((x - cx) * np.cos(angle) + (y - cx) * np.sin(angle)) / cx
    tf = AffineTransform(translation=(-cx, -cx))
    tf += AffineTransform(rotation=np.deg2rad(rng.uniform(-6, 6)), scale=rng.uniform(0.96, 1.04))
    tf += AffineTransform(translation=(cx + rng.uniform(-5, 5), cx + rng.uniform(-5, 5)))
    img = warp(img, tf.inverse, mode="edge", order=1)
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0.0, rng.uniform(0.012, 0.03), img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _grey_palette_image(arr: np.ndarray) -> Image.Image:
    """A lossless palette ('P') image with a grey palette, as some real JAFFE files are."""
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    return img


def faces(n_subjects: int = 10, per_expression: int = 3, seed: int = 0):
    """``(subject code, expression code, k, image id, (256, 256) uint8)`` for every face of the set, in order."""
    rng = np.random.default_rng(seed)
    subjects = [_subject(rng) for _ in range(n_subjects)]
    image_id = 0
    for si, subject in enumerate(subjects):
        code = f"{SUBJECT_PREFIX}{chr(ord('A') + si % 26)}{'' if si < 26 else si // 26}"
        for expr, target in EXPRESSION_PARAMS.items():
            for k in range(1, per_expression + 1):
                image_id += 1
                intensity = rng.uniform(0.55, 1.1)
                params = _NEUTRAL + intensity * (target - _NEUTRAL) + rng.normal(0, 1, 7) * _PARAM_NOISE
                yield code, expr, k, image_id, render_face(subject, params, rng)


def generate(out_dir: str | Path, n_subjects: int = 10, per_expression: int = 3, seed: int = 0) -> list[Path]:
    """Write the synthetic set into ``out_dir`` (which must not exist yet) and return the file paths."""
    out_dir = Path(out_dir)
    paths = []
    out_dir.mkdir(parents=True)
    for code, expr, k, image_id, arr in faces(n_subjects, per_expression, seed):
        path = out_dir / f"{code}.{expr}{k}.{image_id}.tiff"
        img = _grey_palette_image(arr) if image_id % 7 == 0 else Image.fromarray(arr)
        img.save(path, format="TIFF")
        paths.append(path)
    return paths


# FER2013's emotion codes, from the JAFFE expression codes of the synthetic faces
FER2013_CODE = {"AN": 0, "DI": 1, "FE": 2, "HA": 3, "SA": 4, "SU": 5, "NE": 6}


def write_fer2013(path: str | Path, rows: int, size: int = 48, seed: int = 0,
                  usage: tuple[float, float] = (0.8, 0.1), n_subjects: int = 10) -> Path:
    """A FER2013-format CSV (``emotion,pixels,Usage``) of ``rows`` distinct synthetic ``size`` x ``size`` faces:
    each row is one of ``n_subjects`` x 7 x 3 rendered faces with its own noise, brightness and flip, so it is
    fast for any number of rows. The first ``usage[0]`` of the rows are Training, the next ``usage[1]``
    PublicTest, the rest PrivateTest (FER2013's own order). Deterministic for a seed."""
    base, codes = [], []
    for _, expr, _, _, arr in faces(n_subjects, 3, seed):
        small = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR)
        base.append(np.asarray(small, dtype=np.float32))
        codes.append(FER2013_CODE[expr])
    base_arr, codes_arr = np.stack(base), np.asarray(codes)
    rng = np.random.default_rng(seed + 1)
    text = [str(v).encode() for v in range(256)]
    n_train, n_val = int(rows * usage[0]), int(rows * usage[1])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"emotion,pixels,Usage\n")
        for start in range(0, rows, 2048):
            n = min(2048, rows - start)
            pick = rng.integers(0, len(base_arr), n)
            imgs = base_arr[pick] * rng.uniform(0.8, 1.2, (n, 1, 1)) + rng.normal(0, 6.0, (n, size, size))
            flip = rng.random(n) < 0.5
            imgs[flip] = imgs[flip, :, ::-1]
            imgs = np.clip(np.rint(imgs), 0, 255).astype(np.uint8).reshape(n, -1)
            for i in range(n):
                row = start + i
                use = b"Training" if row < n_train else b"PublicTest" if row < n_train + n_val else b"PrivateTest"
                f.write(b"%d,%s,%s\n" % (codes_arr[pick[i]], b" ".join(map(text.__getitem__, imgs[i])), use))
    return path


def ensure_synthetic(cache_dir: str | Path, n_subjects: int = 10, per_expression: int = 3, seed: int = 0) -> Path:
    """The folder of the synthetic set for these settings, generated on first use (atomically)."""
    spec = {"version": GENERATOR_VERSION, "n_subjects": n_subjects, "per_expression": per_expression, "seed": seed}
    name = f"synthetic-jaffe-v{GENERATOR_VERSION}-s{n_subjects}x{per_expression}-seed{seed}"
    final = Path(cache_dir).expanduser() / name
    if (final / "spec.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("generating the synthetic JAFFE-format set in %s", final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=name + ".tmp"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700: a shared cache stays readable by its users
        generate(tmp / "faces", n_subjects, per_expression, seed)
        for p in (tmp / "faces").iterdir():
            p.rename(tmp / p.name)
        (tmp / "faces").rmdir()
        (tmp / "spec.json").write_text(json.dumps(spec))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not (final / "spec.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
