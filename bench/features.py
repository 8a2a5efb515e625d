"""Throughput of the handcrafted descriptor (HOG + uniform-LBP histograms): scikit-image vs torch.

    uv run python bench/features.py [--batch 256] [--size 224] [--repeats 3] [--inputs mixed|synthetic|photos]

All backends get the same uint8 batch (by default the synthetic JAFFE-format faces plus the London face photos
from ../shared/data/london-faces-256 when it is there; --inputs synthetic|photos for one kind alone), at the
paper's settings (HOG 9 x 8x8 x 2x2 L2-Hys, LBP P=8 R=1 uniform, 7x7 histogram grid). scikit-image runs one
image at a time in one process (its normal use); torch runs the whole batch on the CPU (all the threads torch
may use) and, when present, on CUDA. Prints images/s for each, the largest difference to scikit-image, and the
torch/scikit-image ratios last.
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


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, dict]:
    out = fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
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
    cfg = {"hog": {"scales": [args.size]}, "lbp": {"scales": [args.size], "grid": [7, 7]}, "batch_size": args.batch}
    print(f"inputs: {args.batch} images {args.size}x{args.size} uint8 ({what}); torch threads: "
          f"{torch.get_num_threads()}; torch {torch.__version__}")
    print(f"descriptor: {HandcraftedFeatures(**cfg).describe()}")

    sk = HandcraftedFeatures(**cfg, backend="skimage")
    t_sk, ref = timed(lambda: sk(x), max(1, args.repeats - 1))
    rows = [("scikit-image (1 process, loop)", t_sk, 0.0)]

    cpu = HandcraftedFeatures(**cfg)
    t_cpu, out = timed(lambda: cpu(x), args.repeats)
    rows.append(("torch, CPU", t_cpu, max(float((out[k] - ref[k]).abs().max()) for k in ref)))

    t_gpu = None
    if torch.cuda.is_available():
        xg = x.cuda()
        t_gpu, out = timed(lambda: cpu(xg), max(args.repeats, 10), torch.cuda.synchronize)
        rows.append((f"torch, CUDA ({torch.cuda.get_device_name()})", t_gpu,
                     max(float((out[k].cpu() - ref[k]).abs().max()) for k in ref)))

    print(f"{'backend':44s} {'images/s':>10s} {'ms/batch':>10s} {'max |diff| vs skimage':>22s}")
    for name, t, diff in rows:
        print(f"{name:44s} {args.batch / t:10.0f} {t * 1000:10.1f} {diff:22.2e}")
    if t_gpu is not None:
        print(f"ratio torch CUDA / scikit-image: {t_sk / t_gpu:.1f}x")
    print(f"ratio torch CPU / scikit-image: {t_sk / t_cpu:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
