"""A pipeline one training at a time against ``pipeline.workers=N`` (issue #20: ``experiment=fusion_ablation`` on one
synthetic split at 112 px), one job after the other, each from fresh caches, as a user runs it.

    uv run python bench/workers.py [--experiment fusion_ablation] [--size 112] [--workers 2] [overrides ...]
    uv run python bench/workers.py --dry-run      # a reduced paper pipeline at 48 px, 1 epoch: what the tests run

Each job is ``python -m fer_lightning.train experiment=<experiment> data.seed=0 data.image_size=<size>`` in a child
process with its own cache and run folder (in a temporary folder; ``--keep DIR`` keeps them). The first runs with
this process's threads (the default job); the second with ``pipeline.workers=N`` (each worker this process's
threads divided among them, ``pipeline.threads``). Prints each job's wall and CPU seconds (the children's user +
system time), whether their ``summary.csv`` agree (they agree on one thread; on more, CPU arithmetic rounds
differently in each), and last ``pipeline.workers=N against one at a time ratio: N.Nx`` (the first job's wall time
over the second's). Extra arguments are Hydra overrides for both jobs.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DRY = ["trainer.max_epochs=1", "pipeline.models.deep.backbone.weights=none", "trainer.enable_model_summary=false"]


def job(experiment: str, size: int, folder: Path, overrides: list[str]) -> tuple[float, float, str]:
    """One job in a child process: its wall and CPU seconds and its ``summary.csv``."""
    command = [sys.executable, "-m", "fer_lightning.train", f"experiment={experiment}", "data.seed=0",
               f"data.image_size={size}", f"hydra.run.dir={folder / 'run'}", f"paths.cache_dir={folder / 'cache'}",
               "progress.mode=lines", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"bench/workers.py: the job failed ({' '.join(command[3:])}):\n{res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, (folder / "run" / "summary.csv").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="fusion_ablation")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the jobs' folders here")
    parser.add_argument("--dry-run", action="store_true", help="experiment=paper at 48 px, 1 epoch")
    args, overrides = parser.parse_known_args(argv)
    experiment, size = (("paper", 48) if args.dry_run else (args.experiment, args.size))
    overrides = [*DRY, *overrides] if args.dry_run else overrides
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        print(f"experiment={experiment} data.image_size={size} {' '.join(overrides)}".rstrip())
        one = job(experiment, size, root / "one", overrides)
        print(f"one at a time:         {one[0]:8.1f} s wall, {one[1]:8.1f} s CPU")
        many = job(experiment, size, root / f"workers{args.workers}", [*overrides, f"pipeline.workers={args.workers}"])
        print(f"pipeline.workers={args.workers}:    {many[0]:8.1f} s wall, {many[1]:8.1f} s CPU")
        print(f"summary.csv: {'the same' if one[2] == many[2] else 'different (another number of threads per job)'}")
    print(f"pipeline.workers={args.workers} against one at a time ratio: {one[0] / many[0]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
