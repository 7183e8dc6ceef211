"""The virtual attention module (VAM, KDEXPLAINER.md section 5, part 1) and its cost.

``VAMStudent(student, blocks=K)`` wraps any zoo model without editing it: the student's
final feature map (``forward_features``, D channels) is split into K *virtual experts* of
``d = D / K`` channels; class subtask c attends over the K blocks with the explainer's own
routing function (``kdx.models.routed.routing.route`` on a learnable C x K matrix, U(0, 1)
init, ``tau = tau0 / epoch``); the class logit is

    logit_c = w_c . (sum_k a_ck * pooled block k) + b_c        (w: C x d, b: C)

computed batched as ``S = P W^T`` (P: N x K x d pooled blocks, S: N x K x C) and
``logit_c = sum_k a_ck S[:, k, c] + b_c`` (no loop over classes). It replaces the
student's linear classifier (``reset_classifier(0)``), so the head has C*K + C*d + C
parameters instead of C*D + C and costs C*D + C*K multiply-adds per image instead of C*D.

Routing modes: ``routing`` is the mode used at evaluation ("soft" | "hard" | "gumbel");
training always routes softly (``hard`` has no gradient), so ``routing = "hard"`` means
*soft while training, hard at evaluation* (``--vam-hard-eval``).

Duck-typed interface shared with :class:`kdx.models.routed.KDExplainer` (analysis commands):
``routing``, ``tau``, ``num_classes``, ``experts`` ([K]), ``routing_logits()`` ([R]),
``routing_weights(mode, tau)`` ([a]), ``forward(x, return_experts=True)`` (logits and the
block features as ``(N, K, d, h, w)``), ``expert_param_groups()`` (see its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdx.errors import KdxError
from kdx.models.base import init_linear
from kdx.models.registry import create_model
from kdx.seeding import forked_rng
from kdx.models.routed.routing import route, routing_entropy, routing_mode

DEFAULT_BLOCKS = 8  # [kdx] as many virtual experts as the explainer's last expert layer


def default_blocks(num_features: int, preferred: int = DEFAULT_BLOCKS) -> int:
    """K for a feature map of D channels: ``preferred`` (8) if it divides D, else the largest divisor of D below it."""
    d = int(num_features)
    for k in range(min(preferred, d), 0, -1):
        if d % k == 0:
            return k
    return 1


def attention_head_logits(pooled: Tensor, head: nn.Linear, a: Tensor, blocks: int) -> Tensor:
    """``logit_c = w_c . (sum_k a_ck * block_k) + b_c`` for pooled features (N, D) split into
    ``blocks`` blocks of d = D / K channels; ``head``: Linear(d, C); ``a``: (C, K). Batched:
    ``S = P W^T`` (N, K, C), then ``sum_k a_ck S[:, k, c]``."""
    P = pooled.reshape(pooled.shape[0], int(blocks), -1)  # (N, K, d)
    S = torch.matmul(P, head.weight.t().to(P.dtype))  # (N, K, C): w_c . block k
    return torch.einsum("nkc,ck->nc", S, a.to(S.dtype)) + head.bias.to(S.dtype)


class VirtualAttentionHead(nn.Module):
    """The virtual-attention head on its own: a C x K routing matrix (U(0, 1)) and Linear(D/K, C).

    ``--vam head`` with ``--vam-head aux`` [kdx] trains it beside the student's own linear
    classifier, on the same pooled final features, as a training-time auxiliary output (its
    loss in :mod:`kdx.distill.methods.vam_head`); it is dropped at inference, so the saved
    student is the plain zoo model. Routing as the explainer's (``route``, tau = tau0 / epoch).
    """

    def __init__(self, num_features: int, num_classes: int, blocks: int | None = None, tau: float = 10.0,
                 linear_init: str = "default"):
        super().__init__()
        D, C = int(num_features), int(num_classes)
        K = default_blocks(D) if blocks is None else int(blocks)
        if K < 1 or D % K:
            raise KdxError(f"--vam-blocks {K} does not divide the {D} feature channels")
        self.num_classes, self.num_features, self.blocks, self.block_channels = C, D, K, D // K
        self.routing_matrix = nn.Parameter(torch.rand(C, K))
        self.head = nn.Linear(D // K, C)
        init_linear(self.head, linear_init)
        self.tau = float(tau)

    def routing_weights(self, mode: str = "soft", tau: float | None = None) -> list[Tensor]:
        return [route(self.routing_matrix, self.tau if tau is None else tau, mode, training=self.training)]

    def attention_entropy(self, mode: str = "soft") -> Tensor:
        return routing_entropy(self.routing_weights(mode)[0].float()).mean()

    def forward(self, pooled: Tensor) -> Tensor:
        return attention_head_logits(pooled, self.head, self.routing_weights()[0], self.blocks)


class VAMStudent(nn.Module):
    """A zoo student whose linear classifier is replaced by the virtual attention head."""

    def __init__(self, student: nn.Module, blocks: int | None = None, tau: float = 10.0, routing: str = "soft"):
        super().__init__()
        for attr in ("forward_features", "num_features", "reset_classifier"):
            if not hasattr(student, attr):
                raise KdxError(f"{type(student).__name__} is not a zoo model (no {attr}); VAM wraps kdx.models")
        D = int(student.num_features)
        K = default_blocks(D) if blocks is None else int(blocks)
        if K < 1 or D % K:
            raise KdxError(f"--vam-blocks {K} does not divide the {D} feature channels of "
                           f"{getattr(student, 'arch', type(student).__name__)}; divisors: "
                           f"{', '.join(str(k) for k in range(1, min(D, 64) + 1) if D % k == 0)}...")
        C = int(student.num_classes)
        linear_init = getattr(student, "linear_init", "default")
        student.reset_classifier(0)  # Identity: its C*D + C parameters leave the state dict
        self.student = student
        self.arch = getattr(student, "arch", type(student).__name__)
        self.num_classes, self.num_features, self.blocks, self.block_channels = C, D, K, D // K
        self.in_channels = getattr(student, "in_channels", None)
        ref = next(student.parameters())
        self.routing_matrix = nn.Parameter(torch.rand(C, K, device=ref.device, dtype=ref.dtype))  # U(0, 1), like the explainer
        self.head = nn.Linear(D // K, C, device=ref.device, dtype=ref.dtype)
        init_linear(self.head, linear_init)  # the student's own classifier init scheme
        self.tau = float(tau)
        self.routing = routing

    # ---------------------------------------------------------------- routing interface
    routing = routing_mode

    @property
    def experts(self) -> list[int]:
        return [self.blocks]

    def routing_logits(self) -> list[nn.Parameter]:
        """[R] with R of shape (C, K): class subtask c over the K virtual experts."""
        return [self.routing_matrix]

    def current_mode(self) -> str:
        """The mode this forward uses: ``routing``, except that training never routes hard."""
        return "soft" if self.training and self.routing == "hard" else self.routing

    def routing_weights(self, mode: str | None = None, tau: float | None = None) -> list[Tensor]:
        """[a] (C x K) under ``mode``/``tau`` (default: the mode of the current forward, ``self.tau``)."""
        mode = self.current_mode() if mode is None else mode
        tau = self.tau if tau is None else tau
        return [route(self.routing_matrix, tau, mode, training=self.training)]

    def attention_entropy(self, mode: str | None = None, tau: float | None = None) -> Tensor:
        """Mean (over classes) routing entropy in nats."""
        return routing_entropy(self.routing_weights(mode, tau)[0].float()).mean()

    def expert_param_groups(self) -> list[list[list[Tensor]]]:
        """Per layer (one), per virtual expert k: the slices ``[weight[k*d:(k+1)*d], bias[...]]`` of
        the last normalisation layer of the student that writes the D final channels (or, if it
        has none, the head weight as a whole for every expert).

        These are views of leaf parameters: ``kdx analyze-conflicts`` reads each subtask's
        gradient through the same view. Block features for feature-level measurements:
        ``forward(x, return_experts=True)`` (docs/train-vam-student.md).
        """
        norm = self.expert_norm()
        d = self.block_channels
        if norm is None:
            return [[[self.head.weight] for _ in range(self.blocks)]]
        return [[[t[k * d:(k + 1) * d] for t in (norm.weight, norm.bias) if t is not None]
                 for k in range(self.blocks)]]

    def expert_norm(self) -> nn.Module | None:
        last = None
        for _, m in self.student.named_modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and getattr(m, "weight", None) is not None:
                n = m.num_features if isinstance(m, nn.BatchNorm2d) else m.num_channels
                if n == self.num_features:
                    last = m
        return last

    # ---------------------------------------------------------------- forward
    def head_logits(self, pooled: Tensor, a: Tensor) -> Tensor:
        """pooled: (N, D); a: (C, K) -> logits (N, C), batched over classes."""
        return attention_head_logits(pooled, self.head, a, self.blocks)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """[kdx] The routing logits train without weight decay (decay would pull the attention to uniform)."""
        return [self.routing_matrix]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.student.forward_features(x)

    def forward_head(self, feat: Tensor) -> Tensor:
        """Logits from the final feature map (N, D, h, w), as ``forward`` computes them."""
        return self.head_logits(F.adaptive_avg_pool2d(feat, 1).flatten(1), self.routing_weights()[0])

    def forward(self, x: Tensor, return_experts: bool = False):
        feat = self.student.forward_features(x)  # (N, D, h, w)
        pooled = F.adaptive_avg_pool2d(feat, 1).flatten(1)
        logits = self.head_logits(pooled, self.routing_weights()[0])
        if return_experts:
            n, _, h, w = feat.shape
            return logits, [feat.reshape(n, self.blocks, self.block_channels, h, w)]
        return logits

    def config_dict(self) -> dict:
        return {"blocks": self.blocks, "block_channels": self.block_channels, "routing": self.routing,
                "tau": float(self.tau)}

    def extra_repr(self) -> str:
        return f"arch={self.arch}, classes={self.num_classes}, D={self.num_features}, K={self.blocks}, " \
               f"routing={self.routing}, tau={self.tau:.4g}"


def wrap_student(arch: str, num_classes: int, in_channels: int, blocks: int | None = None, tau: float = 10.0,
                 routing: str = "soft") -> VAMStudent:
    return VAMStudent(create_model(arch, num_classes=num_classes, in_channels=in_channels), blocks, tau, routing)


def build_vam_student(meta: dict) -> VAMStudent:
    """Checkpoint kind ``vam-student`` (registered in ``kdx.engine.checkpoint.KINDS``)."""
    shape = meta.get("input_shape") or [3, 32, 32]
    vam = meta["vam"]
    return wrap_student(meta["arch"], int(meta["num_classes"]), int(shape[0]), blocks=int(vam["blocks"]),
                        tau=float(vam.get("final_tau", vam.get("tau", 1.0))), routing=vam.get("routing", "soft"))


# ---------------------------------------------------------------- cost


def count_cost(model: nn.Module, input_shape, device="cpu") -> dict:
    """Parameters and multiply-adds of one image's forward (eval mode).

    MACs = FLOPs / 2 as counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
    and matrix products; element-wise ops, normalisation and pooling are not counted, the
    usual convention). The VAM's routing softmax (C x K, once per batch, not per image) is
    not counted either.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *[int(s) for s in input_shape], device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return {"params": int(params), "macs": int(counter.get_total_flops() // 2)}


def vam_cost_rows(arch: str, num_classes: int, input_shape, blocks: int | None = None) -> list[dict]:
    """cost.csv rows: the student with its linear classifier, with the VAM, and the difference."""
    with forked_rng(0, "cost"):  # counting builds models: the run's global RNG must not move
        base = create_model(arch, num_classes=num_classes, in_channels=int(input_shape[0]))
        vam_model = wrap_student(arch, num_classes, int(input_shape[0]), blocks=blocks)
    D = int(base.num_features)
    plain = count_cost(base, input_shape)
    vam = count_cost(vam_model, input_shape)
    K = vam_model.blocks
    common = {"arch": arch, "num_classes": num_classes, "input_shape": "x".join(str(int(s)) for s in input_shape),
              "D": D, "K": K}
    rows = [dict(common, variant="student", head_params=num_classes * D + num_classes, **plain),
            dict(common, variant="student+vam",
                 head_params=num_classes * K + num_classes * (D // K) + num_classes, **vam)]
    delta = {"params": vam["params"] - plain["params"], "macs": vam["macs"] - plain["macs"]}
    rows.append(dict(common, variant="vam-overhead", head_params=rows[1]["head_params"] - rows[0]["head_params"],
                     params=delta["params"], macs=delta["macs"],
                     params_pct=100.0 * delta["params"] / plain["params"], macs_pct=100.0 * delta["macs"] / plain["macs"]))
    return rows
