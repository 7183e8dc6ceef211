"""Per-subtask metrics: one-vs-rest accuracy, AUROC (rank formula, ties averaged), class top-1."""
from __future__ import annotations

import math

import torch


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` with ties given their average rank."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    xs = x[order]
    n = len(xs)
    ranks_sorted = torch.empty(n, dtype=torch.float64)
    # boundaries of runs of equal values
    new = torch.ones(n, dtype=torch.bool)
    new[1:] = xs[1:] != xs[:-1]
    starts = torch.nonzero(new).flatten()
    ends = torch.cat([starts[1:], torch.tensor([n])])
    for s, e in zip(starts.tolist(), ends.tolist()):
        ranks_sorted[s:e] = (s + 1 + e) / 2.0  # mean of ranks s+1..e
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = ranks_sorted
    return ranks


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative) + 0.5 P(tie),
    via the Mann-Whitney rank sum; NaN when either class is absent."""
    positive = positive.bool()
    p, n = int(positive.sum()), int((~positive).sum())
    if p == 0 or n == 0:
        return math.nan
    r = _average_ranks(scores)
    return float((r[positive].sum() - p * (p + 1) / 2.0) / (p * n))


def subtask_metrics(logits: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Per class c: one-vs-rest accuracy of ``argmax == c`` vs ``y == c``, AUROC of logit c for
    class c vs rest, top-1 accuracy on the images of class c, and the number of those images."""
    pred = logits.argmax(dim=1)
    rows = []
    for c in range(logits.shape[1]):
        is_c = y == c
        rows.append({
            "class": c,
            "support": int(is_c.sum()),
            "ovr_accuracy": float(((pred == c) == is_c).double().mean()),
            "auroc": auroc(logits[:, c], is_c),
            "class_top1": float((pred[is_c] == c).double().mean()) if bool(is_c.any()) else math.nan,
        })
    return rows
