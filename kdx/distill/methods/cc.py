"""``cc``: Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

As RepDistiller's ``Correlation`` (the authors' code as shared with RepDistiller) with its
``LinearEmbed`` connectors: ``e_s = W_s pooled_s + b_s``, ``e_t = W_t pooled_t + b_t`` (both
trained, size ``cc_feat_dim``; ``pooled`` the global average of the final feature maps),
``delta = |e_s - e_t|`` and

    L = mean over i = 1..B-1 of sum_d delta[i-1, d] * delta[i, d]

(consecutive samples of the batch), the method's loss ``cc_weight * L``. Defaults: the
authors' configs (others_kd/cc: other_loss_weight 0.02, feat_dim 128), as RepDistiller's
script. [kdx] A batch of one sample has no pair: the loss is 0 (the reference gives NaN).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdx.distill.methods.base import MethodContext, register_method, zero_like
from kdx.distill.methods.repdistiller import TapMethod, final_tap
from kdx.options import Option


def correlation_congruence(e_s: Tensor, e_t: Tensor) -> Tensor:
    """``mean_i sum_d |e_s - e_t|[i, d] * |e_s - e_t|[i+1, d]`` over consecutive rows."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_method
class CC(TapMethod):
    name = "cc"
    help = "correlation congruence on linear embeddings of the pooled features"
    paper = "Peng et al. Correlation Congruence for Knowledge Distillation. ICCV 2019"
    options = (
        Option("cc_weight", float, 0.02, "Weight of the CC loss (authors' configs).", low=0, panel="Method"),
        Option("cc_feat_dim", int, 128, "CC embedding size.", low=1, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.use_taps([final_tap(ctx.student)], [final_tap(ctx.teacher)])
        self.embed_s = self.embed_t = None

    def setup(self, probe):
        d = int(self.params["cc_feat_dim"])
        p_s, p_t = self.pooled_pair(probe)
        with self.connector_rng():
            self.embed_s = nn.Linear(p_s.shape[1], d)
            self.embed_t = nn.Linear(p_t.shape[1], d)
        self.to(p_s.device)

    def loss(self, out):
        self.check_setup(self.embed_s)
        if out.logits.shape[0] < 2:
            return {"cc": zero_like(out.logits)}
        p_s, p_t = self.pooled_pair(out)
        e_s, e_t = self.embed_s(p_s), self.embed_t(p_t)
        return {"cc": self.params["cc_weight"] * correlation_congruence(e_s, e_t)}
