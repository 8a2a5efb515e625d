"""The trainings of a pipeline, one after another or side by side in worker processes (``pipeline.workers``).

A pipeline's trainings form a graph: the hybrid stages need the deep stage's backbone, ``hybrid_oof`` needs the
deep model fine-tuned on each inner fold, a late fusion needs its members; the rest (the deep model and its
out-of-fold fine-tunings, every head on handcrafted features) need nothing from each other. On a CPU, one training
uses its cores poorly (MobileNetV2 at 112 px trains about 1.1x faster on 2 threads than on 1, on the 2-core
development machine: ``docs/scaling.md``), and on a GPU one small model leaves most of the device idle; so with
``pipeline.workers=N`` N trainings run at once, each in its own process with ``pipeline.threads`` CPU threads (by
default this process's threads divided among the workers). Each free worker takes the longest training whose
inputs are ready: fine-tunings on all the training images, then those on inner folds, then the heads in the
pipeline's order.

Every training seeds itself and the caches are shared through file locks, so a training's numbers are those of
the sequential job run with the same number of threads (``OMP_NUM_THREADS``; CPU arithmetic rounds differently on
another number of threads). The workers' log lines go to the job's log; a worker that fails or dies stops the job
with one line, the finished trainings stay, and the same command again resumes the others.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fer_lightning.errors import FERError
from fer_lightning.runtime.progress import duration

log = logging.getLogger("fer_lightning.engine.pipeline")

Results = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Unit:
    """One training of a pipeline: a stage, or one inner-fold run of a stage.

    Args:
        key: its name among the units (the stage, or ``<stage>_oof<k>/fold<i>``).
        after: the units whose results its configuration needs.
        config: its configuration, from the results of the units it comes after.
        announce: the log line said when it starts.
        length: how long it trains, roughly, for starting the longest first: the share of the training images
            a CNN is fine-tuned on (1, or (k-1)/k on inner folds), 0 for heads on fixed features.
    """

    key: str
    after: tuple[str, ...]
    config: Callable[[Results], DictConfig]
    announce: str
    length: float = 0.0


def check_workers(workers: Any, threads: Any, trainer: Any) -> tuple[int, int | None]:
    """``pipeline.workers`` and ``pipeline.threads`` as ints, refused in one line when they are not whole
    numbers >= 1 or when the trainings use several devices each (DDP starts its own processes)."""
    values = []
    for name, value, what in (("workers", workers, "trainings side by side"), ("threads", threads, "CPU threads")):
        if value is not None and (isinstance(value, bool) or not str(value).isdigit() or int(value) < 1):
            raise FERError(f"pipeline.{name}={value}: give a whole number >= 1 ({what}; null for the default)")
        values.append(None if value is None else int(value))
    n_workers, n_threads = values
    n_workers = n_workers or 1
    devices = str(OmegaConf.select(trainer, "devices", default=1)) if trainer is not None else "1"
    strategy = str(OmegaConf.select(trainer, "strategy", default="auto")) if trainer is not None else "auto"
    if n_workers > 1 and (devices not in ("1", "[0]") or "ddp" in strategy.lower()):
        raise FERError(f"pipeline.workers={n_workers} runs trainings side by side, each on one device; "
                       f"trainer.devices={devices} (or a DDP trainer) starts processes of its own: set "
                       "pipeline.workers=1 or use a one-device trainer")
    return n_workers, n_threads


def run_units(units: list[Unit], train_one: Callable[[DictConfig], dict[str, Any]], workers: int = 1,
              threads: int | None = None) -> Results:
    """Train ``units`` (in an order where each comes after what it needs) with ``train_one``; returns
    ``{key: its result}``. One worker: in this process, in the given order. More: in ``workers`` spawned
    processes (``train_one`` a module-level function), the longest first, with ``threads`` threads each."""
    results: Results = {}
    if workers <= 1:
        for unit in units:
            cfg = unit.config(results)
            log.info("pipeline: %s", unit.announce)
            results[unit.key] = train_one(cfg)
        return results
    import torch

    threads = threads or max(1, torch.get_num_threads() // workers)
    log.info("pipeline: %d trainings, %d at a time in worker processes, %d CPU thread(s) each", len(units),
             workers, threads)
    with _Workers(workers, threads) as pool:
        waiting = sorted(units, key=lambda u: -u.length)  # stable: the pipeline's order otherwise
        running: dict[str, float] = {}  # key -> when it started
        while waiting or running:
            for unit in [u for u in waiting if all(a in results for a in u.after)]:
                if len(running) >= workers:
                    break
                cfg = unit.config(results)
                log.info("pipeline: %s", unit.announce)
                resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # the values it has here
                OmegaConf.set_struct(resolved, True)
                pool.submit(unit.key, train_one, resolved)
                waiting.remove(unit)
                running[unit.key] = time.monotonic()
            if not running:
                raise RuntimeError(f"pipeline: {', '.join(u.key for u in waiting)} wait for trainings that never run")
            key, result = pool.next_result(set(running))
            log.info("pipeline: %s finished in %s", key, duration(time.monotonic() - running.pop(key)))
            results[key] = result
    return {u.key: results[u.key] for u in units}


class _Workers:
    """``n`` spawned processes that take trainings from a queue; their log records come back to this process's
    handlers."""

    def __init__(self, n: int, threads: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.tasks = ctx.Queue()
        self.done = ctx.Queue()
        self.logs = ctx.Queue()
        root = logging.getLogger()
        self.listener = logging.handlers.QueueListener(self.logs, *root.handlers, respect_handler_level=True)
        setup = {"level": root.level, "threads": threads, "hydra": _hydra_state()}
        self.procs = [ctx.Process(target=_worker, args=(self.tasks, self.done, self.logs, setup),
                                  name=f"fer-pipeline-worker-{i}") for i in range(n)]

    def __enter__(self) -> _Workers:
        self.listener.start()
        for p in self.procs:
            p.start()
        return self

    def submit(self, key: str, fn: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> None:
        self.tasks.put((key, fn, cfg))

    def next_result(self, running: set[str]) -> tuple[str, dict[str, Any]]:
        """The next finished training's key and result; a failure raised here in one line (a FERError) or with
        the worker's traceback; a worker that died, named with its exit code."""
        while True:
            try:
                key, ok, payload = self.done.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode is not None]
                if dead:
                    raise FERError(f"pipeline: a worker process died (exit code {dead[0].exitcode}) while "
                                   f"{', '.join(sorted(running))} trained; the finished trainings are kept: run the "
                                   "same command again to resume the others") from None
                continue
            if ok:
                return key, payload
            kind, message, trace = payload
            if kind == "FERError":
                raise FERError(message)
            raise RuntimeError(f"pipeline: {key} failed in a worker process:\n{trace}")

    def __exit__(self, *exc: Any) -> None:
        """Normally: each worker told to stop. After a failure: the workers still training are interrupted as
        Ctrl-C would (each writes its ``last.ckpt``), given 60 s, then ended."""
        if exc[0] is None:
            for _ in self.procs:
                self.tasks.put(None)
        elif not issubclass(exc[0], KeyboardInterrupt):  # Ctrl-C reached the workers already
            for p in self.procs:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        for p in self.procs:
            p.join(timeout=max(deadline - time.monotonic(), 0.1))
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        self.listener.stop()
        for q in (self.tasks, self.done, self.logs):
            q.close()


