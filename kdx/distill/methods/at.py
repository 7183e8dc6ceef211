"""``at``: Zagoruyko and Komodakis, "Paying More Attention to Attention: Improving the Performance
of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

``at_weight * sum over paired stages of AT(f_s, f_t; p)`` (:func:`kdx.distill.functional.at`:
mean squared difference of the L2-normalised maps ``mean_c f^p``, the larger map pooled to the
smaller) on every intermediate stage, RepDistiller's ``feat[1:-1]`` (:mod:`.repdistiller`:
``f1..fk``, as its ``forward(preact=False)`` returns them). Defaults: the authors' configs
(others_kd/attention: other_loss_weight 1000, p 2). Stages are paired in depth order by ``zip``, as RepDistiller's
``Attention.forward``: when one network has more stages, its deepest extra ones are left
out (e.g. resnet8's layer1..3 pair with ResNet18's layer1..3; ResNet18's layer4 is unused).
The pairs used are listed in the run's method record (``pairs``).
"""

from __future__ import annotations

import torch

from kdx.distill import functional as KF
from kdx.distill.methods.base import MethodContext, register_method
from kdx.distill.methods.repdistiller import Tap, TapMethod, feature_taps
from kdx.errors import KdxError
from kdx.options import Option


def stage_taps(ctx: MethodContext) -> tuple[list[Tap], list[Tap]]:
    """RepDistiller's ``f1..fk`` of the student and of the teacher ([] without the models, e.g.
    when the method is built only to be listed or refused)."""
    if ctx.student is None or ctx.teacher is None:
        return [], []
    return feature_taps(ctx.student)[1], feature_taps(ctx.teacher)[1]


def zip_taps(taps_s: list[Tap], taps_t: list[Tap]) -> tuple[list[Tap], list[Tap]]:
    """RepDistiller's ``zip(g_s, g_t)``: the first ``min(k_s, k_t)`` stages of each network."""
    n = min(len(taps_s), len(taps_t))
    return taps_s[:n], taps_t[:n]


def check_paired(method: str, taps_s: list[Tap], taps_t: list[Tap]) -> None:
    """One-line error when either network has no intermediate stage to pair."""
    if not taps_s or not taps_t:
        raise KdxError(f"{method} needs intermediate stages (stage_names) on both student and teacher")


def pair_labels(taps_s: list[Tap], taps_t: list[Tap]) -> list[str]:
    """``["student layer1 - teacher layer1", ...]`` for the method record."""
    return [f"{a.label} - {b.label}" for a, b in zip(taps_s, taps_t)]


class StagePairs(TapMethod):
    """A method on the intermediate stages paired by ``zip`` (at, nst); the pairs used are in its record."""

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.use_taps(*zip_taps(*stage_taps(ctx)))

    def setup(self, probe):
        check_paired(self.name, self.taps_s, self.taps_t)

    def record(self) -> dict:
        return super().record() | {"pairs": pair_labels(self.taps_s, self.taps_t)}


@register_method
class AT(StagePairs):
    name = "at"
    help = "attention transfer on every intermediate stage"
    paper = ("Zagoruyko, Komodakis. Paying More Attention to Attention: Improving the Performance of "
             "Convolutional Neural Networks via Attention Transfer. ICLR 2017")
    options = (
        Option("at_weight", float, 1000.0, "Weight of the summed AT losses (authors' configs).", low=0,
               panel="Method"),
        Option("at_p", float, 2.0, "AT exponent p of the attention map mean_c(f^p).", low=0, low_open=True,
               panel="Method"),
    )

    def loss(self, out):
        p = self.params["at_p"]
        terms = [KF.at(s, t, p) for s, t in self.pairs(out)]
        return {"at": self.params["at_weight"] * torch.stack(terms).sum()}
