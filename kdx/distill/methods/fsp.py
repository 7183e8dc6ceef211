"""``fsp``: Yim, Joo, Bae and Kim, "A Gift from Knowledge Distillation: Fast Optimization,
Network Minimization and Transfer Learning", CVPR 2017.

As RepDistiller's ``FSP`` with its pre-training phase (``helper/pretrain.py``) and the
authors' configs (others_kd/fsp), on RepDistiller's features ``f0..fk`` (stem and every
stage, :mod:`.repdistiller`) of each network:

* FSP matrix of consecutive features ``(b, t) = (f_i, f_i+1)``: the larger map is
  average-pooled to the smaller one's size, then ``G[n, c, d] = mean over (h, w) of
  b[n, c, h, w] * t[n, d, h, w]`` (C_b x C_t per sample);
* ``L = sum over i of mean((G_s,i - G_t,i)^2)``. Paired features must have equal channel
  counts (the matrices are compared element-wise): otherwise a one-line error names the
  stages, their channels and sizes.
* **Initialisation phase** (:meth:`FSP.initialise`): the student's feature layers (every
  parameter but the classifier) are trained on ``L`` alone for ``fsp_init_epochs`` (30)
  epochs of SGD (lr ``fsp_init_lr`` 0.05, momentum 0.9, weight decay 5e-4), the student in
  train mode (its BatchNorm statistics move, as the reference's ``init_modules.train()``),
  the teacher frozen.
* **Main phase**: the reference adds nothing (RepDistiller's and KDExplainer's training loops
  return 0 for FSP; its ``fsp_weight`` 50 of the configs multiplies that zero): the student
  then trains on CE (plus any other method). ``--fsp-main`` [kdx] adds ``fsp_weight * L``
  to every training step as well.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdx.distill.functional import pool_to_smaller
from kdx.distill.methods.base import MethodContext, register_method, zero_like
from kdx.distill.methods.repdistiller import TapMethod, describe, feat_modules, feature_taps, pretrain
from kdx.errors import KdxError
from kdx.options import Option


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """``G[n, c, d] = mean_hw bottom[n, c] * top[n, d]`` after pooling the larger map to the smaller."""
    bottom, top = pool_to_smaller(bottom, top)
    return torch.einsum("nchw,ndhw->ncd", bottom, top) / (bottom.shape[2] * bottom.shape[3])


def fsp_loss(feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
    """``sum_i mean((G(f_s,i, f_s,i+1) - G(f_t,i, f_t,i+1))^2)``."""
    terms = [(fsp_matrix(feats_s[i], feats_s[i + 1]) - fsp_matrix(feats_t[i], feats_t[i + 1])).pow(2).mean()
             for i in range(len(feats_s) - 1)]
    return torch.stack(terms).sum()


@register_method
class FSP(TapMethod):
    name = "fsp"
    help = "flow of solution procedure: FSP matrices of consecutive stages, with a pre-training phase"
    paper = ("Yim, Joo, Bae, Kim. A Gift from Knowledge Distillation: Fast Optimization, Network Minimization "
             "and Transfer Learning. CVPR 2017")
    # [kdx] not offered to the explainer: FSP compares (C_{i-1} x C_i) matrices of consecutive
    # stages, stem included, element-wise, so it needs a stem and equal channel counts on both
    # sides; the explainer's experts read the image (no stem at 32 px) and its concatenated
    # expert layers have E x c channels, not the teacher's.
    commands = frozenset({"student"})
    options = (
        Option("fsp_weight", float, 50.0, "Weight of the FSP loss in the main phase (authors' configs; "
               "used only with --fsp-main).", low=0, panel="Method"),
        Option("fsp_init_epochs", int, 30, "Epochs of FSP pre-training of the student before epoch 1.", low=0,
               panel="Method"),
        Option("fsp_init_lr", float, 0.05, "SGD learning rate of the FSP pre-training.", low=0, low_open=True,
               panel="Method"),
        Option("fsp_main", bool, False, "[kdx] Also add fsp_weight * FSP loss to every training step (the "
               "reference trains on FSP only in the pre-training).", panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        taps = {}
        for side, model in (("student", ctx.student), ("teacher", ctx.teacher)):
            f0, mids = feature_taps(model)
            if f0 is None:
                raise KdxError(f"fsp cannot find the stem output of {side} {type(model).__name__}")
            taps[side] = [f0] + mids
        self.use_taps(taps["student"], taps["teacher"])
        if len(self.taps_s) != len(self.taps_t):
            raise KdxError(f"fsp needs as many stages in student and teacher: {len(self.taps_s) - 1} vs "
                           f"{len(self.taps_t) - 1} (plus the stem)")
        self.init_loss: list[float] = []

    def _features(self, out) -> tuple[list[Tensor], list[Tensor]]:
        return ([t.read(out.features_s, out.feat_s) for t in self.taps_s],
                [t.read(out.features_t, out.feat_t) for t in self.taps_t])

    def setup(self, probe):
        feats_s, feats_t = self._features(probe)
        bad = [f"student {ts.label} ({describe(fs)}) vs teacher {tt.label} ({describe(ft)})"
               for ts, tt, fs, ft in zip(self.taps_s, self.taps_t, feats_s, feats_t) if fs.shape[1] != ft.shape[1]]
        if bad:
            raise KdxError("fsp needs equal channel counts of paired stages (FSP matrices are compared "
                           "element-wise): " + "; ".join(bad))

    def initialise(self, task, loader, runtime) -> None:
        """Train the student's feature layers on the FSP loss alone (RepDistiller ``init``)."""
        modules = feat_modules(task.zoo_model)  # RepDistiller: model_s.get_feat_modules(), only those train
        params = [p for m in modules for p in m.parameters()]

        def step(x, y):
            return fsp_loss(*self._features(task.outputs(x, y)))

        self.init_loss = pretrain(task, loader, runtime, params, modules, step,
                                  self.params["fsp_init_epochs"], self.params["fsp_init_lr"])

    def loss(self, out):
        if not self.params["fsp_main"]:
            return {"fsp": zero_like(out.logits)}
        return {"fsp": self.params["fsp_weight"] * fsp_loss(*self._features(out))}

    def record(self) -> dict:
        return super().record() | {"init_loss": list(self.init_loss)}
