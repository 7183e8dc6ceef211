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
from torch import Tensor, nn

from kdx.distill.methods.base import Method, MethodContext, register_method
from kdx.distill.methods.repdistiller import connector_rng, describe, feature_taps, hook_names, needs_final
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
class FitNet(Method):
    name = "fitnet"
    help = "FitNets hint: a conv regressor of a student stage fits the teacher's stage (MSE)"
    paper = "Romero, Ballas, Kahou, Chassang, Gatta, Bengio. FitNets: Hints for Thin Deep Nets. ICLR 2015"
    needs_teacher = True
    uses_features = True
    options = (
        Option("fitnet_weight", float, 100.0, "Weight of the hint loss (authors' configs).", low=0, panel="Method"),
        Option("fitnet_hint_layer", int, 2, "Hinted feature of both networks: 0 the stem, 1..k the stages.",
               low=0, panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self._seed = int(ctx.params.get("seed", 0))
        self.tap_s = self.tap_t = None
        self.regressor = None
        if ctx.student is not None and ctx.teacher is not None:
            self.tap_s = self._tap(ctx.student, "student")
            self.tap_t = self._tap(ctx.teacher, "teacher")
        self.wants_final = needs_final(self.tap_s, self.tap_t)

    def _tap(self, model: nn.Module, side: str):
        f0, mids = feature_taps(model)
        feats = [f0] + mids
        k = int(self.params["fitnet_hint_layer"])
        if k >= len(feats) or feats[k] is None:
            have = f"0..{len(mids)}" if f0 is not None else f"1..{len(mids)}"
            raise KdxError(f"--fitnet-hint-layer {k} is not a feature of {side} {type(model).__name__} "
                           f"(it has {have}: 0 the stem, then {', '.join(t.label for t in mids)})")
        return feats[k]

    def stages(self):
        return hook_names([self.tap_s]), hook_names([self.tap_t])

    def _pair(self, out) -> tuple[Tensor, Tensor]:
        return self.tap_s.read(out.features_s, out.feat_s), self.tap_t.read(out.features_t, out.feat_t)

    def setup(self, probe):
        f_s, f_t = self._pair(probe)
        with connector_rng(self._seed, self.name):
            reg = conv_regressor(f_s.shape, f_t.shape)
        if reg is None:
            raise KdxError(f"fitnet cannot regress student {self.tap_s.label} ({describe(f_s)}) onto teacher "
                           f"{self.tap_t.label} ({describe(f_t)}): the student map must be at least as large, "
                           f"or exactly half as large (choose another --fitnet-hint-layer)")
        self.regressor = reg.to(f_s.device)

    def loss(self, out):
        if self.regressor is None:
            raise KdxError("fitnet: setup() did not run (the task needs a probe forward before training)")
        f_s, f_t = self._pair(out)
        hint = F.mse_loss(self.regressor(f_s).float(), f_t.float())
        return {"fitnet": self.params["fitnet_weight"] * hint}
