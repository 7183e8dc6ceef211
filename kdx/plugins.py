"""Registries extended by other packages through ``importlib.metadata`` entry points."""

from __future__ import annotations

from typing import Callable

from kdx.errors import KdxError


def load_entry_points(group: str, kind: str, expected: str, accept: Callable[[object], bool],
                      register: Callable) -> None:
    """Load every entry point of ``group`` and ``register`` it; one line naming the plug-in when
    it fails to import or ``accept`` refuses it (``kind`` "KD method", ``expected`` "a kdx
    Method subclass")."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must not break kdx: say which one
            raise KdxError(f"cannot load {kind} plug-in '{ep.name}' ({ep.value}): {exc}") from None
        if not accept(obj):
            raise KdxError(f"{kind} plug-in '{ep.name}' ({ep.value}) is not {expected}")
        register(obj)
