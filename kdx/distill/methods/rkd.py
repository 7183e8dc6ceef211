"""``rkd``: Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019.

``rkd_weight * (w_dist * L_dist + w_angle * L_angle)`` on the batch's pooled features
(:func:`kdx.distill.functional.rkd`: smooth-L1 between the mean-normalised distance matrices
and between the triplet angle cosines), RepDistiller's ``feat[-1]`` (as ``pkt``). Defaults:
the authors' configs (others_kd/rkd: other_loss_weight 1, w_d 25, w_a 50). [kdx] A batch of one
sample has no pair: the loss is 0 (the reference gives NaN).
"""

from __future__ import annotations

from kdx.distill import functional as KF
from kdx.distill.methods.base import Method, MethodContext, register_method, zero_like
from kdx.distill.methods.pkt import final_taps, pooled_pair
from kdx.distill.methods.repdistiller import hook_names, needs_final
from kdx.options import Option


@register_method
class RKD(Method):
    name = "rkd"
    help = "relational KD: distance and angle relations of the pooled features"
    paper = "Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019"
    needs_teacher = True
    uses_features = True
    options = (
        Option("rkd_weight", float, 1.0, "Weight of the RKD loss (authors' configs).", low=0, panel="Method"),
        Option("rkd_distance", float, 25.0, "RKD weight of the distance term.", low=0, panel="Method"),
        Option("rkd_angle", float, 50.0, "RKD weight of the angle term.", low=0, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.tap_s, self.tap_t = final_taps(ctx)
        self.wants_final = needs_final(self.tap_s, self.tap_t)

    def stages(self):
        return hook_names([self.tap_s]), hook_names([self.tap_t])

    def loss(self, out):
        if out.logits.shape[0] < 2:
            return {"rkd": zero_like(out.logits)}
        f_s, f_t = pooled_pair(out, self.tap_s, self.tap_t)
        value = KF.rkd(f_s, f_t, self.params["rkd_distance"], self.params["rkd_angle"])
        return {"rkd": self.params["rkd_weight"] * value}
