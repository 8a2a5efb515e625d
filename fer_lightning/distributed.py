"""One job on several processes (Lightning DDP): ranks, the processes of a Hydra job, outputs counted once.

- :class:`HydraDDPStrategy` (``trainer=ddp``, ``trainer=ddp_cpu``) is Lightning's ``DDPStrategy`` whose launcher
  starts the other processes of *this Hydra job*: the same command, config and task overrides, in this job's
  output directory. Lightning's own launcher re-runs ``sys.argv``, which in a multirun starts the whole sweep again
  in every child process and puts their outputs elsewhere. :func:`end_job` waits for those processes at the end of
  the job and puts the environment back, so the next job of a multirun starts its own.
- :func:`gather_outputs`: per-image outputs of every process, each dataset index once. A ``DistributedSampler``
  pads the last batches with repeated images so that every process gets as many; metrics computed from the
  gathered outputs count every image of a split exactly once.
- :func:`agree_on_fitted`: the fitted z-score/PCA statistics are the same on every process (checked, and rank 0's
  adopted where they are not).
- :func:`one_at_a_time`: processes that share a cache build it one after another (the first builds, the others
  read), whoever started them (Lightning, torchrun, SLURM, parallel Hydra jobs).
- :func:`is_global_zero`, :func:`quiet_other_ranks`: only rank 0 writes run files and logs below WARNING.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
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


# ----------------------------------------------------------------------------------------------------- ranks
def process_rank() -> int:
    """This process's global rank: torch.distributed's once initialised; before that, what the launcher put in
    the environment (torchrun: ``RANK``; SLURM: ``SLURM_PROCID``; Lightning's launcher: ``NODE_RANK`` and
    ``LOCAL_RANK``, where a process on another node than the first counts as rank ``NODE_RANK * 1000 +
    LOCAL_RANK``, nonzero). 0 in a single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", "0")) * 1000 + int(env.get("LOCAL_RANK", "0"))


def is_global_zero() -> bool:
    """Whether this process writes the run's files (always, in a single process)."""
    return process_rank() == 0


class _OtherRank(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def quiet_other_ranks() -> None:
    """On a process other than rank 0, keep only warnings and errors (marked with the rank) in the log: rank 0
    reports the run, the others would only repeat it."""
    rank = process_rank()
    if rank == 0:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _OtherRank) for f in handler.filters):
            handler.addFilter(_OtherRank(rank))


def job_gpu(n_gpus: int | str) -> list[int]:
    """``[k mod n_gpus]`` for job ``k`` of a multirun (``[0]`` in a single run): the resolver ``${job_gpu:4}``,
    for ``trainer.devices`` when parallel jobs (``hydra/launcher=joblib``) should each use one GPU."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    num = OmegaConf.select(HydraConfig.get(), "job.num", default=0, throw_on_missing=False) if (
        HydraConfig.initialized()) else 0
    return [int(num or 0) % int(n_gpus)]


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


class _Observer(threading.Thread):
    """Like Lightning's: if a child process dies during the job, end the others and this process (which would
    otherwise wait for it in a collective forever); stopped by :func:`end_job`."""

    def __init__(self, procs: list[subprocess.Popen], period: float = 2.0) -> None:
        super().__init__(daemon=True, name="fer-lightning-ddp-observer")
        self.procs, self.period, self.stopped = procs, period, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return
            failed = [(p.pid, c) for p, c in zip(self.procs, codes, strict=True) if c not in (None, 0)]
            if failed and not self.stopped.is_set():
                log.error("DDP child process %d exited with code %d: ending the job's processes", *failed[0])
                for p in self.procs:
                    p.kill()
                os.kill(os.getpid(), 9)


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
        log.info("DDP: starting %d more process(es): %s", self.num_processes - 1, " ".join(command[1:]))
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
    """Run a job so that the DDP processes it starts end with it (:func:`end_job`)."""
    try:
        yield
    except BaseException:
        end_job(failed=True)
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


# --------------------------------------------------------------------------------------- outputs counted once
def _gather_rows(x: torch.Tensor, strategy: Any) -> list[torch.Tensor]:
    """``x`` of every process (their lengths may differ), in rank order (on the strategy's device: NCCL
    gathers CUDA tensors only)."""
    device, world = strategy.root_device, strategy.world_size
    n = torch.tensor([len(x)], device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: len(x)] = x.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [g[: int(s)].cpu() for g, s in zip(gathered, sizes, strict=True)]


def unique_by_index(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``outputs`` (aligned tensors with an ``index`` of dataset images) with each index once (its first row),
    ordered by index."""
    index = outputs["index"]
    sorted_index, order = torch.sort(index, stable=True)
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    keep = order[first]
    return {k: v[keep] for k, v in outputs.items()}


