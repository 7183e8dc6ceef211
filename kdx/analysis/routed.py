"""The duck-typed "routed model" interface that `kdx analyze-conflicts` reads.

Any model that exposes the following can be analysed (documented in docs/analyze-conflicts.md):

* ``num_classes`` (int) and ``experts`` (sequence: number of experts of every expert layer,
  first layer first);
* ``routing`` (``"soft" | "hard" | "gumbel"``) and ``tau`` (float) attributes, read by forward;
* ``routing_logits()`` -> list of (children x parents) matrices, one per routing layer; the
  last one is (C x E_last), the class-level subtask attention;
* ``routing_weights(mode=None, tau=None)`` -> the same list turned into routing weights
  (rows sum to 1) under ``mode``/``tau`` (default: the model's);
* optional, for gradient conflicts: ``expert_param_groups()`` -> list (per expert layer) of
  list (per expert) of tensors: parameters (leaves) or views of leaf parameters (e.g.
  ``stacked[e]``); the gradient of expert e is read through the same view.

A VAM student is a one-layer routed model: ``experts == [K]`` and ``routing_logits()`` is
``[R]`` with R of shape (C x K).

:class:`KDExplainer` has no ``expert_param_groups``; :func:`as_routed` wraps it in
:class:`ExplainerAdapter`, which adds it (per-expert views into ``model.layers[l]``'s stacked
parameters, in ``KDExplainer.per_expert`` order) and a fast, exact per-expert gradient path
used by :mod:`kdx.analysis.conflicts`.
"""
from __future__ import annotations

import torch
from torch import nn

from kdx.errors import KdxError

REQUIRED = ("num_classes", "experts", "routing", "tau", "routing_logits", "routing_weights")


class ExplainerAdapter(nn.Module):
    """Wrap a :class:`kdx.explainer.KDExplainer`: forwards everything, adds ``expert_param_groups``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    # -- the interface, forwarded
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def experts(self):
        return list(self.model.experts)

    @property
    def routing(self) -> str:
        return self.model.routing

    @routing.setter
    def routing(self, mode: str) -> None:
        self.model.routing = mode

    @property
    def tau(self) -> float:
        return self.model.tau

    @tau.setter
    def tau(self, value: float) -> None:
        self.model.tau = value

    def routing_logits(self):
        return self.model.routing_logits()

    def routing_weights(self, mode=None, tau=None):
        return self.model.routing_weights(mode=mode, tau=tau)

    def forward(self, x):
        return self.model(x)

    def expert_param_groups(self):
        """Per layer, per expert: views ``p[e]`` of the layer's stacked parameters (``per_expert`` order)."""
        return [[[p[e] for p in layer.parameters()] for e in range(layer.experts)] for layer in self.model.layers]


def as_routed(model):
    """The model itself if it already speaks the interface, a KDExplainer wrapped in an adapter;
    KdxError for anything else."""
    from kdx.explainer.model import KDExplainer

    if isinstance(model, KDExplainer):
        return ExplainerAdapter(model)
    missing = [name for name in REQUIRED if not hasattr(model, name)]
    if missing:
        raise KdxError(f"{type(model).__name__} is not a routed model (no {', '.join(missing)}); "
                       "analyze-conflicts needs an explainer or a VAM student")
    return model


def check_routed(model) -> None:
    """Shapes of the routing matrices must chain: (E_2 x E_1), ..., (C x E_L)."""
    logits = model.routing_logits()
    experts = list(model.experts)
    if len(logits) != len(experts):
        raise KdxError(f"routed model has {len(experts)} expert layers but {len(logits)} routing matrices")
    children = experts[1:] + [model.num_classes]
    for l, (r, c, p) in enumerate(zip(logits, children, experts), start=1):
        if tuple(r.shape) != (c, p):
            raise KdxError(f"routing matrix {l} has shape {tuple(r.shape)}, expected ({c}, {p})")


@torch.no_grad()
def routing_matrices(model, mode: str, tau: float | None = None) -> list[torch.Tensor]:
    """``routing_weights`` as detached float CPU tensors (``gumbel`` is read as ``soft``: no noise)."""
    mode = "soft" if mode == "gumbel" else mode
    return [w.detach().float().cpu() for w in model.routing_weights(mode=mode, tau=tau)]
