"""``dkd``: Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR 2022.

``dkd_weight * min(epoch / dkd_warmup, 1) * (alpha * TCKD + beta * NCKD)`` with TCKD the KL of
the binary target/non-target distributions and NCKD the KL among the non-target classes, each
at temperature T and times T^2 (:func:`kdx.distill.functional.dkd`). Defaults are mdistiller's
CIFAR-100 ones (``CFG.DKD``: CE weight 1, alpha 1, beta 8, T 4, 20 warm-up epochs, epochs
counted from 1); ``dkd_weight`` (1) is kdx's handle on the whole term. Logits only, so both
training commands offer it.
"""

from kdx.distill import functional as KF
from kdx.distill.methods.base import Method, register_method
from kdx.options import Option


@register_method
class DKD(Method):
    name = "dkd"
    help = "decoupled KD: alpha * TCKD + beta * NCKD against the frozen teacher, linear warm-up"
    paper = "Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022"
    commands = frozenset({"student", "explainer"})
    needs_teacher = True
    ce_weight = 1.0
    options = (
        Option("dkd_weight", float, 1.0, "Weight of the DKD term (after the warm-up factor).", low=0,
               panel="Method"),
        Option("dkd_alpha", float, 1.0, "DKD weight alpha of the target-class term TCKD.", low=0, panel="Method"),
        Option("dkd_beta", float, 8.0, "DKD weight beta of the non-target-class term NCKD.", low=0,
               panel="Method"),
        Option("dkd_temperature", float, 4.0, "DKD temperature T.", low=0, low_open=True, panel="Method"),
        Option("dkd_warmup", int, 20, "Epochs over which the DKD term ramps up linearly (epoch / warmup); "
               "0 = none.", low=0, panel="Method"),
    )

    def warmup_factor(self, epoch: int) -> float:
        """mdistiller's ``min(epoch / warmup, 1)`` (epochs counted from 1)."""
        w = int(self.params["dkd_warmup"])
        return 1.0 if w <= 0 else min(float(epoch) / w, 1.0)

    def loss(self, out):
        value = KF.dkd(out.logits, out.teacher_logits, out.y, self.params["dkd_alpha"], self.params["dkd_beta"],
                       self.params["dkd_temperature"])
        return {"dkd": self.params["dkd_weight"] * self.warmup_factor(out.epoch) * value}
