"""``vid``: Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

As RepDistiller's ``VIDLoss`` (the authors' code), on every intermediate feature pair
``(f_s, f_t)`` of RepDistiller's list (``feat[1:-1]``: see :mod:`.repdistiller`; pairs are
zipped, so a deeper network's extra stages are left out, as in the reference):

* the larger map is average-pooled to the smaller one's size;
* a regressor ``mu = conv1x1(C_s->C_t) - ReLU - conv1x1(C_t->C_t) - ReLU - conv1x1(C_t->C_t)``
  (no biases, trained) predicts the teacher map, with a per-channel variance
  ``sigma2_c = softplus(a_c) + eps`` (``a`` trained, initialised so that ``sigma2 = 5``;
  ``eps = 1e-5``);
* ``L = mean over (n, c, h, w) of 0.5 * ((mu - f_t)^2 / sigma2_c + log sigma2_c)``;

the method's loss is ``vid_weight * sum over pairs of L`` (weight 1: the authors' configs
and RepDistiller's script).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdx.distill.functional import pool_to_smaller
from kdx.distill.methods.base import MethodContext, register_method
from kdx.distill.methods.repdistiller import TapMethod, feature_taps
from kdx.errors import KdxError
from kdx.options import Option

INIT_PRED_VAR = 5.0
EPS = 1e-5


def vid_nll(mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = EPS) -> Tensor:
    """``mean(0.5 * ((mean - target)^2 / v + log v))`` with ``v_c = softplus(log_scale_c) + eps``."""
    var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target) ** 2 / var + torch.log(var))).mean()


class VIDRegressor(nn.Module):
    """RepDistiller's VID regressor (three bias-free 1x1 convs) and its variance parameter."""

    def __init__(self, c_in: int, c_mid: int, c_out: int):
        super().__init__()
        self.regressor = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(c_mid, c_out, 1, bias=False))
        self.log_scale = nn.Parameter(torch.full((c_out,), math.log(math.exp(INIT_PRED_VAR - EPS) - 1.0)))

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        f_s, f_t = pool_to_smaller(f_s, f_t)
        return vid_nll(self.regressor(f_s), f_t, self.log_scale)


@register_method
class VID(TapMethod):
    name = "vid"
    help = "variational information distillation on every intermediate stage (trained regressors)"
    paper = "Ahn, Hu, Damianou, Lawrence, Dai. Variational Information Distillation for Knowledge Transfer. CVPR 2019"
    options = (Option("vid_weight", float, 1.0, "Weight of the VID loss (authors' configs).", low=0, panel="Method"),)

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        _, s_taps = feature_taps(ctx.student)
        _, t_taps = feature_taps(ctx.teacher)
        n = min(len(s_taps), len(t_taps))  # paired by position, as RepDistiller's zip
        self.use_taps(s_taps[:n], t_taps[:n])
        if not n:
            raise KdxError("vid needs intermediate stages on both student and teacher")
        self.regressors = None

    def setup(self, probe):
        with self.connector_rng():
            self.regressors = nn.ModuleList(VIDRegressor(fs.shape[1], ft.shape[1], ft.shape[1])
                                            for fs, ft in self.pairs(probe))
        self.to(probe.logits.device)

    def loss(self, out):
        self.check_setup(self.regressors)
        terms = [reg(fs, ft) for reg, (fs, ft) in zip(self.regressors, self.pairs(out))]
        return {"vid": self.params["vid_weight"] * torch.stack(terms).sum()}
