"""``kd``: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015).

``kd_weight * KL(p_t^T || p_s^T) * T^2`` (batchmean), with CE at weight 0.1: the official
KDExplainer values (0.9 / 0.1, T = 4).
"""

from kdx.distill import functional as KF
from kdx.distill.methods.base import Method, register_method
from kdx.options import Option


@register_method
class KD(Method):
    name = "kd"
    help = "Hinton KD: KL(p_t^T || p_s^T) * T^2 against the frozen teacher"
    paper = "Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. NIPS workshop 2015"
    commands = frozenset({"student", "explainer"})
    needs_teacher = True
    ce_weight = 0.1
    options = (
        Option("kd_weight", float, 0.9, "Weight of the KD term KL * T^2.", low=0, panel="Method"),
        Option("kd_temperature", float, 4.0, "KD temperature T.", low=0, low_open=True, panel="Method"),
    )

    def loss(self, out):
        return {"kd": self.params["kd_weight"] * KF.kd(out.logits, out.teacher_logits, self.params["kd_temperature"])}
