"""``ls``: label-smoothed cross-entropy (Szegedy et al., 2016, "Rethinking the Inception
Architecture"), the explainer's "LS" objective of the paper.

``CE(logits, y)`` with the targets ``(1 - eps) * onehot + eps / C``; ``eps`` is
``--label-smoothing``, 0.1 when unset ([kdx]: the paper does not give it). It replaces the
plain CE term (it asks for a CE weight of 0).
"""

from kdx.distill import functional as KF
from kdx.distill.methods.base import Method, MethodContext, register_method

DEFAULT_EPSILON = 0.1


@register_method
class LabelSmoothing(Method):
    name = "ls"
    reads = ("label_smoothing",)  # run values besides its own options
    help = "label-smoothed cross-entropy (--label-smoothing, 0.1 when unset)"
    paper = "Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016"
    commands = frozenset({"explainer"})
    ce_weight = 0.0

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        eps = ctx.params.get("label_smoothing")
        self.smoothing = DEFAULT_EPSILON if eps is None else float(eps)
        self.params["label_smoothing"] = self.smoothing

    def loss(self, out):
        return {"ls": KF.ce(out.logits, out.y, self.smoothing)}
