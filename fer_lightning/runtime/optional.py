"""Optional dependencies: which extra of the distribution provides what, and one clear line when it is missing.

The default install is lean; loggers such as W&B or MLflow and the rich progress bar come with extras
(``pip install 'fer-lightning[wandb]'``). A config that names a class needing one is checked before anything
runs, so a missing package stops the command with the extra to install instead of a traceback mid-run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fer_lightning.errors import FERError

# class name of a ``_target_`` -> (the module it imports, the fer-lightning extra that installs it)
NEEDS = {
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "RichProgressBar": ("rich", "rich"),
    "RichModelSummary": ("rich", "rich"),
}


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the module is blocked (None in sys.modules)
        return False


def require(module: str, extra: str, what: str) -> None:
    """Raise a :class:`FERError` naming the extra when ``module`` is not installed; ``what`` is what needs it."""
    if not available(module):
        raise FERError(
            f"{what} needs the '{extra}' extra ({module} is not installed): pip install 'fer-lightning[{extra}]' "
            f"(in a clone: uv sync --extra {extra}), or choose another option"
        )


def _targets(node: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield key, node["_target_"]
        for k, v in node.items():
            yield from _targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{key}[{i}]")


def check_config(cfg: Any) -> None:
    """Every ``_target_`` in ``cfg`` whose class needs an extra: raise for the first one that is missing."""
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig | ListConfig) else cfg
    for key, target in _targets(tree, ""):
        need = NEEDS.get(target.rsplit(".", 1)[-1])
        if need is not None:
            require(need[0], need[1], f"{key} ({target})")
