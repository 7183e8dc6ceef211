"""``ce``: cross-entropy with the labels, the term every student and explainer trains with.

``ce_weight * CE(logits, y; label smoothing epsilon)``. The weight is the one given with
``--ce-weight``, else the smallest one the chosen methods ask for (kd: 0.1, as the official
KDExplainer code; ls: 0, since ls replaces it), else 1. A weight of 0 drops the term.
"""

from kdx.distill import functional as KF
from kdx.distill.methods.base import Method, MethodContext, register_method
from kdx.options import Option


@register_method
class CrossEntropy(Method):
    name = "ce"
    reads = ("label_smoothing",)  # run values besides its own options
    help = "cross-entropy with the labels"
    paper = ""
    commands = frozenset({"student", "explainer"})
    options = (
        Option("ce_weight", float, None, "Weight of the cross-entropy [1, or the smallest weight the chosen methods "
               "ask for: 0.1 with kd, 0 with ls].", nullable=True, low=0, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.weight = float(ctx.params["ce_weight"])
        self.smoothing = float(ctx.params.get("label_smoothing") or 0.0)
        self.params["label_smoothing"] = self.smoothing

    def loss(self, out):
        return {"ce": self.weight * KF.ce(out.logits, out.y, self.smoothing)}
