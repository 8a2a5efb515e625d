"""Throughput of the handcrafted descriptor (HOG + uniform-LBP histograms): scikit-image vs torch.

    uv run python bench/features.py [--batch 256] [--size 224] [--repeats 3] [--inputs mixed|synthetic|photos]

All backends get the same uint8 batch (by default the synthetic JAFFE-format faces plus the London face photos
from ../shared/data/london-faces-256 when it is there; --inputs synthetic|photos for one kind alone), at the
paper's settings (HOG 9 x 8x8 x 2x2 L2-Hys, LBP P=8 R=1 uniform, 7x7 histogram grid). scikit-image runs one
image at a time in one process (its normal use); torch runs the whole batch on the CPU (all the threads torch
may use) and, when present, on CUDA. Each block is timed alone (HOG, LBP), and torch also computes both at once
(the extractor as the models use it; scikit-image's HOG+LBP time is the sum of its two blocks, which it computes
one after the other). Prints images/s for each, the largest difference to scikit-image, the HOG and LBP ratios,
and the HOG+LBP torch/scikit-image ratio last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fer_lightning.data.decoded import decode_store
from fer_lightning.data.images import read_grey, resize_grey
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.data.synthetic import ensure_synthetic
from fer_lightning.features import HandcraftedFeatures

LONDON = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "london-faces-256"


def inputs(n: int, size: int, kind: str = "mixed") -> tuple[torch.Tensor, str]:
    """``mixed``: the 210 synthetic faces, then London photos up to ``n``; ``synthetic`` or ``photos`` alone."""
    parts, what = [], []
    if kind in ("mixed", "synthetic"):
        with tempfile.TemporaryDirectory() as tmp:
            faces = decode_store(scan_jaffe(ensure_synthetic(tmp)), Preprocessing(size), None).images
        parts.append(faces)
        what.append(f"{len(faces)} synthetic faces")
    if kind in ("mixed", "photos"):
        if not LONDON.is_dir():
            raise SystemExit(f"{LONDON} is not here: use --inputs synthetic")
        photos = sorted(LONDON.glob("*/*.jpg"))[: max(0, n - sum(len(p) for p in parts))]
        if photos:
            arr = [torch.from_numpy(resize_grey(read_grey(p), size).copy()) for p in photos]
            parts.append(torch.stack(arr).unsqueeze(1))
            what.append(f"{len(photos)} London photos")
    x = torch.cat(parts)
    x = x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n].contiguous()
    return x, " + ".join(what)


def timed(extractor: HandcraftedFeatures, x: torch.Tensor, repeats: int, sync=lambda: None) -> tuple[float, dict]:
    """Median seconds of ``extractor(x)`` over ``repeats`` runs after a warm-up on 8 images, and its output."""
    extractor(x[:8])  # warm-up: imports, caches, thread pools
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = extractor(x)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inputs", choices=["mixed", "synthetic", "photos"], default="mixed" if LONDON.is_dir()
                    else "synthetic", help="which images (repeated up to --batch)")
    args = ap.parse_args(argv)

    x, what = inputs(args.batch, args.size, args.inputs)
    hog_cfg, lbp_cfg = {"scales": [args.size]}, {"scales": [args.size], "grid": [7, 7]}
    cfg = {"hog": hog_cfg, "lbp": lbp_cfg, "batch_size": args.batch}
    print(f"inputs: {args.batch} images {args.size}x{args.size} uint8 ({what}); torch threads: "
          f"{torch.get_num_threads()}; torch {torch.__version__}")
    print(f"descriptor: {HandcraftedFeatures(**cfg).describe()}")
    blocks = {"HOG": {"hog": hog_cfg, "lbp": None}, "LBP": {"hog": None, "lbp": lbp_cfg}}

    def diff(out: dict, ref: dict) -> float:
        return max(float((out[k].cpu() - ref[k]).abs().max()) for k in out)

    sk, ref = {}, {}
    for name, spec in blocks.items():
        sk[name], ref[name] = timed(HandcraftedFeatures(**spec, backend="skimage"), x, max(1, args.repeats - 1))
    sk["HOG+LBP"] = sk["HOG"] + sk["LBP"]
    reference = {**ref["HOG"], **ref["LBP"]}
    rows = [(f"scikit-image (1 process, loop), {name}", t, 0.0) for name, t in sk.items()]

    ratios = {}
    devices = [("CPU", x, lambda: None)]
    if torch.cuda.is_available():
        devices.append((f"CUDA ({torch.cuda.get_device_name()})", x.cuda(), torch.cuda.synchronize))
    for device, images, sync in devices:
        repeats = args.repeats if device == "CPU" else max(args.repeats, 10)
        for name, spec in [*blocks.items(), ("HOG+LBP", {"hog": hog_cfg, "lbp": lbp_cfg})]:
            t, out = timed(HandcraftedFeatures(**spec), images, repeats, sync)
            rows.append((f"torch, {device}, {name}", t, diff(out, reference)))
            ratios[f"{name} torch {device.split()[0]}"] = sk[name] / t

    print(f"{'backend, block':52s} {'images/s':>10s} {'ms/batch':>10s} {'max |diff| vs skimage':>22s}")
    for name, t, err in rows:
        print(f"{name:52s} {args.batch / t:10.0f} {t * 1000:10.1f} {err:22.2e}")
    for name in sorted(ratios, key=lambda k: (k.startswith("HOG+LBP torch CPU"), k)):
        print(f"ratio {name} / scikit-image: {ratios[name]:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
