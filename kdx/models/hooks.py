"""Intermediate features via forward hooks (torchdistill style: models have no ``is_feat`` flag).

One-shot::

    logits, feats = extract_features(model, x)            # all model.stage_names
    logits, feats = extract_features(model, x, ["layer3"])

Across training steps (hooks stay registered until the ``with`` block ends)::

    with FeatureHooks(student, ["layer2", "layer3"]) as hooks:
        for x, y in loader:
            logits = student(x)
            loss = crit(logits, y) + hint(hooks.features["layer3"], ...)

Captured tensors are the modules' outputs as returned, still attached to the autograd
graph unless ``detach=True``; each forward overwrites the previous step's entries.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from kdx.errors import KdxError


class FeatureHooks:
    """Forward hooks on the named submodules; outputs land in ``.features[name]``."""

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None, detach: bool = False):
        if names is None:
            names = getattr(model, "stage_names", None)
            if names is None:
                raise KdxError(f"{type(model).__name__} has no stage_names; pass the module names to hook")
        self.names = list(names)
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            hint = getattr(model, "stage_names", None) or [n for n in modules if n][:20]
            raise KdxError(f"{type(model).__name__} has no module(s) {', '.join(map(repr, missing))}; "
                           f"stage names: {', '.join(hint)}")
        self.model = model
        self.detach = detach
        self.features: dict[str, torch.Tensor] = {}
        self._modules = {n: modules[n] for n in self.names}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.features[name] = output.detach() if self.detach and torch.is_tensor(output) else output
        return hook

    def register(self) -> "FeatureHooks":
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self.features.clear()

    def __enter__(self) -> "FeatureHooks":
        return self.register()

    def __exit__(self, *exc) -> None:
        self.remove()


def extract_features(model: nn.Module, x: torch.Tensor, stages: Iterable[str] | None = None,
                     detach: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model(x)`` once and return ``(logits, {stage name: output})`` in ``stages`` order.

    ``stages`` defaults to ``model.stage_names``; the hooks are removed afterwards, also when
    the forward raises. A stage that did not run in this forward is absent from the dict.
    """
    with FeatureHooks(model, stages, detach=detach) as hooks:
        logits = model(x)
    return logits, {n: hooks.features[n] for n in hooks.names if n in hooks.features}
