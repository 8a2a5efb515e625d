"""Which process this is: the global rank (before and after torch.distributed starts), and quiet logs on the others.

Only rank 0 writes a run's files and logs below WARNING; the other processes of a DDP job would only repeat it.
"""

from __future__ import annotations

import logging
import os

import torch.distributed as dist


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
