"""Subtask attention: composing the routing matrices, its entropy, and sharing between subtasks.

Routing matrix l (children x parents) connects expert layer l (parents) to layer l+1, the last
one (C x E_L) connects the last expert layer to the C class subtasks. The attention of subtask
c over the experts of layer l is row c of ``A_L @ A_{L-1} @ ... @ A_l`` (C x E_l): the total
routing weight of all paths from expert e of layer l up to leaf c. Each factor has rows that
sum to 1, so the product does too.
"""
from __future__ import annotations

import math

import torch


def compose(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Routing weights (children x parents), first layer first -> subtask attention per expert
    layer: ``out[l]`` is (C x E_{l+1}) (0-based list, layer numbers from 1 elsewhere)."""
    out = [None] * len(weights)
    acc = weights[-1].double()
    out[-1] = acc
    for l in range(len(weights) - 2, -1, -1):
        acc = acc @ weights[l].double()
        out[l] = acc
    return [a.float() for a in out]


def entropy(att: torch.Tensor) -> torch.Tensor:
    """Row entropy in nats (``0 log 0 = 0``) of a (C x E) attention matrix."""
    a = att.double()
    return (-torch.xlogy(a, a).sum(dim=1)).float()


def normalised_entropy(att: torch.Tensor) -> torch.Tensor:
    """Entropy / log(E): 0 = all attention on one expert, 1 = uniform; 0 when E = 1."""
    e = att.shape[1]
    h = entropy(att)
    return h / math.log(e) if e > 1 else torch.zeros_like(h)


def overlap(att: torch.Tensor) -> torch.Tensor:
    """Histogram intersection ``O_ij = sum_e min(a_ie, a_je)`` (C x C): 1 = identical attention,
    0 = disjoint experts; under hard routing 1 if both subtasks use the same expert, else 0."""
    a = att.double()
    return torch.minimum(a[:, None, :], a[None, :, :]).sum(dim=2).float()


def shared_weight(att: torch.Tensor) -> torch.Tensor:
    """``S[e, i, j] = min(a_ie, a_je)`` (E x C x C): how much both subtasks use expert e."""
    a = att.t()
    return torch.minimum(a[:, :, None], a[:, None, :])
