"""Routing (task-oriented attention) shared by the explainer and the student VAM.

A routing layer owns a logit matrix ``R`` of shape ``(children, parents)``; row ``i``
says how child ``i`` attends over the parents. Everything here is shape-generic
(any number of children and parents) and batch-free: the weights do not depend on
the input, so one matrix serves the whole batch.

Official formulas (KDExplainer code, see KDEXPLAINER.md section 2)::

    p = softmax(R / 0.5, dim=1)                     # routing_probs
    soft:   a = softmax(log(p) / tau, dim=1)        # the code's "gumbel_softmax", no noise
    hard:   a = one_hot(argmax_j p)                 # ties -> first index
    gumbel: a = softmax((log(p) + g) / tau, dim=1), g ~ Gumbel(0, 1)   [kdx, opt-in]

Notes
-----
* ``log(p)`` is computed as ``log_softmax(R / 0.5)`` (same value, no underflow).
* ``hard`` returns a constant one-hot matrix: there is no straight-through gradient,
  ``R`` gets no gradient through it (the official stage 2 freezes ``R`` anyway).
* ``gumbel`` adds noise only when ``training=True``; with ``training=False`` it is
  exactly ``soft``. The caller decides (the explainer passes ``self.training``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdx.errors import KdxError

MODES = ("soft", "hard", "gumbel")
PROB_TEMPERATURE = 0.5  # fixed in the official code: p = softmax(R / 0.5)


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a routing mode, else raise a one-line KdxError."""
    if mode not in MODES:
        raise KdxError(f"unknown routing mode '{mode}'; valid routing modes: {', '.join(MODES)}")
    return mode


def _get_mode(model) -> str:
    return model._routing


def _set_mode(model, mode: str) -> None:
    model._routing = check_mode(mode)


routing_mode = property(_get_mode, _set_mode, doc="The model's routing mode (one of ``MODES``; set through "
                                                  ":func:`check_mode`). Shared by every routed model.")


def routing_probs(logits: Tensor) -> Tensor:
    """``p = softmax(R / 0.5)`` over the parents (last dim)."""
    return torch.softmax(logits / PROB_TEMPERATURE, dim=-1)


def route(logits: Tensor, tau: float = 1.0, mode: str = "soft", generator: torch.Generator | None = None,
          training: bool = True) -> Tensor:
    """Routing weights ``a`` (same shape as ``logits``: children x parents); rows sum to 1.

    ``tau`` is the temperature of soft/gumbel routing (ignored by ``hard``);
    ``generator`` seeds the Gumbel noise; ``training`` switches the noise of
    ``gumbel`` on (True) or off (False, then ``gumbel == soft``).
    """
    check_mode(mode)
    if mode == "hard":
        idx = logits.argmax(dim=-1)  # argmax of p == argmax of R (softmax is monotone)
        return F.one_hot(idx, logits.shape[-1]).to(logits.dtype)
    if not tau > 0:
        raise KdxError(f"routing temperature tau must be > 0, got {tau}")
    logp = torch.log_softmax(logits.float() / PROB_TEMPERATURE, dim=-1)
    if mode == "gumbel" and training:
        u = torch.rand(logp.shape, generator=generator, device=logp.device if generator is None
                       else generator.device, dtype=logp.dtype).to(logp.device)
        tiny = torch.finfo(logp.dtype).tiny
        logp = logp - torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))  # + Gumbel(0, 1)
    return torch.softmax(logp / tau, dim=-1).to(logits.dtype)


def routing_entropy(weights: Tensor) -> Tensor:
    """Entropy (natural log) of every row of ``weights``; ``0 log 0 = 0``. Shape: ``weights.shape[:-1]``."""
    return -torch.xlogy(weights, weights).sum(dim=-1)


def tau_at(epoch: int, tau0: float = 10.0) -> float:
    """Official temperature schedule ``tau = tau0 / epoch``, epochs counted from 1."""
    if epoch < 1:
        raise KdxError(f"epochs are counted from 1, got {epoch}")
    return tau0 / epoch


__all__ = ["MODES", "route", "routing_probs", "routing_entropy", "tau_at"]