def _hydra_state() -> dict[str, Any] | None:
    """What a worker needs of this job's Hydra state (resume hints, multirun): its ``hydra`` node."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return OmegaConf.to_container(HydraConfig.instance().cfg, resolve=False)


def _worker(tasks: Any, done: Any, logs: Any, setup: dict[str, Any]) -> None:
    """A worker process: its log records to the job's process, its threads, the job's Hydra state, then trainings
    until it is told to stop."""
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(setup["level"])
    import torch

    torch.set_num_threads(int(setup["threads"]))
    if setup["hydra"] is not None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = OmegaConf.create(setup["hydra"])
    started = False
    while (task := _next_task(tasks)) is not None:
        key, fn, cfg = task
        try:
            if not started:  # the command's process-wide settings, with progress as log lines
                from fer_lightning.engine.startup import start_command
                from fer_lightning.runtime.progress import configure, every_s

                start_command(cfg)
                configure("lines", every_s())
                started = True
            done.put((key, True, fn(cfg)))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the job, which stops
            done.put((key, False, (type(e).__name__, str(e), traceback.format_exc())))
            if not isinstance(e, Exception):  # interrupted (Ctrl-C, or the job stopping after a failure)
                return


def _next_task(tasks: Any) -> Any:
    """The next task, or None when told to stop or when the job's process is gone (no worker outlives it)."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            return tasks.get(timeout=5.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None
        except KeyboardInterrupt:  # interrupted while waiting for work
            return None
