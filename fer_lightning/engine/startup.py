"""What every command's entry point shares: quieting known warnings, one-line errors, multirun awareness.

Nothing here runs at import time; entry points call these functions from their ``main``.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from fer_lightning.errors import FERError
from fer_lightning.runs.folder import resolve_checkpoint
from fer_lightning.runs.guard import RunFolderRefused
from fer_lightning.runtime.listing import cut_long_lines, list_into, stop_cutting_lines
from fer_lightning.runtime.progress import configure as configure_progress
from fer_lightning.runtime.ranks import quiet_other_ranks

# Messages that say nothing actionable in this project (each with its reason).
KNOWN_WARNINGS = (
    r".*does not have many workers.*",  # the data are in-memory tensors: workers would only add overhead
    r".*No positive samples in targets.*",  # AUROC on tiny validation batches
    r".*module\(s\) in eval mode at the start of training.*",  # the frozen backbone stays in eval mode on purpose
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning internals
    # DDP: val/test outputs are gathered from every process and counted once per image (models/base.py)
    r".*it is recommended to use `Trainer\(devices=1, num_nodes=1\)` to ensure each sample/batch gets evaluated.*",
)

# Third-party lines that are noise to a user (verbose=true shows them): Lightning's advert and the "stopped" line
# that our own stop record replaces (it names max_epochs when max_time stopped the run), and the chatter of the
# ONNX exporter and its optimiser (hundreds of "Replaced initializer ..." lines).
NOISE = ("litlogger", "`Trainer.fit` stopped:", "Trainer already configured with model summary")
LIGHTNING_LOGGERS = ("lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero",
                     "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "onnx", "torch.onnx", "torch.export", "torch._export")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def quiet_third_party(verbose: bool = False) -> None:
    """Unless ``verbose``: drop the :data:`NOISE` lines of Lightning and keep only errors of
    :data:`CHATTY_LOGGERS`."""
    if verbose:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def start_command(cfg: Any = None) -> None:
    """Process-wide settings for a command, applied when it starts (never at import): TF32-class matmuls on
    GPUs that have them, known warnings silenced unless ``extras.ignore_warnings=false``, file names that are not
    UTF-8 printed escaped instead of failing the command, and on the other processes of a DDP job only warnings
    and errors logged; the ``${job_gpu:N}`` resolver; how progress is shown (``progress``,
    :mod:`fer_lightning.runtime.progress`) and third-party noise dropped unless ``verbose=true``."""
    from omegaconf import OmegaConf

    torch.set_float32_matmul_precision("high")
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    quiet_other_ranks()
    OmegaConf.register_new_resolver("job_gpu", job_gpu, replace=True)
    progress = (cfg.get("progress") if cfg is not None else None) or {}
    configure_progress(progress.get("mode", "auto"), progress.get("every_s", 30))
    quiet_third_party(bool(cfg.get("verbose", False)) if cfg is not None else False)
    if cfg is not None:  # a command's own logging (Hydra's handlers): no line over 300 characters
        cut_long_lines()
    extras = (cfg.get("extras") if cfg is not None else None) or {}
    if extras.get("ignore_warnings", True):
        for message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)


def checkpoint_option(cfg: Any) -> None:
    """``cfg.ckpt_path`` given as a run folder replaced by the checkpoint its run tested (said in the log), for the
    commands that read a trained model (fer-eval, fer-predict, fer-export)."""
    given = cfg.get("ckpt_path")
    if given and Path(str(given)).expanduser().is_dir():
        cfg.ckpt_path = str(resolve_checkpoint(given))
        logging.getLogger("fer_lightning").info("ckpt_path=%s: the run's best checkpoint, %s", given, cfg.ckpt_path)


def job_gpu(n_gpus: int | str) -> list[int]:
    """``[k mod n_gpus]`` for job ``k`` of a multirun (``[0]`` in a single run): the resolver ``${job_gpu:4}``,
    for ``trainer.devices`` when parallel jobs (``hydra/launcher=joblib``) should each use one GPU."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    num = OmegaConf.select(HydraConfig.get(), "job.num", default=0, throw_on_missing=False) if (
        HydraConfig.initialized()) else 0
    return [int(num or 0) % int(n_gpus)]


def fail(error: FERError | str, code: int = 2) -> NoReturn:
    """Print the one-line error and exit (code 2 for a problem the user can fix)."""
    print(f"fer-lightning: error: {error}", file=sys.stderr)
    sys.exit(code)


def check_objective(name: str | None) -> None:
    """A sweeper that chooses (an optimiser such as Optuna, any but Hydra's basic one) may only read validation
    metrics: ``optimized_metric`` naming a test metric is refused, so the test split never picks hyperparameters."""
    if not name or "test/" not in f"/{name}":
        return
    try:
        sweeper = str(HydraConfig.get().sweeper.get("_target_", ""))
    except ValueError:
        return
    if sweeper and not sweeper.endswith("BasicSweeper"):
        raise FERError(
            f"optimized_metric={name}: a hyperparameter search ({sweeper.rsplit('.', 1)[-1]}) may only read "
            "validation metrics; choose a val/* metric (e.g. val/acc) so the test split never picks hyperparameters"
        )


def is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def check_overrides(argv: Sequence[str]) -> None:
    r"""Refuse, in one line naming the option and showing the quoted spelling, a command-line override that Hydra's
    override grammar cannot read (a regex such as ``data.subject_regex=^(S\d+)_``, where Hydra would print its
    lexer's error and a link).

    Args:
        argv: the command's arguments (``sys.argv[1:]``): Hydra's flags and the overrides.

    Examples:
        >>> check_overrides(["-m", "data.fold=0,1", r'data.subject_regex="^(S\d+)_"', "--config-name", "train"])
        >>> check_overrides([r"data.subject_regex=^(S\d+)_"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fer_lightning.errors.FERError: data.subject_regex=^(S\d+)_: Hydra's ... 'data.subject_regex="^(S\d+)_"'
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = get_args_parser().parse_known_args(list(argv))[0].overrides
    except SystemExit:  # malformed flags: Hydra's own parser says what is wrong
        return
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException:
            key, sep, value = override.partition("=")
            if not sep or value[:1] in ("'", '"'):
                raise FERError(f"{override}: Hydra's override grammar cannot read this override; write it as "
                               """key=value, quoting a value with special characters: 'key="value"'""") from None
            quoted = value.replace('"', r'\"')
            raise FERError(f"{override}: Hydra's override grammar cannot read this value; quote it, with the shell's "
                           f"""quotes around the whole override: '{key}="{quoted}"'""") from None


def command(hydra_main: Callable[..., Any]) -> Callable[..., Any]:
    """A command's entry point around its Hydra main: a command-line override that Hydra cannot read
    (:func:`check_overrides`), or a run folder refused before Hydra writes into it
    (:class:`~fer_lightning.runs.guard.RunFolderRefused`), ends the command with its one line and exit code 2, like
    every other problem the user can fix."""

    @functools.wraps(hydra_main)
    def main(*args: Any, **kwargs: Any) -> Any:
        try:
            if not args and not kwargs:  # the command line; a config handed in (tests, Python) bypasses it
                check_overrides(sys.argv[1:])
        except FERError as e:
            fail(e)
        try:
            return hydra_main(*args, **kwargs)
        except RunFolderRefused as e:
            fail(e.message)
        finally:
            list_into(None)  # a later command of this process writes its lists into its own run folder
            stop_cutting_lines()

    return main
