"""The handcrafted model end to end, as a user runs it: ``fer-train model=handcrafted`` on 213 JAFFE-format images
at 224 px, features included, timed from the command's start to its exit (issue #20: target <= 30 s on 2 cores).

    uv run python bench/handcrafted.py [--recipe paper|converged] [--folder DIR] [--out RUN_DIR] [overrides ...]
    uv run python bench/handcrafted.py --dry-run     # 30 images at 48 px, 2 epochs: what the tests run

The 213 images (JAFFE's count) are the repository's synthetic faces (:func:`fer_lightning.data.synthetic.generate`,
256 px TIFFs named like ``ZA.HA2.31.tiff``): 10 subjects x 7 expressions x 3, plus 3 fourth images, generated once
into ``--folder`` (default: a folder in the system's temp dir) and reused. Each run gets a fresh cache, so the
decoded images and the HOG+LBP features are built by the run, and a temporary run folder (``--out`` keeps it).
The command runs as a child process (``python -m fer_lightning.train``); the bench prints its wall and CPU seconds
(the child's user + system time, all threads) and the stages read from the run's ``train.log``: start-up (Python,
imports, Hydra), decoding, features, the fitted layers with the model and trainer, the pictures logged when
training starts, the epochs, the end of the fit, the test with its outputs, and the exit. Extra arguments are
Hydra overrides. The last line is ``handcrafted 224 px, 213 images: N.N s wall (target 30 s) ratio: N.Nx``
(ratio = wall / 30 s).

Start-up depends on the environment: with ``PYTHONDONTWRITEBYTECODE=1`` and a virtual environment installed
without bytecode, every run compiles every imported module again (about 13 s of CPU); the bench says which.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from fer_lightning.data.synthetic import GENERATOR_VERSION, generate

TARGET_S = 30.0
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^]]*\]\[\w+\] - (.*)$")
BUILT = re.compile(r"built (decoded|features) .* in ([\d.]+) s")
# (stage, the message that ends it, first or last such line); a stage whose message is missing is counted in the
# next one found
MARKS = (
    ("fitted layers, model, trainer", re.compile(r"data on \w+: "), 0),
    ("pictures at train start", re.compile(r"TensorBoard pictures"), 0),
    ("epochs", re.compile(r"epoch \d+/\d+: "), -1),
    ("end of fit", re.compile(r"training stopped"), 0),
    ("test, outputs", re.compile(r".* test acc "), 0),
)


def jaffe_set(folder: Path, n_subjects: int, per_expression: int, n_images: int) -> Path:
    """A JAFFE-format folder of ``n_images`` synthetic faces: ``n_subjects x 7 x per_expression`` drawn once, the
    first ``n_images`` of them kept in the order (image index within its expression, file order). Built once
    (into a temporary folder, then renamed), then reused."""
    name = f"jaffe-v{GENERATOR_VERSION}-{n_subjects}x{per_expression}-{n_images}"
    dest = folder / name
    if dest.is_dir():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        paths = generate(Path(tmp) / "all", n_subjects, per_expression, seed=0)
        if len(paths) < n_images:
            raise SystemExit(f"{n_subjects} x 7 x {per_expression} faces are fewer than {n_images}")
        keep = sorted(paths, key=lambda p: (int(re.sub(r"\D", "", p.name.split(".")[1])), paths.index(p)))[:n_images]
        for p in set(paths) - set(keep):
            p.unlink()
        os.replace(Path(tmp) / "all", dest)
    return dest


def stages(log_text: str, started: float, ended: float) -> list[tuple[str, float]]:
    """``(stage, seconds)`` of a training run from its ``train.log`` lines (their timestamps, local time) and the
    process's start and end (``time.time()``); the stages add up to ``ended - started``."""
    lines = []
    for raw in log_text.splitlines():
        m = LINE.match(raw)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            lines.append((when, m.group(2)))
    built = {m.group(1): (when, float(m.group(2))) for when, msg in lines if (m := BUILT.search(msg))}
    out, last = [], started

    def upto(name: str, when: float) -> None:
        nonlocal last
        out.append((name, max(0.0, when - last)))
        last = max(last, when)

    if "decoded" in built:
        end, took = built["decoded"]
        upto("start-up: Python, imports, config", end - took)
        upto("data: decode images", end)
    if "features" in built:
        end, took = built["features"]
        upto("data: split, settings", end - took)
        upto("features: HOG+LBP", end)
    for name, mark, which in MARKS:
        found = [when for when, msg in lines if mark.match(msg)]
        if found:
            upto(f"{name} ({len(found)})" if which == -1 else name, found[which])
    upto("exit: loggers closed, process ends", ended)
    return out


def has_bytecode(module: str = "torch") -> bool:
    """Whether ``module``'s ``__init__`` has a compiled ``.pyc`` beside it (else every import compiles it)."""
    spec = importlib.util.find_spec(module)
    return bool(spec and spec.origin and Path(importlib.util.cache_from_source(spec.origin)).exists())


def run(args: argparse.Namespace, data: Path, overrides: list[str]) -> tuple[float, float, list[tuple[str, float]]]:
    """One ``fer-train`` run in a child process: (wall s, CPU s, stages)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        command = [sys.executable, "-m", "fer_lightning.train", "model=handcrafted", "data=jaffe",
                   f"data.root={data}", f"data.image_size={args.size}", f"recipe={args.recipe}",
                   f"hydra.run.dir={out}", f"paths.cache_dir={Path(tmp) / 'cache'}", "progress.mode=lines",
                   *overrides]
        print("command:", " ".join(command[1:]), flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started, t0 = time.time(), time.perf_counter()
        res = subprocess.run(command, capture_output=True, text=True)
        wall, ended = time.perf_counter() - t0, time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise SystemExit(f"fer-train failed (exit {res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu, stages((out / "train.log").read_text(), started, ended)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", choices=("paper", "converged"), default="paper")
    p.add_argument("--size", type=int, default=224, help="data.image_size")
    p.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "fer-bench-handcrafted"),
                   help="where the JAFFE-format images are generated once and kept")
    p.add_argument("--out", default=None, help="keep the run folder here (default: a temporary one)")
    p.add_argument("--dry-run", action="store_true", help="30 images at 48 px, 2 epochs (1 copy if converged)")
    args, overrides = p.parse_known_args(argv)
    if args.dry_run:
        args.size = 48
        data = jaffe_set(Path(args.folder), 2, 3, 30)
        tiny = ["data.test_size=7", "data.val_size=7", "trainer.max_epochs=2"]
        overrides = [*tiny, *(["recipe.augment.copies=1"] if args.recipe == "converged" else []), *overrides]
    else:
        data = jaffe_set(Path(args.folder), 10, 4, 213)
    n_images = len(list(data.glob("*.tiff")))
    bytecode = "compiled" if has_bytecode() else "NOT compiled (each run compiles it: uv sync --compile-bytecode)"
    print(f"{n_images} images in {data}; recipe={args.recipe}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; bytecode of torch {bytecode}", flush=True)
    wall, cpu, parts = run(args, data, overrides)
    width = max(len(name) for name, _ in parts)
    for name, seconds in parts:
        print(f"  {name:<{width}}  {seconds:6.1f} s")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (user + system, all threads)")
    print(f"handcrafted {args.size} px, {n_images} images: {wall:.1f} s wall (target {TARGET_S:.0f} s) "
          f"ratio: {wall / TARGET_S:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
