"""Checks of a composed configuration before anything is built: one line naming the option the user set.

* every key of a node with a ``_target_`` is an argument its class accepts (``+data.unknown_key=1`` lists the
  valid keys), and a value of a plainly typed argument has that type (``data.image_size=abc``);
* every number is finite (``model.lr=nan``), and hyper-parameters have a sensible sign or range (:data:`RULES`).

Nodes are checked in the order recipe, data, model, features, trainer, callbacks, so an option the user set is named
before an option derived from it by interpolation (``features.hog.scales`` follows ``data.image_size``).
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from fer_lightning.errors import FERError
from fer_lightning.runs.legacy import moved

HYDRA_KEYS = frozenset({"_target_", "_convert_", "_recursive_", "_partial_", "_args_"})
GROUPS = ("recipe", "data", "model", "features", "trainer", "callbacks")


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _fraction(v: float) -> bool:
    return 0 <= v < 1


# a leaf name anywhere in the checked nodes -> (test for each number, what it must be)
RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (_positive, "a positive number"),
    "batch_size": (_positive, "a positive whole number"),
    "image_size": (_positive, "a positive whole number"),
    "n_components": (_positive, "a positive count or a variance fraction in (0, 1]"),
    "weight_decay": (_non_negative, "zero or a positive number"),
    "num_workers": (_non_negative, "zero or a positive whole number"),
    "patience": (_non_negative, "zero or a positive whole number"),
    "copies": (_non_negative, "zero or a positive whole number of augmented copies"),
    "crop_margin": (_non_negative, "zero or a positive fraction of the face size"),
    "dropout": (_fraction, "a probability in [0, 1)"),
    "input_dropout": (_fraction, "a probability in [0, 1)"),
    "max_epochs": (lambda v: v > 0 or v == -1, "a positive whole number (or -1: no limit)"),
}


def _owner(target: Any) -> Any:
    """The class a factory classmethod belongs to (``FERDataModule.from_options`` -> ``FERDataModule``)."""
    return getattr(target, "__self__", None) if inspect.ismethod(target) else None


def accepted_keys(cls: Any, node: Mapping[str, Any] | None = None) -> set[str] | None:
    """The keyword arguments ``cls(...)`` accepts (``cls``: a class, or a factory function), following ``**kwargs``
    up the class hierarchy (None: any); a class whose ``**kwargs`` depend on its other arguments says which with
    ``option_names(node)`` (the data module: its own options and those of ``node["source"]``)."""
    option_names = getattr(cls, "option_names", None) or getattr(_owner(cls), "option_names", None)
    if callable(option_names):
        return set(option_names(node or {}))
    if not isinstance(cls, type):
        try:
            params = list(inspect.signature(cls).parameters.values())
        except (TypeError, ValueError):
            return None
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    keys: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return None
        keys |= {p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return keys
    return None


def _hints(cls: Any) -> dict[str, Any]:
    """Type hints of the constructor arguments (of every class the ``**kwargs`` lead to), or of a factory's."""
    hints: dict[str, Any] = {}
    if not isinstance(cls, type):
        try:
            hints.update(typing.get_type_hints(cls))
        except Exception:  # unresolvable annotations: no type checks
            return {}
        hints.pop("return", None)
        return hints
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints.update(typing.get_type_hints(init))
        except Exception:  # unresolvable annotations: no type checks for this class
            continue
    hints.pop("return", None)
    return hints


_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _conforms(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` has type ``hint``; None where the hint is not a plain type (not checked)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        results = [_conforms(value, h) for h in typing.get_args(hint)]
        return True if any(r is True for r in results) else None if any(r is None for r in results) else False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return None


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint) if h in _NAMES)
    return _NAMES.get(hint, str(hint))


def check_target_node(node: Mapping[str, Any], option: str) -> None:
    """Keys and plainly typed values of a node with a ``_target_`` against its class's constructor."""
    target = node.get("_target_")
    if not target:
        return
    new = moved(str(target))
    if new:
        raise FERError(f"{option}._target_={target} is a fer-lightning 0.1 name; write {option}._target_={new}")
    try:
        cls = get_object(str(target))
    except Exception as e:
        raise FERError(f"{option}._target_={target} cannot be imported ({e.__class__.__name__}: {e})") from e
    keys = accepted_keys(cls, node)
    given = [k for k in node if k not in HYDRA_KEYS]
    if keys is not None:
        unknown = [k for k in given if k not in keys]
        if unknown:
            raise FERError(f"{option}.{unknown[0]} is not an option of {target}; valid keys: "
                           f"{', '.join(sorted(keys))}")
    hints = _hints(cls)
    for k in given:
        if k in hints and _conforms(node[k], hints[k]) is False:
            raise FERError(f"{option}.{k}={node[k]!r} is not valid: give {_describe(hints[k])}")


def check_values(node: Any, option: str) -> None:
    """Every number below ``node`` is finite, and those named in :data:`RULES` are in range."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            path = f"{option}.{k}"
            check_values(v, path)
            rule = RULES.get(str(k))
            if rule is None:
                continue
            for x in v if isinstance(v, list | tuple) else [v]:
                if isinstance(x, int | float) and not isinstance(x, bool) and not rule[0](x):
                    raise FERError(f"{path}={v} is not valid: give {rule[1]}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            check_values(v, f"{option}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise FERError(f"{option}={node} is not a finite number")


def _nodes(cfg: DictConfig, group: str) -> list[tuple[str, Any]]:
    """``(option, node)`` for a group: the node itself, or each named member (callbacks, loggers)."""
    node = cfg.get(group)
    if node is None:
        return []
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(plain, dict):
        return []
    if "_target_" in plain or group != "callbacks":
        return [(group, plain)]
    return [(f"{group}.{k}", v) for k, v in plain.items() if isinstance(v, dict)]


def check_config(cfg: DictConfig) -> None:
    """All the checks above on the groups of a training config (raises :class:`FERError`, one line)."""
    for group in GROUPS:
        try:
            nodes = _nodes(cfg, group)
        except FERError:
            raise
        except Exception as e:  # an interpolation that cannot resolve, ...
            raise FERError(f"{group}: the configuration cannot be resolved ({e.__class__.__name__}: {e})") from e
        for option, node in nodes:
            check_values(node, option)
            check_target_node(node, option)
