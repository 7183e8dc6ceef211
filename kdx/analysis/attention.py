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


# ``route(R, tau=1, "soft") = softmax(log softmax(R / 0.5) / 1) = softmax(R / 0.5)``: at tau 1 the
# soft routing weights ARE the routing's own distribution p, whatever tau the run ended at.
ROUTING_TAU = 1.0


def entropy_column(layer: int, normalised: bool = False, tau1: bool = False) -> str:
    """Name of a summary column of the composed subtask attention entropy of ``layer`` (from 1):
    ``[norm_]attention_entropy[_tau1]_l<layer>`` (final tau, or tau 1 = ``softmax(R / 0.5)``).
    Training metrics use ``routing_entropy_l<i>`` (one routing matrix, not a composition)."""
    return f"{'norm_' if normalised else ''}attention_entropy{'_tau1' if tau1 else ''}_l{layer}"


def entropy_summary(final: list[torch.Tensor], tau1: list[torch.Tensor]) -> dict[str, float]:
    """Summary columns per layer l (from 1): mean over subtasks of the entropy (nats) and the
    normalised entropy of the composed attention ``final[l-1]`` (soft, the run's final tau) and
    ``tau1[l-1]`` (soft at tau 1, i.e. composed from ``p = softmax(R / 0.5)``)."""
    row = {}
    for key, atts in ((False, final), (True, tau1)):
        for l, a in enumerate(atts, start=1):
            row[entropy_column(l, tau1=key)] = float(entropy(a).mean())
            row[entropy_column(l, normalised=True, tau1=key)] = float(normalised_entropy(a).mean())
    return row


def overlap(att: torch.Tensor) -> torch.Tensor:
    """Histogram intersection ``O_ij = sum_e min(a_ie, a_je)`` (C x C): 1 = identical attention,
    0 = disjoint experts; under hard routing 1 if both subtasks use the same expert, else 0."""
    a = att.double()
    return torch.minimum(a[:, None, :], a[None, :, :]).sum(dim=2).float()


def shared_weight(att: torch.Tensor) -> torch.Tensor:
    """``S[e, i, j] = min(a_ie, a_je)`` (E x C x C): how much both subtasks use expert e."""
    a = att.t()
    return torch.minimum(a[:, :, None], a[:, None, :])
