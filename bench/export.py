"""Throughput of exported models: onnxruntime (CPU) vs eager PyTorch, for each model at batch 1 and 32.

    uv run python bench/export.py [--size 224] [--batches 1 32] [--models deep handcrafted hybrid] [--repeats 5]
                                  [--threads N]

Each model is built at its paper settings (random-init MobileNetV2: weights do not change the speed; z-score and
PCA fitted on the synthetic faces), wrapped as the exported graph is (uint8 faces in, probabilities out) and
exported to ONNX exactly as ``fer-export`` does. Both run the same uint8 batches of synthetic faces on the CPU
with ``--threads`` threads each (default: torch's ``torch.get_num_threads()`` for both; on a busy machine
``--threads 1`` avoids measuring thread contention). Eager PyTorch uses
the project's fast feature paths (threaded HOG, LBP with a tie search); the graph replays LBP in float64 at every
pixel. Prints images/s per model and batch, the largest probability difference, and the geometric mean of the
onnxruntime / eager ratios last.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer_lightning.data.classes import CLASS_NAMES
from fer_lightning.data.decoded import decode_store
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.data.synthetic import ensure_synthetic
from fer_lightning.deploy.exported import METADATA_KEY, ExportedModel
from fer_lightning.deploy.exporters import OnnxExporter, Probabilities, trace
from fer_lightning.features.extractor import HOG_DEFAULTS, LBP_DEFAULTS
from fer_lightning.models.deep import DeepFER
from fer_lightning.models.handcrafted import HandcraftedFER
from fer_lightning.models.hybrid import DEEP_BLOCK, HybridFER


def build(name: str, size: int, faces: torch.Tensor) -> torch.nn.Module:
    features = {"hog": {**HOG_DEFAULTS, "scales": [size]}, "lbp": {**LBP_DEFAULTS, "scales": [size]}}
    if name == "deep":
        return DeepFER(CLASS_NAMES, backbone={"weights": "none"}).eval()
    model = (HybridFER(CLASS_NAMES, features, backbone={"weights": "none"}) if name == "hybrid"
             else HandcraftedFER(CLASS_NAMES, features))
    with torch.no_grad():
        blocks = model.extractor(faces)
        if name == "hybrid":
            blocks[DEEP_BLOCK] = model.backbone(faces.float() / 255)
    model.fusion.fit(blocks)
    return model.eval()


def images_per_second(fn, x, repeats: int) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--models", nargs="+", default=["deep", "handcrafted", "hybrid"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        faces = decode_store(scan_jaffe(ensure_synthetic(tmp)), Preprocessing(args.size), None).images
        print(f"{len(faces)} synthetic faces at {args.size} px; torch {torch.__version__}; {args.threads} thread(s) "
              "for torch and for onnxruntime")
        ratios = []
        for name in args.models:
            net = Probabilities(build(name, args.size, faces))
            path = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            OnnxExporter().write(trace(net, faces[:2]), path, {"producer": "fer-lightning", "model": name})
            onnx_model = ExportedModel(path, threads=args.threads)
            print(f"{name}: exported in {time.perf_counter() - start:.1f} s ({path.stat().st_size / 1e6:.1f} MB, "
                  f"metadata key {METADATA_KEY})")
            for b in args.batches:
                x = faces.repeat((b + len(faces) - 1) // len(faces), 1, 1, 1)[:b].contiguous()

                def eager(batch, net=net):
                    with torch.no_grad():
                        return net(batch).numpy()

                diff = float(np.abs(onnx_model(x.numpy()) - eager(x)).max())
                torch_ips = images_per_second(eager, x, args.repeats)
                ort_ips = images_per_second(onnx_model, x.numpy(), args.repeats)
                ratios.append(ort_ips / torch_ips)
                print(f"{name:12s} batch {b:3d}: eager PyTorch {torch_ips:8.1f} images/s, onnxruntime {ort_ips:8.1f} "
                      f"images/s, ratio {ort_ips / torch_ips:.2f}x, max |p_ort - p_torch| {diff:.1e}")
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"onnxruntime / eager PyTorch throughput (geometric mean over models and batches) ratio: {geo:.1f}x")


if __name__ == "__main__":
    main()
