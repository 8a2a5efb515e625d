"""Where the wall time of ``experiment=paper`` goes, on the synthetic set, from empty caches.

    uv run python bench/pipeline.py [--size 224] [--epochs 50] [overrides ...]

Runs the whole pipeline (deep, then hybrid on its backbone, then handcrafted, then the summary) in this process
with a fresh cache and output folder, and times its steps where they happen: generating the synthetic set,
decoding the images, the HOG+LBP features, the backbone's GAP features (hybrid), and each stage's fit (training
and validation, without the feature steps inside it), validation of the best checkpoint, and test. Extra
arguments are Hydra overrides for one process (not trainer=ddp*). Prints a table of seconds and shares, and
last the ratio of the whole wall time to the sum of the timed steps (the rest: composing, writing outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections import defaultdict
from unittest import mock

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir

import fer_lightning.data.datamodule as datamodule
import fer_lightning.data.sources.jaffe as jaffe_source
import fer_lightning.engine.pipeline as pipeline
import fer_lightning.models.hybrid as hybrid
from fer_lightning.engine.configs import config_dir


class Clock:
    """Exclusive times of nested steps: a step's time excludes the steps timed inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []
        self.stage = "?"

    @contextlib.contextmanager
    def step(self, name: str):
        frame = [name, time.perf_counter(), 0.0]
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            total = time.perf_counter() - frame[1]
            self.seconds[name] += total - frame[2]
            if self.stack:
                self.stack[-1][2] += total

    def wrap(self, fn, name):
        def timed(*args, **kwargs):
            with self.step(name() if callable(name) else name):
                return fn(*args, **kwargs)

        return timed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    clock = Clock()
    train = pipeline.train

    def stage_train(cfg):
        clock.stage = str(cfg.model._target_).rsplit(".", 1)[-1].removesuffix("FER").lower()
        return train(cfg)

    patches = [
        mock.patch.object(pipeline, "train", stage_train),
        mock.patch.object(jaffe_source, "ensure_synthetic",
                          clock.wrap(jaffe_source.ensure_synthetic, "generate the synthetic set")),
        mock.patch.object(datamodule, "decode_store", clock.wrap(datamodule.decode_store, "decode images")),
        mock.patch.object(datamodule, "feature_store", clock.wrap(datamodule.feature_store, "HOG+LBP features")),
        mock.patch.object(hybrid, "block_store", clock.wrap(hybrid.block_store, "backbone GAP features")),
    ]
    for method, label in (("fit", "fit"), ("validate", "validate best"), ("test", "test")):
        original = getattr(pl.Trainer, method)
        patches.append(mock.patch.object(pl.Trainer, method,
                                         clock.wrap(original, lambda label=label: f"{clock.stage}: {label}")))
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[
                "experiment=paper", f"data.image_size={args.size}", f"trainer.max_epochs={args.epochs}",
                f"data.cache_dir={tmp}/cache", f"paths.output_dir={tmp}/run", "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false", *args.overrides,
            ])
        for p in patches:
            stack.enter_context(p)
        start = time.perf_counter()
        results = pipeline.run_pipeline(cfg)
        wall = time.perf_counter() - start

    timed = sum(clock.seconds.values())
    print(f"experiment=paper, synthetic set, {args.size} px, max {args.epochs} epochs; " + ", ".join(
        f"{s}: {results[f'{s}/epochs']} epochs, test acc {results[f'{s}/test/acc']:.3f}"
        for s in ("deep", "hybrid", "handcrafted")))
    print(f"{'step':<32} {'seconds':>9} {'share':>7}")
    for name, seconds in clock.seconds.items():
        print(f"{name:<32} {seconds:>9.1f} {100 * seconds / wall:>6.1f}%")
    print(f"{'other (compose, outputs, summary)':<32} {wall - timed:>9.1f} {100 * (wall - timed) / wall:>6.1f}%")
    print(f"{'total':<32} {wall:>9.1f}")
    print(f"pipeline wall time / sum of the timed steps ratio: {wall / timed:.2f}x")


if __name__ == "__main__":
    main()
