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

:class:`KDExplainer` speaks it directly (``expert_param_groups`` gives per-expert views into
``model.layers[l]``'s stacked parameters, in ``KDExplainer.per_expert`` order);
:mod:`kdx.analysis.conflicts` also has a fast, exact per-expert gradient path for it.
"""
from __future__ import annotations

import torch

from kdx.errors import KdxError

REQUIRED = ("num_classes", "experts", "routing", "tau", "routing_logits", "routing_weights")


def as_routed(model):
    """The model itself if it speaks the interface (a KDExplainer, a VAM student); KdxError otherwise."""
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
