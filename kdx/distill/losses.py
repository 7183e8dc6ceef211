"""Training objectives, registered by name; each returns a dict of *named, weighted* losses.

``ce``: cross-entropy. ``ls``: label-smoothed cross-entropy (epsilon ``smoothing``,
[kdx] 0.1 by default: the paper does not give it). ``kd``: Hinton's KD as in the official
code, ``ce_weight * CE + kd_weight * KL(p_t^T || p_s^T) * T^2`` with the KL averaged over
the batch ("batchmean"), T = 4, weights 0.1 / 0.9.

New objectives (feature-based KD methods...) are added with ``@register_objective``; the
training loop sums whatever named losses they return and logs each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from kdx.errors import did_you_mean


@dataclass
class ObjectiveSpec:
    fn: Callable
    needs_teacher: bool
    help: str


_OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(name: str, needs_teacher: bool = False, help: str = ""):
    def deco(fn):
        _OBJECTIVES[name] = ObjectiveSpec(fn, needs_teacher, help)
        return fn

    return deco


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> ObjectiveSpec:
    if name not in _OBJECTIVES:
        raise did_you_mean("objective", name, _OBJECTIVES)
    return _OBJECTIVES[name]


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) * T^2, averaged over the batch (fp32 for stability)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


@register_objective("ce", help="cross-entropy")
def objective_ce(logits, y, teacher_logits=None, cfg=None) -> dict:
    return {"ce": F.cross_entropy(logits.float(), y)}


@register_objective("ls", help="label-smoothed cross-entropy (--smoothing, default 0.1)")
def objective_ls(logits, y, teacher_logits=None, cfg=None) -> dict:
    eps = 0.1 if cfg is None else float(getattr(cfg, "smoothing", 0.1))
    return {"ls": F.cross_entropy(logits.float(), y, label_smoothing=eps)}


@register_objective("kd", needs_teacher=True, help="0.1 CE + 0.9 KL(T=4) * T^2 against a frozen teacher")
def objective_kd(logits, y, teacher_logits=None, cfg=None) -> dict:
    t = 4.0 if cfg is None else float(getattr(cfg, "kd_temperature", 4.0))
    w_kd = 0.9 if cfg is None else float(getattr(cfg, "kd_weight", 0.9))
    w_ce = 0.1 if cfg is None else float(getattr(cfg, "ce_weight", 0.1))
    return {"ce": w_ce * F.cross_entropy(logits.float(), y), "kd": w_kd * kd_kl(logits, teacher_logits, t)}
