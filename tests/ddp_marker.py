"""A callback for tests/test_ddp_lost_rank.py (``+callbacks.marker._target_=tests.ddp_marker.StallRank``): with
``FER_TEST_STALL_DIR`` set, the process of rank 1 writes its pid to ``<dir>/rank1.pid`` at its first training step
of epoch 1 and then waits there (as a process that hangs or is about to die), so that the test kills it mid-epoch
while rank 0 waits for it in DDP's gradient all-reduce. Without the variable it does nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl


class StallRank(pl.Callback):
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        where = os.environ.get("FER_TEST_STALL_DIR")
        if not where or trainer.global_rank != 1 or trainer.current_epoch < 1:
            return
        marker = Path(where) / "rank1.pid"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(600)
