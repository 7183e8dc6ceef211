"""``sp``: Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

``sp_weight * ||G_t - G_s||_F^2 / N^2`` with ``G`` the row-normalised batch Gram matrix of the
last stage's output before pooling (:func:`kdx.distill.functional.sp`), RepDistiller's
``feat[-2]`` (:mod:`.repdistiller`: ``fk``). Any widths pair. Default weight: the authors'
configs (others_kd/sp: other_loss_weight 3000).
"""

from __future__ import annotations

from kdx.distill import functional as KF
from kdx.distill.methods.at import stage_taps
from kdx.distill.methods.base import Method, MethodContext, register_method
from kdx.distill.methods.repdistiller import hook_names, needs_final
from kdx.errors import KdxError
from kdx.options import Option


@register_method
class SP(Method):
    name = "sp"
    help = "similarity preserving: batch similarity matrices of the last stage before pooling"
    paper = "Tung, Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019"
    needs_teacher = True
    uses_features = True
    options = (
        Option("sp_weight", float, 3000.0, "Weight of the SP loss (authors' configs).", low=0, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        taps_s, taps_t = stage_taps(ctx)
        self.taps = (taps_s[-1:], taps_t[-1:])
        self.wants_final = needs_final(*taps_s[-1:], *taps_t[-1:])

    def stages(self):
        return hook_names(self.taps[0]), hook_names(self.taps[1])

    def setup(self, probe):
        if not (self.taps[0] and self.taps[1]):
            raise KdxError("sp needs a student and a teacher with named stages (stage_names)")

    def loss(self, out):
        f_s = self.taps[0][0].read(out.features_s, out.feat_s)
        f_t = self.taps[1][0].read(out.features_t, out.feat_t)
        return {"sp": self.params["sp_weight"] * KF.sp(f_s, f_t)}
