"""``ft``: Kim, Park and Kwak, "Paraphrasing Complex Network: Network Compression via Factor
Transfer", NeurIPS 2018.

As RepDistiller (``distiller_zoo/FT.py``, ``models/util.py``, ``helper/pretrain.py``) and the
authors' configs (others_kd/ft), on the last intermediate feature ``f = feat[-2]`` of each
network (:mod:`.repdistiller`):

* **paraphraser** on the teacher's ``f`` (C_t channels): encoder ``conv3x3(C_t->C_t), conv3x3(C_t->k C_t),
  conv3x3(k C_t->k C_t)``, decoder the three mirrored ``ConvTranspose2d``, each followed by
  LeakyReLU(0.1), no BatchNorm, ``k = 0.5``. **Initialisation phase** (:meth:`FT.initialise`):
  trained alone to reconstruct ``f_t`` (MSE) for ``ft_init_epochs`` (30) epochs of SGD
  (lr ``ft_init_lr`` 0.01, momentum 0.9, weight decay 5e-4; the authors' ``pretrain`` block),
  then frozen. The student is not touched by this phase.
* **translator** on the student's ``f``: the encoder's three conv3x3 with BatchNorm
  (``C_s->C_s->k C_t->k C_t``), trained with the student.
* loss: with ``g(x) = normalize_rows(flatten(mean over channels of x^p1))`` (after pooling the
  larger factor to the smaller size), ``L = mean(|g(translator(f_s)) - g(paraphraser.encode(f_t))|)``
  for ``p2 = 1`` else ``mean((g_s - g_t)^p2)``; the method's loss is ``ft_weight * L``.

Defaults: the authors' configs (weight 50, p1 2, p2 1, 30 pre-training epochs at lr 0.01);
RepDistiller's own script uses weight 200.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdx.distill.functional import pool_to_smaller
from kdx.distill.methods.base import MethodContext, register_method
from kdx.distill.methods.repdistiller import TapMethod, feature_taps, pretrain
from kdx.errors import KdxError
from kdx.options import Option

RATE = 0.5  # factor channels = RATE * teacher channels


def factor_map(f: Tensor, p1: float) -> Tensor:
    """``normalize(flatten(mean_c f^p1))``: one unit-norm row of H*W values per sample."""
    return F.normalize(f.pow(p1).mean(1).view(f.shape[0], -1))


def factor_loss(factor_s: Tensor, factor_t: Tensor, p1: float = 2.0, p2: float = 1.0) -> Tensor:
    """RepDistiller's ``FactorTransfer``: ``mean|g_s - g_t|`` (p2 = 1) or ``mean((g_s - g_t)^p2)``."""
    factor_s, factor_t = pool_to_smaller(factor_s, factor_t)
    diff = factor_map(factor_s, p1) - factor_map(factor_t, p1)
    return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


def _conv_stack(channels: list[int], transpose: bool, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers.append((nn.ConvTranspose2d if transpose else nn.Conv2d)(c_in, c_out, 3, 1, 1))
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Encoder C->C->kC->kC and decoder kC->kC->C->C, LeakyReLU(0.1), no BatchNorm."""

    def __init__(self, c: int, k: float = RATE):
        super().__init__()
        f = int(c * k)
        self.encoder = _conv_stack([c, c, f, f], transpose=False, bn=False)
        self.decoder = _conv_stack([f, f, c, c], transpose=True, bn=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


def translator(c_s: int, c_t: int, k: float = RATE) -> nn.Sequential:
    """Student encoder C_s->C_s->kC_t->kC_t with BatchNorm and LeakyReLU(0.1)."""
    f = int(c_t * k)
    return _conv_stack([c_s, c_s, f, f], transpose=False, bn=True)


@register_method
class FT(TapMethod):
    name = "ft"
    help = "factor transfer: translator (trained) vs paraphraser (pre-trained on the teacher first)"
    paper = ("Kim, Park, Kwak. Paraphrasing Complex Network: Network Compression via Factor Transfer. "
             "NeurIPS 2018")
    options = (
        Option("ft_weight", float, 50.0, "Weight of the FT loss (authors' configs).", low=0, panel="Method"),
        Option("ft_p1", float, 2.0, "FT factor exponent p1 (mean over channels of f^p1).", low=0, low_open=True,
               panel="Method"),
        Option("ft_p2", float, 1.0, "FT distance exponent p2 (1: mean absolute difference).", low=0, low_open=True,
               panel="Method"),
        Option("ft_init_epochs", int, 30, "Epochs of paraphraser pre-training before epoch 1.", low=0, panel="Method"),
        Option("ft_init_lr", float, 0.01, "SGD learning rate of the paraphraser pre-training.", low=0, low_open=True,
               panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        s_taps, t_taps = feature_taps(ctx.student)[1], feature_taps(ctx.teacher)[1]
        if not s_taps or not t_taps:
            raise KdxError("ft needs intermediate stages on both student and teacher")
        self.use_taps(s_taps[-1:], t_taps[-1:])
        self.paraphraser = self.translator = None
        self.init_loss: list[float] = []

    def setup(self, probe):
        [(f_s, f_t)] = self.pairs(probe)
        with self.connector_rng():
            self.paraphraser = Paraphraser(f_t.shape[1])
            self.translator = translator(f_s.shape[1], f_t.shape[1])
        self.paraphraser.requires_grad_(False)  # trained only in initialise(), then frozen
        self.to(f_s.device)

    def initialise(self, task, loader, runtime) -> None:
        """Pre-train the paraphraser to reconstruct the teacher's feature (MSE), teacher frozen."""
        self.check_setup(self.paraphraser)

        def step(x, y):
            _, feat_t = task.run_teacher(x)
            f_t = self.taps_t[0].read(task.teacher_hooks.features if task.teacher_hooks else {}, feat_t).detach()
            return F.mse_loss(self.paraphraser(f_t)[1], f_t)

        self.init_loss = pretrain(task, loader, runtime, self.paraphraser.parameters(), [self.paraphraser], step,
                                  self.params["ft_init_epochs"], self.params["ft_init_lr"])

    def loss(self, out):
        self.check_setup(self.paraphraser)
        [(f_s, f_t)] = self.pairs(out)
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(f_t)
        loss = factor_loss(self.translator(f_s), factor_t, self.params["ft_p1"], self.params["ft_p2"])
        return {"ft": self.params["ft_weight"] * loss}

    def record(self) -> dict:
        return super().record() | {"init_loss": list(self.init_loss)}
