"""Evaluation: loss, top-1, top-5 and per-class accuracy over a loader (DDP-aware)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kdx.engine.distributed import DistInfo, all_reduce_sum


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    per_class_correct: list = field(default_factory=list)
    per_class_total: list = field(default_factory=list)

    @property
    def per_class_accuracy(self) -> list:
        return [c / t if t else float("nan") for c, t in zip(self.per_class_correct, self.per_class_total)]


@torch.no_grad()
def evaluate(predict, loader, num_classes: int, precision=None, dist: DistInfo | None = None,
             device=None) -> EvalResult:
    """Run ``predict(x) -> logits`` over ``loader.batches(0)`` and gather the metrics."""
    dist = dist or DistInfo()
    loss_sum = None
    correct1 = correct5 = total = None
    per_correct = per_total = None
    ctx = precision.autocast if precision is not None else None
    for x, y in loader.batches(0):
        if ctx is not None:
            with ctx():
                logits = predict(x)
        else:
            logits = predict(x)
        logits = logits.float()
        if loss_sum is None:
            dev = logits.device
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            correct1 = torch.zeros((), dtype=torch.float64, device=dev)
            correct5 = torch.zeros((), dtype=torch.float64, device=dev)
            total = torch.zeros((), dtype=torch.float64, device=dev)
            per_correct = torch.zeros(num_classes, dtype=torch.float64, device=dev)
            per_total = torch.zeros(num_classes, dtype=torch.float64, device=dev)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit1 = topk[:, 0] == y
        correct1 += hit1.sum()
        correct5 += (topk == y[:, None]).any(dim=1).sum()
        total += y.numel()
        per_total += torch.bincount(y, minlength=num_classes).double()
        per_correct += torch.bincount(y[hit1], minlength=num_classes).double()
    if loss_sum is None:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0, [0] * num_classes, [0] * num_classes)
    dev = device if device is not None else loss_sum.device
    sums = all_reduce_sum([loss_sum.item(), correct1.item(), correct5.item(), total.item()], dist, dev)
    per_c = all_reduce_sum(per_correct.tolist(), dist, dev)
    per_t = all_reduce_sum(per_total.tolist(), dist, dev)
    n = max(sums[3], 1.0)
    return EvalResult(sums[0] / n, sums[1] / n, sums[2] / n, int(sums[3]),
                      [int(v) for v in per_c], [int(v) for v in per_t])
