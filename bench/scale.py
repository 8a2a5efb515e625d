"""Memory and decode speed at scale: synthetic FER2013-format files of N rows, stored at 224 px.

    uv run python bench/scale.py [--sizes 1000 10000 100000] [--image-size 224] [--steps 3] [--work DIR]
    uv run --with litdata python bench/scale.py --sizes 10000 --litdata     # the store choice, side by side

For each N: generate N synthetic FER2013 rows (deterministic, fast; cached in --work), build the decoded-image
store (``data.decode_workers`` = the CPUs) and print the decode rate, the store's size on disk, and the peak
*anonymous* resident memory (``RssAnon`` of /proc/self/status, sampled every 10 ms; pages of the memory-mapped
store are file pages, which the kernel may reclaim, and do not count) of a fresh process while (a) one full pass
of the training DataLoader reads every training image and (b) ``--steps`` training steps of ``model=deep``
(MobileNetV2, batch 16, random init) run. ``--litdata``: the same images optimised into a LitData dataset and
streamed once, for comparison. The last line is the largest N's ratio store size / peak anonymous memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakAnon:
    """The largest RssAnon seen while the block runs (sampled in a thread)."""

    def __enter__(self) -> PeakAnon:
        self.peak, self._stop = rss_anon_mb(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_anon_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_mb())


def datamodule(csv: Path, cache: Path, image_size: int, workers: int | None = None):
    from fer_lightning.data import FERDataModule

    return FERDataModule.from_options(source="fer2013", root=str(csv), image_size=image_size, cache_dir=str(cache),
                         split="official", batch_size=16, decode_workers=workers, duplicates="warn")


def build(csv: Path, cache: Path, image_size: int) -> dict:
    """Build the store (in this process and its decode workers) and time it; a store left by an earlier run of
    the benchmark is removed first, so the decode is always measured."""
    import shutil

    dm = datamodule(csv, cache, image_size)
    for old in cache.glob(f"fer2013-{image_size}px-*"):  # (earlier sizes' stores too: they are measured already)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    start = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - start
    n = len(dm.decoded.labels)
    return {"n": n, "decode_s": seconds, "images_per_s": n / seconds, "store_gb": dm.decoded.store.nbytes / 2**30}


def measure(csv: Path, cache: Path, image_size: int, steps: int) -> dict:
    """In a fresh process: peak anonymous memory of a full DataLoader pass, then of bounded training steps."""
    import pytorch_lightning as pl
    import torch

    from fer_lightning.models.deep import DeepFER

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dm = datamodule(csv, cache, image_size)
    base = rss_anon_mb()
    dm.setup()
    with PeakAnon() as loader_peak:
        start, seen = time.perf_counter(), 0
        for batch in dm.train_dataloader():
            seen += len(batch["image"])
        loader_s = time.perf_counter() - start
    model = DeepFER(list(dm.class_names), backbone={"weights": "none"})
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with PeakAnon() as train_peak:
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        train_s = time.perf_counter() - start
    return {"base_mb": base, "loader_peak_mb": loader_peak.peak, "loader_images": seen,
            "loader_images_per_s": seen / loader_s, "train_peak_mb": train_peak.peak, "steps": steps,
            "step_s": train_s / steps}


class _LitDecode:
    """LitData's ``fn``: one record -> the same decoded image as the store's (picklable: LitData spawns)."""

    def __init__(self, records: list, size: int) -> None:
        self.records, self.size = records, size

    def __call__(self, i: int) -> dict:
        from fer_lightning.data.images import resize_grey

        return {"image": resize_grey(self.records[i].read(), self.size)[None], "label": i % 7}


def litdata_compare(csv: Path, cache: Path, image_size: int) -> dict:
    """LitData: optimise the same decoded images into chunks (same decode, same worker count), stream them once."""
    import os

    import litdata as ld

    dm = datamodule(csv, cache, image_size)
    records = dm.source.records
    out = cache / f"litdata-{len(records)}-{image_size}"
    workers = len(os.sched_getaffinity(0))
    start = time.perf_counter()
    if not out.is_dir():
        ld.optimize(fn=_LitDecode(records, image_size), inputs=list(range(len(records))), output_dir=str(out),
                    chunk_bytes="64MB", num_workers=workers)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    loader = ld.StreamingDataLoader(ld.StreamingDataset(str(out)), batch_size=16, num_workers=0)
    with PeakAnon() as peak:
        t0, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch["image"])
        stream_s = time.perf_counter() - t0
    return {"n": len(records), "optimize_s": seconds, "images_per_s": len(records) / seconds, "size_gb": size / 2**30,
            "stream_peak_mb": peak.peak, "stream_images_per_s": seen / stream_s}


def child(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fer-lightning-bench-scale"))
    ap.add_argument("--litdata", action="store_true", help="also measure a LitData dataset of the same images")
    ap.add_argument("--generate", type=Path, help="only write a synthetic fer2013.csv of --sizes[0] rows here")
    ap.add_argument("--phase", choices=["build", "measure", "litdata"], help=argparse.SUPPRESS)
    ap.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from fer_lightning.data.synthetic import write_fer2013

    if args.generate:
        start = time.perf_counter()
        write_fer2013(args.generate, args.sizes[0])
        print(f"wrote {args.sizes[0]} rows to {args.generate} in {time.perf_counter() - start:.1f} s")
        return
    cache = args.work / "cache"
    if args.phase:
        fn = {"build": lambda: build(args.csv, cache, args.image_size),
              "measure": lambda: measure(args.csv, cache, args.image_size, args.steps),
              "litdata": lambda: litdata_compare(args.csv, cache, args.image_size)}[args.phase]
        print(json.dumps(fn()))
        return

    print(f"{'N':>7} | {'decode':>10} | {'store':>8} | {'peak anon: loader pass':>22} | "
          f"{'peak anon: deep steps':>21} | {'step':>6}")
    rows = []
    for n in args.sizes:
        csv = args.work / f"fer2013-{n}.csv"
        if not csv.is_file():
            write_fer2013(csv, n)
        common = ["--csv", str(csv), "--work", str(args.work), "--image-size", str(args.image_size)]
        b = child(["--phase", "build", *common])
        m = child(["--phase", "measure", "--steps", str(args.steps), *common])
        rows.append((n, b, m))
        print(f"{n:>7} | {b['images_per_s']:>6.0f} i/s | {b['store_gb']:>5.2f} GiB | {m['loader_peak_mb']:>18.0f} MiB"
              f" | {m['train_peak_mb']:>17.0f} MiB | {m['step_s']:>4.2f} s", flush=True)
        if args.litdata:
            ld = child(["--phase", "litdata", *common])
            loader_rate = m["loader_images_per_s"]
            print(f"{'':>7}   LitData: optimise {ld['images_per_s']:.0f} i/s, {ld['size_gb']:.2f} GiB, peak anon "
                  f"{ld['stream_peak_mb']:.0f} MiB streaming at {ld['stream_images_per_s']:.0f} i/s; memmap store: "
                  f"{b['images_per_s']:.0f} i/s, {b['store_gb']:.2f} GiB, {m['loader_peak_mb']:.0f} MiB at "
                  f"{loader_rate:.0f} i/s", flush=True)
    n, b, m = rows[-1]
    peak = max(m["loader_peak_mb"], m["train_peak_mb"]) / 1024
    print(f"N={n}: store {b['store_gb']:.2f} GiB, peak anonymous memory {peak:.2f} GiB; "
          f"store size / peak anonymous memory ratio: {b['store_gb'] / peak:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
