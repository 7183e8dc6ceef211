"""RepDistiller's conventions shared by the feature methods with connectors (cc, crd, vid, ft, fsp).

Not a method (it registers nothing); two things live here:

1. **Which zoo outputs make RepDistiller's feature list.** ``model(x, is_feat=True,
   preact=False)`` there returns ``[f0, f1, ..., fk, pooled]``: ``f0`` the stem output,
   ``f1..fk`` the stage outputs (see below), ``pooled`` the global average of the
   final map. kdx reads the same tensors through forward hooks (:class:`kdx.models.taps.Tap`: a
   hooked module output, or the ``forward_features`` map, optionally followed by a ReLU). Each
   zoo family declares its taps (``feature_taps()``, ``final_tap()``, ``feat_modules()`` in
   ``kdx/models/*.py``) as RepDistiller's ``models/*.py`` define them (``preact=False``; most stage outputs are post
   ReLU, but WRN's are the raw pre-activation block outputs, its final BN+ReLU coming after
   ``f3``):

   ==============  ======================  ===========================================
   family          f0 (stem)               f1..fk
   ==============  ======================  ===========================================
   resnet, shuffle ReLU(``bn1``)           ``stage_names`` outputs (already post-ReLU)
   mobilenetv2     ``conv1`` (conv-BN-ReLU)  ``blocks.1, .2, .4, .6`` (= ``stage_names``)
   wrn             ``conv1``               ``block1``, ``block2``, ``block3`` (raw outputs,
                                           no BN/ReLU: ``wrn.py`` sets ``f3 = block3(.)``)
   vgg             ReLU(``block0``)        ReLU(``block1`` .. ``block4``)
   ==============  ======================  ===========================================

   ``pooled`` is the global average of the final map (``forward_features``), which
   :func:`final_tap` also reads through a hook: ``layerK`` (resnet, ShuffleNet V1),
   ReLU(``bn2``) (ShuffleNet V2), ``conv2`` (mobilenetv2), ReLU(``bn1``) (wrn), ReLU(``block4``)
   (vgg). Hooks rather than ``StepOutputs.feat_s`` (``wants_final``) keep the methods working
   on a VAM-wrapped student, whose wrapper has no ``forward_head``; other families fall back
   to ``wants_final``. The table, for reference:

2. **The initialisation phase of the two-stage methods** (RepDistiller ``helper/pretrain.py``,
   KDExplainer's ``init_pretrain``): SGD (momentum 0.9, weight decay 5e-4) on the method's
   "init modules" only, the teacher and the rest of the student in eval mode, the init
   modules in train mode, for ``epochs`` passes over the training loader (:func:`pretrain`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdx.distill.methods.base import Method, MethodContext
from kdx.errors import KdxError
from kdx.seeding import forked_rng
from kdx.models.taps import FINAL, Tap  # noqa: F401  (re-exported for the methods)

INIT_MOMENTUM = 0.9  # RepDistiller / KDExplainer pre-training optimiser (SGD)
INIT_WEIGHT_DECAY = 5e-4


def feature_taps(model: nn.Module) -> tuple[Optional[Tap], list[Tap]]:
    """``(f0, [f1, ..., fk])`` of RepDistiller's feature list, as the model declares it
    (``model.feature_taps()``, :mod:`kdx.models.taps`); a model that declares nothing gets
    ``f0 = None`` and its ``stage_names`` as ``f1..fk``."""
    if hasattr(model, "feature_taps"):
        return model.feature_taps()
    return None, [Tap(s) for s in getattr(model, "stage_names", [])]


def final_tap(model: nn.Module) -> Tap:
    """The final map as the model declares it (``model.final_tap()``); else ``FINAL`` (``wants_final``)."""
    return model.final_tap() if hasattr(model, "final_tap") else Tap(FINAL)


def feat_modules(model: nn.Module) -> list[nn.Module]:
    """RepDistiller's ``get_feat_modules()`` as the model declares it; else the whole model."""
    return list(model.feat_modules()) if hasattr(model, "feat_modules") else [model]


def needs_final(*taps: Optional[Tap]) -> bool:
    """Whether any tap reads ``StepOutputs.feat_s``/``feat_t`` (the method then sets ``wants_final``)."""
    return any(t is not None and t.source == FINAL for t in taps)


def hook_names(taps: Iterable[Optional[Tap]]) -> list[str]:
    """The module names a list of taps needs hooked (``FINAL`` comes from ``wants_final``)."""
    out: list[str] = []
    for t in taps:
        if t is not None and t.source != FINAL and t.source not in out:
            out.append(t.source)
    return out


def pooled(feat: Tensor) -> Tensor:
    """RepDistiller's last feature: the global average of the final map, ``(N, C)``."""
    return F.adaptive_avg_pool2d(feat, 1).flatten(1)


