"""Parameter-free distillation losses as pure functions on single tensors.

Each function follows the scale conventions of its reference implementation; the sum over
stages and the method's weight are the method's job (``kdx.distill.methods``), not the
function's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd(logits_s: Tensor, logits_t: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``KL(p_t^T || p_s^T) * T^2`` averaged over the batch ("batchmean"), in fp32.

    ``p^T = softmax(logits / T)``; the ``T^2`` keeps the gradient scale independent of T.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(logits_s.float() / t, dim=1)
    log_p_t = F.log_softmax(logits_t.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def ce(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy (mean over the batch) in fp32, with optional label smoothing epsilon."""
    return F.cross_entropy(logits.float(), target, label_smoothing=float(label_smoothing))


__all__ = ["kd", "ce", "torch"]
