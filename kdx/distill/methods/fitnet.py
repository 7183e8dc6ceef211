"""``fitnet``: Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015.

``fitnet_weight * MSE(r(f_s), f_t)`` (mean over all elements) between the teacher's hint and a
regressor ``r`` of the student's guided layer, both RepDistiller's ``feat[fitnet_hint_layer]``
(:mod:`.repdistiller`: 0 the stem, 1..k the stages). ``r`` is RepDistiller's ``ConvReg``:
conv (3x3 stride 2 when the student map is twice the teacher's height, 4x4 stride-2 transposed
conv when half of it, else a valid conv of kernel ``1 + H_s - H_t`` by ``1 + W_s - W_t``),
BatchNorm, ReLU; built in :meth:`FitNet.setup` from the probe shapes, trained with the student
(no separate hint phase, as RepDistiller). Defaults: the authors' configs (others_kd/fitnet:
other_loss_weight 100, hint_layer 2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from kdx.distill.methods.base import MethodContext, register_method
from kdx.distill.methods.repdistiller import TapMethod, describe, feature_taps
from kdx.errors import KdxError
from kdx.options import Option


def conv_regressor(s_shape, t_shape) -> nn.Module:
    """RepDistiller's ``ConvReg`` from (N, C, H, W) shapes, or None when no case of it applies."""
    (_, cs, hs, ws), (_, ct, ht, wt) = s_shape, t_shape
    if hs == 2 * ht:
        conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
    elif 2 * hs == ht:
        conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
    elif hs >= ht and ws >= wt:
        conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
    else:
        return None
    return nn.Sequential(conv, nn.BatchNorm2d(ct), nn.ReLU())


@register_method
class FitNet(TapMethod):
    name = "fitnet"
    help = "FitNets hint: a conv regressor of a student stage fits the teacher's stage (MSE)"
    paper = "Romero, Ballas, Kahou, Chassang, Gatta, Bengio. FitNets: Hints for Thin Deep Nets. ICLR 2015"
    options = (
        Option("fitnet_weight", float, 100.0, "Weight of the hint loss (authors' configs).", low=0, panel="Method"),
        Option("fitnet_hint_layer", int, 2, "Hinted feature of both networks: 0 the stem, 1..k the stages.",
               low=0, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.regressor = None
        if ctx.student is not None and ctx.teacher is not None:
            self.use_taps([self._tap(ctx.student, "student")], [self._tap(ctx.teacher, "teacher")])
        else:
            self.use_taps([None], [None])

    def _tap(self, model: nn.Module, side: str):
        f0, mids = feature_taps(model)
        feats = [f0] + mids
        k = int(self.params["fitnet_hint_layer"])
        if k >= len(feats) or feats[k] is None:
            have = f"0..{len(mids)}" if f0 is not None else f"1..{len(mids)}"
            raise KdxError(f"--fitnet-hint-layer {k} is not a feature of {side} {type(model).__name__} "
                           f"(it has {have}: 0 the stem, then {', '.join(t.label for t in mids)})")
        return feats[k]

    def setup(self, probe):
        [(f_s, f_t)] = self.pairs(probe)
        with self.connector_rng():
            reg = conv_regressor(f_s.shape, f_t.shape)
        if reg is None:
            raise KdxError(f"fitnet cannot regress student {self.taps_s[0].label} ({describe(f_s)}) onto teacher "
                           f"{self.taps_t[0].label} ({describe(f_t)}): the student map must be at least as large, "
                           f"or exactly half as large (choose another --fitnet-hint-layer)")
        self.regressor = reg.to(f_s.device)

    def loss(self, out):
        self.check_setup(self.regressor)
        [(f_s, f_t)] = self.pairs(out)
        hint = F.mse_loss(self.regressor(f_s).float(), f_t.float())
        return {"fitnet": self.params["fitnet_weight"] * hint}
