"""Named choices: the one registry (models, data sources, export formats, optimisers, fusion balances) and the one
"unknown option" check.

Every option a user spells as a name goes through :func:`choose` (a fixed set of names) or a :class:`Registry` (names
that map to classes or factories), so an unknown name always fails with the same one line: the option, the value,
and the names to choose from.

Examples:
    >>> from fer_lightning.runtime.registry import Registry, choose
    >>> choose("paper", ("paper", "loso"), "data.split")
    'paper'
    >>> choose("losso", ("paper", "loso"), "data.split")
    Traceback (most recent call last):
    ...
    fer_lightning.errors.FERError: data.split=losso is unknown; choose one of: paper, loso
    >>> shapes = Registry("model.shape")
    >>> @shapes.register("square")
    ... class Square:
    ...     pass
    >>> shapes.get("square").__name__
    'Square'
    >>> shapes.names()
    ['square']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from fer_lightning.errors import FERError

T = TypeVar("T")


def choose(value: Any, options: Iterable[str], option: str) -> Any:
    """``value`` when it is one of ``options``; else :class:`FERError` naming ``option`` and the choices."""
    options = list(options)
    if value not in options:
        raise FERError(f"{option}={value} is unknown; choose one of: {', '.join(map(str, options))}")
    return value


class Registry(Generic[T]):
    """Names -> classes (or factories) for one option (``option`` names it in errors, e.g. ``data.source``).

    An entry may be given as ``"package.module:Name"``: it is imported the first time it is asked for (so a registry
    of heavy classes costs nothing to import).
    """

    def __init__(self, option: str, entries: dict[str, T] | None = None) -> None:
        self.option = option
        self._entries: dict[str, T] = dict(entries or {})

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers a class (or function) under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.option}: '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry ``name``; :class:`FERError` naming the option and the registered names when it is unknown."""
        choose(name, self._entries, self.option)
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:  # imported on first use
            module, attr = entry.split(":", 1)
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