def describe(t: Tensor) -> str:
    """``"64 ch, 32x32"`` for an (N, C, H, W) map, ``"128-d"`` for an (N, D) vector."""
    return f"{t.shape[1]} ch, {t.shape[2]}x{t.shape[3]}" if t.dim() == 4 else f"{t.shape[-1]}-d"


def connector_rng(seed: int, name: str):
    """Build connectors from their own stream, (run seed, method name), without moving the global
    RNG: adding a method does not change any other draw of the run (:func:`kdx.seeding.forked_rng`)."""
    return forked_rng(seed, name)


# ---------------------------------------------------------------------- feature methods

class TapMethod(Method):
    """Base of the methods that read paired student and teacher features through taps.

    A subclass calls :meth:`use_taps` in its ``__init__`` with the student's and the teacher's
    taps (paired by position; None entries stand for "no model given" and read nothing). The
    base then answers :meth:`stages` and ``wants_final``, reads the paired tensors of a step
    (:meth:`pairs`, :meth:`pooled_pair`) and builds connectors from the run seed
    (:meth:`connector_rng`). Every such method needs a teacher and reads features.
    """

    needs_teacher = True
    uses_features = True
    reads = ("seed",)  # the connectors' stream
    commands = frozenset({"student", "explainer"})  # the explainer declares its taps as zoo models do

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self._seed = ctx.params.get("seed", 0)
        self.taps_s: list[Optional[Tap]] = []
        self.taps_t: list[Optional[Tap]] = []

    def use_taps(self, taps_s: Iterable[Optional[Tap]], taps_t: Iterable[Optional[Tap]]) -> None:
        self.taps_s, self.taps_t = list(taps_s), list(taps_t)
        self.wants_final = needs_final(*self.taps_s, *self.taps_t)

    def stages(self):
        return hook_names(self.taps_s), hook_names(self.taps_t)

    def pairs(self, out) -> list[tuple[Tensor, Tensor]]:
        """The (student, teacher) tensors of every pair of taps in one step."""
        return [(a.read(out.features_s, out.feat_s), b.read(out.features_t, out.feat_t))
                for a, b in zip(self.taps_s, self.taps_t)]

    def pooled_pair(self, out) -> tuple[Tensor, Tensor]:
        """RepDistiller's ``feat[-1]`` of the first pair (the final maps): pooled to (N, D)."""
        f_s, f_t = self.pairs(out)[0]
        return pooled(f_s), pooled(f_t)

    def connector_rng(self):
        """:func:`connector_rng` for this method and run seed."""
        return connector_rng(int(self._seed), self.name)

    def check_setup(self, built) -> None:
        """One-line error when ``built`` (a connector made by ``setup``) is still None."""
        if built is None:
            raise KdxError(f"{self.name}: setup() did not run (the task needs a probe forward before training)")


# ---------------------------------------------------------------------- initialisation phase

def loader_batches(loader, epoch: int):
    """The batches of one pass: a kdx loader's ``batches(epoch)``, else iterating ``loader``
    (any iterable of batches whose first two items are x, y)."""
    return loader.batches(epoch) if hasattr(loader, "batches") else iter(loader)


def _all_reduce_grads(params: list) -> None:
    """Average the gradients over DDP ranks (the pre-training runs outside DDP's wrapper)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())


def pretrain(task: nn.Module, loader, runtime, params: Iterable[Tensor], train_modules: list[nn.Module],
             step_loss: Callable[[Tensor, Tensor], Tensor], epochs: int, lr: float) -> list[float]:
    """RepDistiller's ``init``: ``epochs`` passes of SGD(``lr``, momentum 0.9, weight decay 5e-4)
    over ``loader`` on ``params`` only, minimising ``step_loss(x, y)``; ``task`` in eval mode
    except ``train_modules``. Returns the mean loss of every epoch. Gradients are cleared and
    the task's train/eval mode and ``requires_grad`` flags restored afterwards."""
    params = list(params)
    device = getattr(runtime, "device", None) or next(task.parameters()).device
    precision = getattr(runtime, "precision", None)
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    scaler = precision.grad_scaler() if precision is not None else None
    flags = [p.requires_grad for p in params]
    was_training = task.training
    task.eval()
    for m in train_modules:
        m.train()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr, momentum=INIT_MOMENTUM, weight_decay=INIT_WEIGHT_DECAY)
    history: list[float] = []
    try:
        for epoch in range(1, int(epochs) + 1):
            total, count = 0.0, 0
            for batch in loader_batches(loader, epoch):
                x, y = batch[0].to(device), batch[1].to(device)
                with autocast():
                    loss = step_loss(x, y)
                opt.zero_grad(set_to_none=True)
                if scaler is not None and scaler.is_enabled():
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                    _all_reduce_grads(params)
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    _all_reduce_grads(params)
                    opt.step()
                total += float(loss.detach()) * x.shape[0]
                count += x.shape[0]
            history.append(total / max(count, 1))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for p in task.parameters():
            p.grad = None
        task.train(was_training)
    return history
