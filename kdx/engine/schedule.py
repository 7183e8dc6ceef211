"""Learning-rate schedules as pure functions of the epoch (counted from 1).

A schedule maps ``(epoch, base_lrs, cfg)`` to the learning rate of every parameter
group for that epoch. Being pure, it needs no state to resume. New schedules
(the explainer's stage-1 warm-up/decay, stage-2 halving) are added with
``@register_schedule``; the training loop never changes.
"""

from __future__ import annotations

import math
from typing import Callable

from kdx.errors import did_you_mean

ScheduleFn = Callable[[int, list, object], list]
_SCHEDULES: dict[str, ScheduleFn] = {}


def register_schedule(name: str):
    def deco(fn: ScheduleFn) -> ScheduleFn:
        _SCHEDULES[name] = fn
        return fn

    return deco


def get_schedule(name: str) -> ScheduleFn:
    if name not in _SCHEDULES:
        raise did_you_mean("schedule", name, _SCHEDULES)
    return _SCHEDULES[name]


def _warmup(epoch: int, cfg) -> float:
    w = int(getattr(cfg, "warmup_epochs", 0) or 0)
    return min(1.0, epoch / (w + 1)) if w > 0 and epoch <= w else 1.0


@register_schedule("constant")
def constant(epoch, base_lrs, cfg):
    return [lr * _warmup(epoch, cfg) for lr in base_lrs]


@register_schedule("multistep")
def multistep(epoch, base_lrs, cfg):
    """lr x gamma for every milestone already passed (as RepDistiller: epoch 151 is the first decayed one for 150)."""
    passed = sum(1 for m in cfg.milestones if epoch > int(m))
    return [lr * (cfg.gamma ** passed) * _warmup(epoch, cfg) for lr in base_lrs]


@register_schedule("cosine")
def cosine(epoch, base_lrs, cfg):
    w = int(getattr(cfg, "warmup_epochs", 0) or 0)
    if epoch <= w:
        return [lr * _warmup(epoch, cfg) for lr in base_lrs]
    span = max(1, cfg.epochs - w)
    t = (epoch - 1 - w) / span
    return [lr * 0.5 * (1 + math.cos(math.pi * t)) for lr in base_lrs]


@register_schedule("halving")
def halving(epoch, base_lrs, cfg):
    """Official explainer stage 2: ``lr = base * 0.5 ** (epoch // halve_every)`` (every 30 epochs).

    As the authors' ``adjust_learning_rate_stage2``, called before each epoch e (from 1): it
    halves the lr when ``e % 30 == 0``, so epochs 30-59 run at base/2 and 60-89 at base/4."""
    every = int(getattr(cfg, "halve_every", 30) or 30)
    return [lr * 0.5 ** (epoch // every) for lr in base_lrs]
