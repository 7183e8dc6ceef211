"""RepDistiller's conventions shared by the feature methods with connectors (cc, crd, vid, ft, fsp).

Not a method (it registers nothing); two things live here:

1. **Which zoo outputs make RepDistiller's feature list.** ``model(x, is_feat=True,
   preact=False)`` there returns ``[f0, f1, ..., fk, pooled]``: ``f0`` the stem output,
   ``f1..fk`` the stage outputs (see below), ``pooled`` the global average of the
   final map. kdx reads the same tensors through forward hooks (:class:`Tap`: a hooked module
   output, or the ``forward_features`` map, optionally followed by a ReLU), per family as
   RepDistiller's ``models/*.py`` define them (``preact=False``; most stage outputs are post
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
   to ``wants_final``.

2. **The initialisation phase of the two-stage methods** (RepDistiller ``helper/pretrain.py``,
   KDExplainer's ``init_pretrain``): SGD (momentum 0.9, weight decay 5e-4) on the method's
   "init modules" only, the teacher and the rest of the student in eval mode, the init
   modules in train mode, for ``epochs`` passes over the training loader (:func:`pretrain`).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdx.distill.methods.base import Method, MethodContext
from kdx.errors import KdxError

FINAL = "forward_features"  # a Tap source: the model's final map (StepOutputs.feat_s / feat_t)
INIT_MOMENTUM = 0.9  # RepDistiller / KDExplainer pre-training optimiser (SGD)
INIT_WEIGHT_DECAY = 5e-4


@dataclass(frozen=True)
class Tap:
    """One of RepDistiller's features: the output of module ``source`` (or the final map when
    ``source == FINAL``), followed by a ReLU when ``relu``."""

    source: str
    relu: bool = False

    @property
    def label(self) -> str:
        return f"relu({self.source})" if self.relu else self.source

    def read(self, features: dict, final: Optional[Tensor]) -> Tensor:
        t = final if self.source == FINAL else features[self.source]
        if t is None:
            raise KdxError(f"feature {self.source} was not captured in this forward")
        return F.relu(t) if self.relu else t


def feature_taps(model: nn.Module) -> tuple[Optional[Tap], list[Tap]]:
    """``(f0, [f1, ..., fk])`` of RepDistiller's feature list for a zoo model (table above).

    Models of other families get ``f0 = None`` and their ``stage_names`` as ``f1..fk``.
    """
    from kdx.models.mobilenet import MobileNetV2Net
    from kdx.models.resnet import ResNet
    from kdx.models.shufflenet import ShuffleNetBase
    from kdx.models.vgg import VGG
    from kdx.models.wrn import WideResNet

    stages = list(getattr(model, "stage_names", []))
    if isinstance(model, (ResNet, ShuffleNetBase)):
        return Tap("bn1", relu=True), [Tap(s) for s in stages]
    if isinstance(model, MobileNetV2Net):
        return Tap("conv1"), [Tap(s) for s in stages]
    if isinstance(model, WideResNet):
        return Tap("conv1"), [Tap(s) for s in stages]
    if isinstance(model, VGG):
        return Tap(stages[0], relu=True), [Tap(s, relu=True) for s in stages[1:]]
    return None, [Tap(s) for s in stages]


def final_tap(model: nn.Module) -> Tap:
    """The hook that reads ``model.forward_features(x)`` (``FINAL``: ``wants_final``, for other families)."""
    from kdx.models.mobilenet import MobileNetV2Net
    from kdx.models.resnet import ResNet
    from kdx.models.shufflenet import ShuffleNetBase
    from kdx.models.vgg import VGG
    from kdx.models.wrn import WideResNet

    if isinstance(model, ShuffleNetBase) and hasattr(model, "conv2"):
        return Tap("bn2", relu=True)
    if isinstance(model, (ResNet, ShuffleNetBase)):
        return Tap(model.stage_names[-1])
    if isinstance(model, MobileNetV2Net):
        return Tap("conv2")
    if isinstance(model, WideResNet):
        return Tap("bn1", relu=True)
    if isinstance(model, VGG):
        return Tap(model.stage_names[-1], relu=True)
    return Tap(FINAL)


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


@contextlib.contextmanager
def connector_rng(seed: int, name: str):
    """Build connectors from a generator seeded by (run seed, method name) without moving the
    global RNG: adding a method does not change any other draw of the run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        yield


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
