"""``pkt``: Passalis and Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018.

``pkt_weight * mean over (i, j) of P_t log((P_t + eps) / (P_s + eps))`` with ``P`` the
row-normalised cosine-similarity distributions of the batch's pooled features
(:func:`kdx.distill.functional.pkt`), RepDistiller's ``feat[-1]`` (the global average of the
final map, read through a hook: :func:`.repdistiller.final_tap`). Any widths pair. Default
weight: the authors' configs (others_kd/pkt: other_loss_weight 30000).
"""

from __future__ import annotations

from kdx.distill import functional as KF
from kdx.distill.methods.base import MethodContext, register_method
from kdx.distill.methods.repdistiller import TapMethod, final_tap
from kdx.options import Option


class FinalMapMethod(TapMethod):
    """A method on RepDistiller's ``feat[-1]``, the pooled final maps (pkt, rkd): no taps
    without the models."""

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        if ctx.student is None or ctx.teacher is None:
            self.use_taps([None], [None])
        else:
            self.use_taps([final_tap(ctx.student)], [final_tap(ctx.teacher)])


@register_method
class PKT(FinalMapMethod):
    name = "pkt"
    help = "probabilistic knowledge transfer on the pooled features"
    paper = "Passalis, Tefas. Learning Deep Representations with Probabilistic Knowledge Transfer. ECCV 2018"
    options = (
        Option("pkt_weight", float, 30000.0, "Weight of the PKT loss (authors' configs).", low=0, panel="Method"),
    )

    def loss(self, out):
        return {"pkt": self.params["pkt_weight"] * KF.pkt(*self.pooled_pair(out))}