def gather_outputs(batches: Sequence[dict[str, torch.Tensor]], strategy: Any = None) -> dict[str, torch.Tensor]:
    """Per-batch outputs of this process (dicts of aligned tensors with an ``index`` key) -> those of every
    process, each dataset index once, ordered by index, on the CPU. ``strategy``: a Lightning strategy (its
    ``world_size``, ``all_gather``); None or one process: this process's outputs alone."""
    local = {k: torch.cat([b[k].detach() for b in batches]).cpu() for k in batches[0]}
    if strategy is not None and strategy.world_size > 1:
        local = {k: torch.cat(_gather_rows(v, strategy)) for k, v in local.items()}
    return unique_by_index(local)


# ------------------------------------------------------------------------------------- fitted on every rank
def _fitted_modules(model: nn.Module) -> dict[str, nn.Module]:
    from fer_lightning.layers import _Fitted

    return {name: m for name, m in model.named_modules() if isinstance(m, _Fitted)}


def fitted_digest(model: nn.Module) -> str:
    """A digest of every fitted statistic (z-score, PCA, block scale) in ``model``."""
    h = hashlib.sha256()
    for name, module in _fitted_modules(model).items():
        for key, value in module.state_dict().items():
            h.update(f"{name}.{key}".encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def agree_on_fitted(model: nn.Module, strategy: Any) -> None:
    """After every process fitted ``model``'s z-score/PCA layers on the same training features: check that they
    hold the same statistics (digests compared), and where they do not, give every process rank 0's."""
    if strategy is None or strategy.world_size < 2:
        return
    digest = fitted_digest(model)
    digests: list[Any] = [None] * strategy.world_size
    dist.all_gather_object(digests, digest)
    modules = _fitted_modules(model)
    if len(set(digests)) == 1:
        log.info("z-score/PCA statistics identical on all %d processes (digest %s)", len(digests), digest)
        return
    state = {name: {k: v.cpu() for k, v in m.state_dict().items()} for name, m in modules.items()}
    state = strategy.broadcast(state, src=0)
    before = {name: tuple(b.shape) for name, m in modules.items() for b in m.buffers()}
    for name, m in modules.items():
        m.load_state_dict(state[name])
    if {name: tuple(b.shape) for name, m in modules.items() for b in m.buffers()} != before:
        raise FERError("the processes chose different numbers of PCA components from the same training features; "
                       "give model.pca.n_components as a number of components instead of a variance fraction")
    log.warning("z-score/PCA statistics differed between processes (digests %s); all use rank 0's",
                ", ".join(map(str, digests)))


# ----------------------------------------------------------------------------------- caches built only once
@contextlib.contextmanager
def one_at_a_time(folder: str | Path | None) -> Iterator[None]:
    """Hold ``<folder>/.lock`` (an advisory ``flock``, released when its holder exits, however it exits) while
    building what goes into ``folder``: processes that share a cache take turns, so the first one builds each
    entry and the others find it and read it."""
    if folder is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, each process may build (atomic writes keep the files whole)
        yield
        return
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
