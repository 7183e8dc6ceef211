"""Name -> factory registry of the model zoo.

A factory is ``fn(num_classes=100, in_channels=3, **kw) -> nn.Module``; its registry name is
its function name, its one-line description the first line of its docstring::

    @register_model                      # family defaults to the defining module's name
    def my_net(num_classes=100, in_channels=3, **kw): ...

    @register_model(family="resnet_cifar", description="...")
    def resnet8(...): ...
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from kdx.errors import KdxError, did_you_mean

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_META: dict[str, dict] = {}


def register_model(fn: Callable | None = None, *, family: str | None = None, description: str | None = None):
    """Register a model factory under its function name (usable with or without arguments)."""

    def deco(f: Callable) -> Callable:
        name = f.__name__
        prev = _FACTORIES.get(name)
        if prev is not None and prev.__module__ != f.__module__:
            raise ValueError(f"model '{name}' is already registered by {prev.__module__}")

        @functools.wraps(f)
        def factory(*args, **kwargs):
            model = f(*args, **kwargs)
            model.arch = name
            return model

        doc = (f.__doc__ or "").strip().splitlines()
        _FACTORIES[name] = factory
        _META[name] = {
            "name": name,
            "family": family or f.__module__.rsplit(".", 1)[-1],
            "description": description or (doc[0].strip() if doc else name),
        }
        return factory

    return deco(fn) if fn is not None else deco


def list_models() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_FACTORIES)


def _check(name: str) -> Callable[..., nn.Module]:
    if name not in _FACTORIES:
        raise did_you_mean("arch", name, list_models())
    return _FACTORIES[name]


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a freshly initialised ``name`` model (raises ``KdxError`` for unknown names)."""
    factory = _check(name)
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise KdxError(f"arch '{name}' needs num_classes >= 1 and in_channels >= 1 "
                       f"(got num_classes={num_classes}, in_channels={in_channels})")
    return factory(num_classes=int(num_classes), in_channels=int(in_channels), **kwargs)


def model_from_metadata(meta: dict) -> nn.Module:
    """Checkpoint kind ``classifier``: the zoo model its metadata names (arch, classes, input channels)."""
    shape = meta.get("input_shape") or [3, 32, 32]
    return create_model(meta["arch"], num_classes=int(meta["num_classes"]), in_channels=int(shape[0]))


@functools.lru_cache(maxsize=None)
def _structure(name: str) -> dict:
    # Built on the meta device: no memory, no real init, ~milliseconds.
    try:
        with torch.device("meta"):
            model = _FACTORIES[name](num_classes=100, in_channels=3)
    except Exception:  # a third-party factory that cannot be built on "meta": static meta only
        return {}
    info = {"num_params": sum(p.numel() for p in model.parameters())}
    for key in ("num_features", "stage_names", "stage_channels", "classifier_name"):
        if hasattr(model, key):
            value = getattr(model, key)
            info[key] = list(value) if isinstance(value, (list, tuple)) else value
    return info


def get_model_meta(name: str) -> dict:
    """``{name, family, description, num_params (at 100 classes, 3 channels), num_features,
    stage_names, stage_channels, classifier_name}`` for ``kdx`` help tables."""
    _check(name)
    info = {**_META[name], **_structure(name)}
    return {k: list(v) if isinstance(v, list) else v for k, v in info.items()}


@functools.lru_cache(maxsize=None)
def io_keys(name: str) -> dict:
    """``{"stem": key, "head": key}``: the state-dict keys of the architecture's input conv
    (its weight is out × in_channels × k × k) and of its classifier weight (num_classes × features).

    Found from the architecture itself, not from a file's key order: built twice on the meta
    device, the stem is the 4-d weight whose shape changes with ``in_channels`` and the head
    the 2-d weight whose shape changes with ``num_classes``. A key is None if none is found."""
    factory = _check(name)
    try:
        with torch.device("meta"):
            a = factory(num_classes=10, in_channels=3).state_dict()
            b = factory(num_classes=11, in_channels=4).state_dict()
    except Exception:  # a third-party factory that cannot be built on "meta"
        return {"stem": None, "head": None}
    stem = [k for k, v in a.items() if v.dim() == 4 and v.shape[1] == 3 and b[k].shape[1] == 4]
    head = [k for k, v in a.items() if v.dim() == 2 and v.shape[0] == 10 and b[k].shape[0] == 11]
    return {"stem": stem[0] if len(stem) == 1 else None, "head": head[0] if len(head) == 1 else None}
