"""``rkd``: Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019.

``rkd_weight * (w_dist * L_dist + w_angle * L_angle)`` on the batch's pooled features
(:func:`kdx.distill.functional.rkd`: smooth-L1 between the mean-normalised distance matrices
and between the triplet angle cosines), RepDistiller's ``feat[-1]`` (as ``pkt``). Defaults:
the authors' configs (others_kd/rkd: other_loss_weight 1, w_d 25, w_a 50). [kdx] A batch of one
sample has no pair: the loss is 0 (the reference gives NaN).
"""

from __future__ import annotations

from kdx.distill import functional as KF
from kdx.distill.methods.base import register_method, zero_like
from kdx.distill.methods.pkt import FinalMapMethod
from kdx.options import Option


@register_method
class RKD(FinalMapMethod):
    name = "rkd"
    help = "relational KD: distance and angle relations of the pooled features"
    paper = "Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019"
    options = (
        Option("rkd_weight", float, 1.0, "Weight of the RKD loss (authors' configs).", low=0, panel="Method"),
        Option("rkd_distance", float, 25.0, "RKD weight of the distance term.", low=0, panel="Method"),
        Option("rkd_angle", float, 50.0, "RKD weight of the angle term.", low=0, panel="Method"),
    )

    def loss(self, out):
        if out.logits.shape[0] < 2:
            return {"rkd": zero_like(out.logits)}
        f_s, f_t = self.pooled_pair(out)
        value = KF.rkd(f_s, f_t, self.params["rkd_distance"], self.params["rkd_angle"])
        return {"rkd": self.params["rkd_weight"] * value}
