"""``sp``: Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

``sp_weight * ||G_t - G_s||_F^2 / N^2`` with ``G`` the row-normalised batch Gram matrix of the
last stage's output before pooling (:func:`kdx.distill.functional.sp`), RepDistiller's
``feat[-2]`` (:mod:`.repdistiller`: ``fk``). Any widths pair. Default weight: the authors'
configs (others_kd/sp: other_loss_weight 3000).
"""

from __future__ import annotations

from kdx.distill import functional as KF
from kdx.distill.methods.at import stage_taps
from kdx.distill.methods.base import MethodContext, register_method
from kdx.distill.methods.repdistiller import TapMethod
from kdx.errors import KdxError
from kdx.options import Option


@register_method
class SP(TapMethod):
    name = "sp"
    help = "similarity preserving: batch similarity matrices of the last stage before pooling"
    paper = "Tung, Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019"
    options = (
        Option("sp_weight", float, 3000.0, "Weight of the SP loss (authors' configs).", low=0, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        taps_s, taps_t = stage_taps(ctx)
        self.use_taps(taps_s[-1:], taps_t[-1:])

    def setup(self, probe):
        if not (self.taps_s and self.taps_t):
            raise KdxError("sp needs a student and a teacher with named stages (stage_names)")

    def loss(self, out):
        [(f_s, f_t)] = self.pairs(out)
        return {"sp": self.params["sp_weight"] * KF.sp(f_s, f_t)}
