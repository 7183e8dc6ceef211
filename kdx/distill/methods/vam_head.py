"""``vam_head``: the virtual-attention head as a training-time auxiliary output ([kdx],
``--vam head`` / ``tree+head`` with ``--vam-head aux``, the default).

The student keeps its own linear classifier; a :class:`kdx.models.routed.vam.VirtualAttentionHead`
reads the same pooled final features (``forward_features``, D channels, split into K virtual
experts) and is trained with

    W * (0.1 * CE(z_aux, y) + 0.9 * KL(p_t^T || p_aux^T) * T^2)      (with a teacher)
    W * CE(z_aux, y)                                                  (without one)

(the official KD weights and ``--kd-temperature``), plus ``--vam-entropy`` times its mean
attention entropy. Its gradient reaches the backbone; the head itself is dropped at inference
(not in ``model.safetensors``), so the deployed student costs nothing extra. The routing
logits get no weight decay, as the replacing head's ([kdx]); tau = tau0 / epoch.
"""

import torch
import torch.nn.functional as F

from kdx.distill import functional as KF
from kdx.distill.methods.base import Method, MethodContext, register_method
from kdx.options import Option
from kdx.seeding import forked_rng

AUX_CE, AUX_KD = 0.1, 0.9  # the official KD weights (KDEXPLAINER.md section 4)


@register_method
class VamHead(Method):
    name = "vam_head"
    reads = ("seed", "vam_tau0", "vam_blocks", "kd_temperature", "vam_entropy")  # run values besides its own options
    help = "virtual-attention head as an auxiliary output beside the classifier (--vam head, --vam-head aux)"
    paper = "kdx's reading of the VAM of Xue et al., IJCAI 2021 (KDEXPLAINER.md section 5)"
    selectable = False
    wants_final = True
    wants_final_teacher = False  # the student's final features only: the teacher's logits stay cacheable
    options = (
        Option("vam_head_weight", float, 0.5, "Weight W of the auxiliary head's loss (--vam-head aux).", low=0,
               panel="VAM"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        from kdx.models.routed.vam import VirtualAttentionHead
        from kdx.models.routed.routing import tau_at

        p = ctx.params
        self.tau0 = float(p.get("vam_tau0", 10.0))
        self.temperature = float(p.get("kd_temperature", 4.0))
        self.entropy_weight = float(p.get("vam_entropy", 0.0))
        self._tau_at = tau_at
        student = ctx.student
        with forked_rng(int(p.get("seed", 0)), self.name):  # the global RNG stays where it was
            self.head = VirtualAttentionHead(student.num_features, ctx.num_classes, p.get("vam_blocks"),
                                             tau=self.tau0, linear_init=getattr(student, "linear_init", "default"))

    def attention_module(self):
        return self.head

    def no_decay_parameters(self) -> list:
        return [self.head.routing_matrix]

    def on_epoch_start(self, epoch: int) -> None:
        self.head.tau = self._tau_at(epoch, self.tau0)

    def loss(self, out):
        pooled = F.adaptive_avg_pool2d(out.feat_s, 1).flatten(1)
        z = self.head(pooled).float()
        loss = KF.ce(z, out.y)
        if out.teacher_logits is not None:
            loss = AUX_CE * loss + AUX_KD * KF.kd(z, out.teacher_logits.float(), self.temperature)
        losses = {"vam_head": self.params["vam_head_weight"] * loss}
        if self.entropy_weight > 0:
            losses["vam_entropy"] = self.entropy_weight * self.head.attention_entropy()
        return losses

    def record(self) -> dict:
        return dict(super().record(), blocks=self.head.blocks, tau0=self.tau0, final_tau=float(self.head.tau),
                    saved=False)
