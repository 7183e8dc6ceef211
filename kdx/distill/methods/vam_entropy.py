"""``vam_entropy``: ``lambda * mean over classes of the VAM attention entropy`` at the current
soft routing (KDEXPLAINER.md section 5); added by ``--vam-entropy LAMBDA`` (> 0) with ``--vam``.
"""

from kdx.distill.methods.base import Method, register_method
from kdx.options import Option


@register_method
class VamEntropy(Method):
    name = "vam_entropy"
    help = "entropy of the virtual attention module's routing (needs --vam)"
    selectable = False
    options = (
        Option("vam_entropy", float, 0.0, "Weight lambda of the mean attention entropy.", low=0, panel="VAM"),
    )

    def loss(self, out):
        return {"vam_entropy": self.params["vam_entropy"] * out.model.attention_entropy()}
