"""The authors' KDExplainer network, transcribed: the one oracle of kdx's explainer.

Source: ``LEARNTOBRANCH.py`` of the authors' repository (github.com/xmq1221/KDExplainer, commit
587db8b): the functions ``gumbel_softmax`` (a plain softmax, no noise, despite its name) and
``LEARNTOBRANCH.branching_op``, and the class ``LEARNTOBRANCH_Deep`` (``__init__``,
``_initialize_weights``, ``forward``) with ``task='mc'``. The modules carry the authors' names
(``conv1_0``, ``conv{L}_{i}``, ``branch_{L}``, ``fc1_{c}``, ``fc2_{c}``), so ``state_dict()`` is an
official checkpoint's, key order included; ``forward(x, t, training)`` computes what theirs
computes, in the same order (the same float rounding): ``training=True`` is their soft routing at
temperature ``t``, ``training=False`` their hard (one-hot argmax) routing; dropout and batch norm
follow ``module.train()`` / ``eval()`` as usual.

Differences, all outside the authors' configurations or not affecting a result:

* ``cifar`` picks their branch on ``dataset``: True is ``'CIFAR10'``/``'CIFAR100'`` (3 expert
  layers of 2, 4, 8 experts on the raw image; ``conv1_0`` built but unused), False every other
  dataset (``conv1_0`` stem, then 4 layers of 2, 4, 8, 16 experts);
* ``experts`` and ``in_channels`` generalise the authors' fixed expert counts and 3 input
  channels, so that kdx's narrower trees and grey images can be checked too (the authors'
  values are the defaults); every first-layer expert reads the input (theirs: 2 experts, 2 copies);
* ``.cuda()`` is dropped: the routing matrix is made on the routing logits' device and dtype;
* written anew (kdx's own code, not a copy of theirs), with their module names and arithmetic.

Used by tests/test_explainer_model.py (equivalence with ``kdx.models.routed.KDExplainer`` and its
import of official checkpoints) and benchmarks/explainer_throughput.py (the baseline it times).
Nothing under ``kdx/`` imports it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POOLED = 7  # leaf maps are average-pooled to 7 x 7 before the class heads
LEAF_CHANNELS = 32  # channels of the last expert layer (the heads read 32 * 7 * 7 values)


def authors_softmax(s: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Their ``gumbel_softmax(s, t)``: ``e^(s/t)`` divided by its row sum (no Gumbel noise), computed
    as they compute it (``torch.pow(math.e, .)``, not ``torch.softmax``)."""
    e = torch.pow(math.e, s / t)
    return e / e.sum(1).view(-1, 1)


def routing_weights(logits: torch.Tensor, t: float, soft: bool = True) -> torch.Tensor:
    """Their ``branching_op``: the (children x parents) mixing weights of one layer from its logits R.

    ``p = authors_softmax(R, 0.5)`` row by row; soft: ``authors_softmax(log p, t)``; hard: the
    one-hot of each row's ``argmax p``."""
    p = authors_softmax(logits, 0.5)
    if soft:
        return authors_softmax(torch.log(p), t)
    hard = torch.zeros_like(p)
    hard[torch.arange(p.shape[0]), p.argmax(1)] += 1
    return hard


def _expert(cin: int, mid: int, cout: int) -> nn.Sequential:
    """One expert: conv3x3-BN-ReLU-conv3x3-BN-ReLU-maxpool2 (their ``conv{L}_{i}``)."""
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2, 2))


class AuthorsExplainer(nn.Module):
    """Their ``LEARNTOBRANCH_Deep(dataset, num_attributes=num_classes, loss_method, task='mc')``."""

    def __init__(self, num_classes: int = 10, loss_method: str = "ce", cifar: bool = True,
                 experts: tuple | None = None, in_channels: int = 3):
        super().__init__()
        self.num_classes, self.loss_method, self.cifar = int(num_classes), loss_method, bool(cifar)
        self.experts = tuple(experts or ((2, 4, 8) if self.cifar else (2, 4, 8, 16)))
        self.avgpool = nn.AdaptiveAvgPool2d((POOLED, POOLED))
        # the stem: built on every path (it is in every official checkpoint), applied off CIFAR only
        self.conv1_0 = nn.Sequential(nn.Conv2d(in_channels, 64, 7), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                     nn.MaxPool2d(2, 2))
        depth = len(self.experts)
        first = in_channels if self.cifar else 64
        cins = [first] + [64] * (depth - 1)
        couts = [64] * (depth - 1) + [LEAF_CHANNELS]
        children = list(self.experts[1:]) + [self.num_classes]
        for n, (count, cin, cout, nxt) in enumerate(zip(self.experts, cins, couts, children)):
            for e in range(count):
                self.add_module(f"conv{n + 2}_{e}", _expert(cin, 64, cout))
            # routing logits R (children x parents), uniform in [0, 1)
            self.add_module(f"branch_{n + 2}", nn.ParameterList([nn.Parameter(torch.rand(nxt, count))]))
        outputs = 2 if loss_method == "nce" else 1
        for c in range(self.num_classes):
            self.add_module(f"fc1_{c}", nn.Sequential(nn.Linear(LEAF_CHANNELS * POOLED * POOLED, 128),
                                                      nn.ReLU(inplace=True), nn.Dropout(0.15)))
            self.add_module(f"fc2_{c}", nn.Sequential(nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Dropout(0.15),
                                                      nn.Linear(128, outputs)))
        self._init_as_theirs()

    def _init_as_theirs(self) -> None:
        """Their ``_initialize_weights``: kaiming-normal (fan_out) convs, BN 1/0, Linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def routing_logits(self) -> list[torch.Tensor]:
        return [getattr(self, f"branch_{n + 2}")[0] for n in range(len(self.experts))]

    def forward(self, x: torch.Tensor, t: float = 10, training: bool = True) -> torch.Tensor:
        """Logits (N, C); ``training``: soft routing at temperature ``t``, else hard routing."""
        if not self.cifar:
            x = self.conv1_0(x)
        inputs = [x] * self.experts[0]
        for n, count in enumerate(self.experts):
            outs = [getattr(self, f"conv{n + 2}_{e}")(inputs[e]) for e in range(count)]
            w = routing_weights(self.routing_logits()[n], t, soft=training)
            inputs = []
            for child in range(w.shape[0]):  # sum over the parents in their order (same rounding)
                mixed = outs[0] * w[child][0]
                for j in range(1, count):
                    mixed = mixed + outs[j] * w[child][j]
                inputs.append(mixed)
        logits = []
        for c in range(self.num_classes):
            pooled = self.avgpool(inputs[c]).flatten(1)
            out = getattr(self, f"fc2_{c}")(getattr(self, f"fc1_{c}")(pooled))
            logits.append(out if self.loss_method == "ce" else out.max(1).values.view(-1, 1))
        return torch.cat(logits, 1)
