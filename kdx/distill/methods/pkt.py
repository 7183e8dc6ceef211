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
from kdx.distill.methods.base import Method, MethodContext, register_method
from kdx.distill.methods.repdistiller import final_tap, hook_names, needs_final, pooled
from kdx.options import Option


def final_taps(ctx: MethodContext):
    """The student's and the teacher's final-map taps (None without the models)."""
    if ctx.student is None or ctx.teacher is None:
        return None, None
    return final_tap(ctx.student), final_tap(ctx.teacher)


def pooled_pair(out, tap_s, tap_t):
    """RepDistiller's ``feat[-1]`` of the student and the teacher: the pooled final maps (N, D)."""
    return pooled(tap_s.read(out.features_s, out.feat_s)), pooled(tap_t.read(out.features_t, out.feat_t))


@register_method
class PKT(Method):
    name = "pkt"
    help = "probabilistic knowledge transfer on the pooled features"
    paper = "Passalis, Tefas. Learning Deep Representations with Probabilistic Knowledge Transfer. ECCV 2018"
    needs_teacher = True
    uses_features = True
    options = (
        Option("pkt_weight", float, 30000.0, "Weight of the PKT loss (authors' configs).", low=0, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.tap_s, self.tap_t = final_taps(ctx)
        self.wants_final = needs_final(self.tap_s, self.tap_t)

    def stages(self):
        return hook_names([self.tap_s]), hook_names([self.tap_t])

    def loss(self, out):
        return {"pkt": self.params["pkt_weight"] * KF.pkt(*pooled_pair(out, self.tap_s, self.tap_t))}
