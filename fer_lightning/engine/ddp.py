"""One job on several processes (Lightning DDP): the processes of a Hydra job.

:class:`HydraDDPStrategy` (``trainer=ddp``, ``trainer=ddp_cpu``) is Lightning's ``DDPStrategy`` whose launcher starts
the other processes of *this Hydra job*: the same command, config and task overrides, in this job's output directory.
Lightning's own launcher re-runs ``sys.argv``, which in a multirun starts the whole sweep again in every child
process and puts their outputs elsewhere. :func:`end_job` waits for those processes at the end of the job and puts the
environment back, so the next job of a multirun starts its own.

The rest of the distributed story lives in the layer it belongs to: ranks and per-image gathering in
:mod:`fer_lightning.runtime`, fitted statistics agreed on every process in
:mod:`fer_lightning.models.components.fitted`, caches built one process at a time in :mod:`fer_lightning.io.lock`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fer_lightning.errors import FERError

log = logging.getLogger(__name__)

# What a launch sets in this process's environment (put back by end_job).
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# Hydra overrides that a child process of a job needs too (the rest concern sweeps, launchers and run dirs).
CHILD_HYDRA_OVERRIDES = ("hydra.job_logging", "hydra/job_logging", "hydra.hydra_logging", "hydra/hydra_logging",
                         "hydra.verbose")


# ------------------------------------------------------------------------------ the processes of a Hydra job
def _override_value(value: str) -> str:
    """A value quoted for Hydra's override grammar where it needs it (paths with spaces, '=', ...)."""
    if re.fullmatch(r"[\w./:+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_command(module: str) -> list[str]:
    """The command line that runs the current Hydra job again in another process: ``python -m <module>``, its
    config name (and extra config dirs), its task overrides, and ``hydra.run.dir`` = this job's output directory
    (without a ``.hydra`` folder of its own)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    command = [sys.executable, "-m", module, "--config-name", hc.job.config_name]
    for source in hc.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            command += ["--config-dir", source.path]
    command += list(hc.overrides.task)
    command += [o for o in hc.overrides.hydra if o.lstrip("+~").startswith(CHILD_HYDRA_OVERRIDES)]
    command += [f"hydra.run.dir={_override_value(str(hc.runtime.output_dir))}", "hydra.output_subdir=null"]
    return command


def lost_line(lost: str) -> str:
    """The one line of a job that lost a process: which, and how to resume (the job's ``last.ckpt``)."""
    from hydra.core.hydra_config import HydraConfig

    from fer_lightning.engine.resume import resume_hint

    if not HydraConfig.initialized():
        return f"{lost}; the job stopped"
    return f"{lost}; the job stopped: {resume_hint(Path(HydraConfig.get().runtime.output_dir))}"


def lost_rank(procs: list[subprocess.Popen], wait: float = 0.0) -> str | None:
    """One line naming the first child process (rank ``i + 1`` of ``procs[i]``) that exited with an error, waiting
    up to ``wait`` seconds for one to do so; None when none did.

    Examples:
        >>> done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        >>> lost_rank([done], wait=30.0)  # doctest: +ELLIPSIS
        'the DDP process of rank 1 (pid ...) died (exit code 3)'
    """
    deadline = time.monotonic() + wait
    while True:
        for rank, p in enumerate(procs, start=1):
            code = p.poll()
            if code not in (None, 0):
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                return f"the DDP process of rank {rank} (pid {p.pid}) died ({how})"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


class _Observer(threading.Thread):
    """Like Lightning's: if a child process dies during the job, end the others; this process ends the job with one
    line naming the lost rank. The main thread usually gets there first (its next collective fails, and
    :func:`job_processes` turns that into the line); if it is still running ``grace`` seconds later (stuck in a
    collective that waits for the dead process), this thread prints the line and ends the process (exit code 1).
    Stopped by :func:`end_job`."""

    def __init__(self, procs: list[subprocess.Popen], period: float = 2.0, grace: float = 20.0) -> None:
        super().__init__(daemon=True, name="fer-lightning-ddp-observer")
        self.procs, self.period, self.grace, self.stopped = procs, period, grace, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            if all(p.poll() == 0 for p in self.procs):
                return
            lost = lost_rank(self.procs)
            if lost and not self.stopped.is_set():
                log.error("%s: ending the job's other processes", lost)
                for p in self.procs:
                    p.kill()
                if self.stopped.wait(self.grace):
                    return
                print(f"fer-lightning: error: {lost_line(lost)}", file=sys.stderr, flush=True)
                os._exit(1)


class _Launch:
    """What one launch changed in this process (undone by :func:`end_job`)."""

    def __init__(self) -> None:
        self.environment = {k: os.environ.get(k) for k in LAUNCH_VARIABLES}
        self.threads = torch.get_num_threads()
        self.procs: list[subprocess.Popen] = []
        self.observer: _Observer | None = None


_LAUNCHES: list[_Launch] = []


class HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, except that the child processes run this Hydra job (:func:`job_command`)."""

    def __init__(self, cluster_environment: Any, num_processes: int, num_nodes: int, module: str) -> None:
        super().__init__(cluster_environment, num_processes, num_nodes)
        self.module = module

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        from lightning_fabric.utilities.distributed import _set_num_threads_if_needed

        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if not HydraConfig.initialized():
            raise FERError(
                "trainer=ddp starts its processes by running the training command again: run it as "
                "`python -m fer_lightning.train ...` (or start the processes yourself with torchrun or srun)"
            )
        self._check_can_spawn_children()
        launch = _Launch()
        _LAUNCHES.append(launch)
        env = self.cluster_environment
        os.environ.update({"MASTER_ADDR": env.main_address, "MASTER_PORT": str(env.main_port),
                           "NODE_RANK": str(env.node_rank()), "LOCAL_RANK": str(env.local_rank()),
                           "WORLD_SIZE": str(self.num_processes * self.num_nodes)})
        command = job_command(self.module)
        where = next((a for a in command if a.startswith("hydra.run.dir=")), "")
        log.info("DDP: starting %d more process(es) of this job (%s)", self.num_processes - 1, where)
        log.debug("DDP: their command: %s", " ".join(command[1:]))  # long: under the 300-character log lines
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            self.procs.append(subprocess.Popen(command, env=child_env, cwd=get_original_cwd()))
        launch.procs = self.procs
        launch.observer = _Observer(self.procs)
        launch.observer.start()


def end_job(failed: bool = False, timeout: float = 300.0) -> None:
    """At the end of a job: wait for the processes it started (end them when the job ``failed``), close the
    process group and put back the environment and thread count, so that the next job of a multirun launches
    its own processes. Does nothing in a job that started none (and a process that did not start them only
    closes its process group)."""
    while _LAUNCHES:
        launch = _LAUNCHES.pop()
        if launch.observer is not None:
            launch.observer.stopped.set()
        for p in launch.procs:
            if failed:
                p.kill()
            try:
                code = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                code = p.wait()
            if code != 0 and not failed:
                log.warning("DDP child process %d exited with code %d", p.pid, code)
        for key, value in launch.environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(launch.threads)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def job_processes() -> Iterator[None]:
    """Run a job so that the DDP processes it starts end with it (:func:`end_job`). A job that fails because one
    of them died (its collectives fail) fails with a :class:`FERError` naming the lost rank."""
    try:
        yield
    except BaseException as e:
        procs = [p for launch in _LAUNCHES for p in launch.procs]
        lost = None
        if procs and isinstance(e, Exception) and not isinstance(e, FERError):  # not Ctrl+C: it ends them itself
            # a dead peer fails this process's collective a moment before its exit is seen
            lost = lost_rank(procs, wait=5.0 if isinstance(e, RuntimeError) else 0.0)
        end_job(failed=True)
        if lost:
            raise FERError(lost_line(lost)) from e
        raise
    end_job()


class HydraDDPStrategy(DDPStrategy):
    """``DDPStrategy`` for Hydra commands: child processes run this job (:class:`HydraJobLauncher`), and DDP
    leaves non-persistent buffers alone (lookup tables such as the hybrid model's per-image GAP features are the
    same on every process and are not model state: broadcasting them at every step would only cost time).

    ``module``: the command the child processes run (``python -m <module>``).
    """

    def __init__(self, *args: Any, module: str = "fer_lightning.train", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module = module

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes,
                                              self.module)

    def _setup_model(self, model: nn.Module) -> DistributedDataParallel:
        ignore = [f"{name}.{buf}" if name else buf for name, m in model.named_modules()
                  for buf in m._non_persistent_buffers_set]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        return super()._setup_model(model)


