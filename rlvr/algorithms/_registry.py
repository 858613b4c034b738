"""Name -> function registries shared by every part of ``rlvr.algorithms``."""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar

F = TypeVar("F", bound=Callable)


def register(registry: dict[str, Callable], name: str) -> Callable[[F], F]:
    """Decorator: add a function to ``registry`` under ``name`` (names are unique)."""

    def decorate(fn: F) -> F:
        if name in registry:
            raise ValueError(f"{name!r} is already registered")
        registry[name] = fn
        return fn

    return decorate


def lookup(registry: Mapping[str, F], name: str, kind: str) -> F:
    """Return ``registry[name]``; an unknown name raises ValueError listing the known ones."""
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} {name!r}; known: {known}") from None
