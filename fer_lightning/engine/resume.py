"""Exact resume: a run interrupted (Ctrl+C, SIGKILL, a lost machine) and resumed from ``checkpoints/last.ckpt``
ends bit-identical on the CPU to the run that was never interrupted.

Lightning's checkpoint (``last.ckpt``, written at the end of every epoch by ``callbacks.last_checkpoint``) restores
the weights, the optimiser, the loops and the callbacks (best checkpoint, early stopping). What it does not
restore is randomness. The training loader's order depends on ``(seed, epoch)`` only
(:class:`~fer_lightning.runtime.seeding.EpochShuffle`), and :class:`ExactResume` reseeds the global generators that
kornia's augmentation and dropout draw from (torch on every device, numpy, Python) from ``(seed, epoch, rank)``
when an epoch starts, and when a resumed fit starts (Lightning calls no epoch-start hook for the first epoch of a
fit restored from an end-of-epoch checkpoint). So epoch ``e`` draws the same numbers whether the process ran
epochs ``0..e-1`` or restored them. Its own state (the seed) travels in the checkpoint; a resume with another
seed is warned about.

The same callback prints the exact command that resumes the run when it is interrupted with Ctrl+C (Lightning
exits right after its graceful shutdown, before the caller could say anything).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig

from fer_lightning.engine.callbacks import flush_all
from fer_lightning.errors import FERError
from fer_lightning.io.atomic import escape_surrogates
from fer_lightning.runs.folder import SPLITS, RunFolder
from fer_lightning.runtime.seeding import epoch_seed, seed_all

log = logging.getLogger(__name__)


def _parent_argv() -> list[str]:
    """The command line of the process that started this one (Linux ``/proc``; empty elsewhere)."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def typed_command(argv0: str | None = None, parent: list[str] | None = None,
                  env: dict[str, str] | None = None) -> str:
    """The training command as the user typed it: ``fer-train`` (the console script) or ``python -m
    fer_lightning.train``, behind ``uv run`` when uv started it (its parent process is ``uv run``; without
    ``/proc``, uv's ``UV_RUN_RECURSION_DEPTH`` in the environment says so).

    Examples:
        >>> typed_command("/venv/bin/fer-train", ["/usr/bin/uv", "run", "fer-train", "seed=1"], {})
        'uv run fer-train'
        >>> typed_command("/venv/bin/fer-train", ["-bash"], {})
        'fer-train'
        >>> typed_command("/src/fer_lightning/train.py", ["bash"], {})
        'python -m fer_lightning.train'
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    parent = _parent_argv() if parent is None else parent
    env = dict(os.environ) if env is None else env
    name = Path(argv0).name
    program = name if name.startswith("fer-") else "python -m fer_lightning.train"
    if parent:
        via_uv = Path(parent[0]).name in ("uv", "uv.exe") and "run" in parent[1:]
    else:
        via_uv = "UV_RUN_RECURSION_DEPTH" in env
    return f"uv run {program}" if via_uv else program


def resume_command(out: Path) -> str:
    """The command that resumes the run in ``out`` from its ``last.ckpt``, in that folder: the command line's
    overrides (when Hydra started the run) plus ``ckpt_path`` and ``hydra.run.dir``."""
    out = Path(out).resolve()
    ckpt = RunFolder(out).last_checkpoint
    try:
        hydra_cfg = HydraConfig.get()
        overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
        job_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    except Exception:  # train() called from Python, not from the command line (no Hydra run)
        return f"ckpt_path={ckpt}"
    if job_dir != out:  # a stage of a pipeline: the pipeline again in its folder reuses the finished stages and
        # resumes this one from its last.ckpt (fer_lightning.engine.pipeline)
        args = [*overrides, f"hydra.run.dir={job_dir}"]
    else:
        args = [*overrides, f"ckpt_path={ckpt}", f"hydra.run.dir={out}"]
    return typed_command() + " " + " ".join(shlex.quote(a) for a in args)


def resume_hint(out: Path) -> str:
    """One line: how to resume the run in ``out`` (or that there is nothing to resume yet)."""
    if not RunFolder(out).last_checkpoint.is_file():
        return f"training was interrupted before its first checkpoint; start it again (the folder {out} can be reused)"
    return f"training was interrupted; resume it with: {resume_command(out)}"


def check_same_split(ckpt_path: str, split_rows: list[dict[str, str]]) -> None:
    """A resumed checkpoint must go on with the split it was trained on (else it has seen test images)."""
    run = RunFolder.of_checkpoint(ckpt_path)
    before = run.read_splits()
    if not before:
        return
    now = {escape_surrogates(r["file"]): r["split"] for r in split_rows}
    changed = sorted(f for f in before.keys() | now.keys() if before.get(f) != now.get(f))
    if changed:
        raise FERError(
            f"ckpt_path={ckpt_path}: its run used another split ({len(changed)} images change part, e.g. "
            f"{changed[0]}; see {run / SPLITS}); resume with the run's own data and split settings"
        )


def record_resume(run: RunFolder, ckpt_path: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Resuming in the run's own folder: its config.yaml and splits.csv stay; run_info.json records the resume and
    any setting (flat ``before`` -> ``after``) that differs from the run's start."""
    changed = {k: after.get(k) for k in sorted(before.keys() | after.keys())
               if k != "ckpt_path" and before.get(k) != after.get(k)}
    if changed:
        log.warning("resuming with settings that differ from the run's start (the result will not repeat an "
                    "uninterrupted run): %s", ", ".join(f"{k}={v}" for k, v in changed.items()))
    run.record_resume({
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ckpt_path": str(ckpt_path),
        "changed": changed,
    })


class ExactResume(pl.Callback):
    """Reseeds every training epoch from ``(seed, epoch, rank)`` and prints the resume command on Ctrl+C.

    ``out``: the run folder (whose ``checkpoints/last.ckpt`` a resume starts from).
    """

    def __init__(self, seed: int, out: str | Path) -> None:
        self.seed = int(seed)
        self.out = Path(out)

    def _reseed(self, trainer: pl.Trainer) -> None:
        seed_all(epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reseed(trainer)  # a resumed fit: no on_train_epoch_start for the epoch it resumes at

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reseed(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if int(state_dict.get("seed", self.seed)) != self.seed:
            log.warning("resuming with seed=%d from a checkpoint trained with seed=%s: the resumed run will not "
                        "repeat the uninterrupted one", self.seed, state_dict.get("seed"))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        flush_all(trainer)  # the checkpoints held in memory are written first: the hint names last.ckpt
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            print(f"fer-lightning: {resume_hint(self.out)}", file=sys.stderr, flush=True)
