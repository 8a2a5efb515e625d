"""What may be written into a run folder, checked before anything is written there.

A finished run (``metrics.json``, or a pipeline's ``summary.json``) is never written into again. A folder holding
the checkpoints of an interrupted run only takes the run that resumes it from one of its own checkpoints, so old
and new checkpoints never mix. Evaluations never write into a folder with checkpoints.

:class:`RunDirGuard` applies these rules as a Hydra callback, before Hydra writes its ``.hydra/`` record or its
log file into the folder: it raises :class:`RunFolderRefused`, which stops the command (Hydra lets no ordinary
exception of a callback stop it) and which the command's entry point prints as its one error line, exit code 2;
:func:`check_output_dir` is the same check for code that calls ``train()`` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fer_lightning.errors import FERError
from fer_lightning.runs.folder import FINISHED, RunFolder, resume_checkpoint


class RunFolderRefused(SystemExit):
    """A run folder that may not take this run: the command stops before anything is written there.

    A ``BaseException`` (with exit code 2), because Hydra catches and only warns about ordinary exceptions raised in
    its callbacks; :func:`fer_lightning.engine.startup.command` prints :attr:`message` as the command's one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_output_dir(out: str | Path, resume_from: str | None = None, training: bool = True) -> None:
    """Raise :class:`FERError` when ``out`` may not take this run: it holds a finished run, or checkpoints that
    this run does not resume from (``resume_from``: the ``ckpt_path`` of a training run)."""
    run = RunFolder(out)
    resume_from = str(resume_checkpoint(resume_from)) if resume_from and training else resume_from
    finished = run.finished()
    if finished:
        raise FERError(f"{run.path} already holds a finished run ({finished}); give hydra.run.dir a new folder "
                       "instead of overwriting it")
    ckpts = run.checkpoints()
    if not ckpts:
        return
    resume = run.last_checkpoint if run.last_checkpoint.is_file() else ckpts[-1]
    if not training:
        raise FERError(f"{run.path} holds the checkpoints of a training run; give hydra.run.dir a new folder")
    if resume_from is None:
        raise FERError(f"{run.path} holds the checkpoints of an interrupted run: resume it with ckpt_path={resume} "
                       "(in this folder), or give hydra.run.dir a new folder")
    if not run.holds(resume_from):
        raise FERError(f"{run.path} holds the checkpoints of another run than ckpt_path={resume_from}: resume that "
                       f"run in its own folder, or resume this one with ckpt_path={resume}, or give a new folder")


class RunDirGuard(Callback):
    """Hydra callback: refuse a run whose folder may not take it (:func:`check_output_dir`) before Hydra writes
    anything there. ``training``: whether the command's ``ckpt_path`` resumes a training run."""

    def __init__(self, training: bool = True) -> None:
        self.training = bool(training)

    def _check(self, out: str, config: DictConfig) -> None:
        try:
            check_output_dir(out, config.get("ckpt_path") if self.training else None, self.training)
        except FERError as e:
            raise RunFolderRefused(str(e)) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # so that ${hydra:...} in hydra.run.dir resolves, as Hydra will
        self._check(str(OmegaConf.select(config, "hydra.run.dir")), config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep folder whose jobs include a finished single-model run is refused as a whole (its jobs' folders
        are known only later, when each job starts; ``train()`` checks each of them again). A sweep of pipelines
        (``experiment=paper``, ``fusion_ablation``) may be run again in its folder to finish it: each job reuses
        the stages that finished there with the same configuration and trains only the others."""
        HydraConfig.instance().set_config(config)
        sweep = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        if not sweep.is_dir() or OmegaConf.select(config, "pipeline") is not None:
            return
        done = sorted(p for name in FINISHED for p in sweep.rglob(name))
        if done:
            raise RunFolderRefused(f"hydra.sweep.dir={sweep} already holds finished runs ({done[0]}, ...); give a "
                                   "new sweep folder")
