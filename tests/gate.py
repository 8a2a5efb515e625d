"""A test-only callback that holds training at the start of an epoch until the test releases it, so that a signal
sent by a test lands mid-training however fast or slow the machine is."""

from __future__ import annotations

import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback


class Gate(Callback):
    """At the start of epoch ``epoch``: touch ``folder/waiting`` and wait (up to ``timeout`` s) for
    ``folder/release``."""

    def __init__(self, folder: str, epoch: int = 1, timeout: float = 300.0) -> None:
        self.folder, self.epoch, self.timeout = Path(folder), int(epoch), float(timeout)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch or (self.folder / "release").exists():
            return
        (self.folder / "waiting").touch()
        deadline = time.time() + self.timeout
        while not (self.folder / "release").exists() and time.time() < deadline:
            time.sleep(0.02)
