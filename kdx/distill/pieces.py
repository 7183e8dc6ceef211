"""Composable loss pieces and the student task that sums them (CE + KD + VAM entropy + hierarchy).

A *loss piece* is ``fn(task, x, y, outputs) -> {name: weighted loss}``, registered with
``@register_loss_piece(name)``. ``outputs`` holds what one forward produced:
``logits`` (student), ``teacher_logits`` (None without a teacher), ``features`` (the
hooked student stages, ``{stage name: tensor}``) and ``model``. :class:`StudentTask` runs
the listed pieces in order and hands their named losses to the engine, which logs each one
as ``train_loss_<name>`` in metrics.csv. A later method (FitNet, AT, CRD...) adds a piece
(and, if it needs them, stage hooks via ``StudentTask.hook_stages``) and combines with the
VAM without touching the training loop.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdx.distill.losses import kd_kl
from kdx.distill.task import DistillTask
from kdx.errors import did_you_mean

LossPiece = Callable[..., dict]
_PIECES: dict[str, LossPiece] = {}


def register_loss_piece(name: str):
    def deco(fn: LossPiece) -> LossPiece:
        _PIECES[name] = fn
        return fn

    return deco


def get_loss_piece(name: str) -> LossPiece:
    if name not in _PIECES:
        raise did_you_mean("loss piece", name, _PIECES)
    return _PIECES[name]


def list_loss_pieces() -> list[str]:
    return sorted(_PIECES)


@register_loss_piece("ce")
def piece_ce(task, x, y, outputs) -> dict:
    """``ce_weight * CE`` (weight 1 for a plain student, 0.1 under KD)."""
    return {"ce": task.weights.get("ce", 1.0) * F.cross_entropy(outputs["logits"].float(), y,
                                                                 label_smoothing=task.label_smoothing)}


@register_loss_piece("kd")
def piece_kd(task, x, y, outputs) -> dict:
    """``kd_weight * KL(p_t^T || p_s^T) * T^2`` (batchmean), as the official code."""
    return {"kd": task.weights.get("kd", 0.9) * kd_kl(outputs["logits"], outputs["teacher_logits"],
                                                       task.weights.get("kd_temperature", 4.0))}


@register_loss_piece("vam_entropy")
def piece_vam_entropy(task, x, y, outputs) -> dict:
    """``lambda * mean over classes of the VAM attention entropy`` (at the current soft routing)."""
    return {"vam_entropy": task.weights.get("vam_entropy", 0.0) * outputs["model"].attention_entropy()}


@register_loss_piece("hierarchy")
def piece_hierarchy(task, x, y, outputs) -> dict:
    """``W * sum over auxiliary heads of the 1/|cluster|-weighted cluster cross-entropy``."""
    losses = task.hierarchy_heads.head_losses(outputs["features"], y)
    return {"hierarchy": task.weights.get("hierarchy", 0.1) * torch.stack(losses).sum()}


class TeacherCache:
    """Frozen-teacher logits keyed by a fingerprint of the (augmented) batch, bounded in bytes.

    ``--compare`` trains several students from the same seed on the same batches: the frozen
    teacher's outputs are then computed once per batch instead of once per method. The key is
    the shape plus two different weighted sums of the batch in float64 (different batches
    collide with negligible probability); entries stop being added at ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.store: dict = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(x: torch.Tensor):
        flat = x.detach().reshape(-1).double()
        ramp = torch.linspace(-1.0, 1.0, flat.numel(), dtype=torch.float64, device=flat.device)
        return tuple(x.shape), float(flat.sum()), float((flat * ramp).sum()), float((flat * flat * ramp).sum())

    def __call__(self, teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
        k = self.key(x)
        hit = self.store.get(k)
        if hit is not None and hit.device == x.device:
            self.hits += 1
            return hit
        self.misses += 1
        with torch.no_grad():
            out = teacher(x)
        size = out.numel() * out.element_size()
        if self.bytes + size <= self.max_bytes:
            self.store[k] = out.detach()
            self.bytes += size
        return out


class StudentTask(DistillTask):
    """A (VAM) student trained with the sum of registered loss pieces; teacher frozen in eval mode.

    ``pieces``: names in order (e.g. ``["ce", "kd", "vam_entropy", "hierarchy"]``);
    ``weights``: ``ce``, ``kd``, ``kd_temperature``, ``vam_entropy``, ``hierarchy``.
    ``hierarchy_heads`` (a :class:`kdx.distill.hierarchy.HierarchyHeads`) lives in the task,
    not in ``task.model``: it is trained and resumed, but not saved in model.safetensors.
    """

    def __init__(self, model: nn.Module, pieces: list[str], weights: dict, cfg, teacher=None, teacher_meta=None,
                 hierarchy_heads: nn.Module | None = None, hook_stages: list[str] | None = None,
                 class_names: list[str] | None = None, tau0: float = 10.0, teacher_cache: TeacherCache | None = None,
                 metadata: dict | None = None):
        super().__init__(model, "kd" if "kd" in pieces else "ce", cfg, teacher, teacher_meta)
        self.label_smoothing = float(getattr(cfg, "label_smoothing", 0.0) or 0.0)
        self.pieces = [get_loss_piece(p) and p for p in pieces]
        self.weights = dict(weights)
        self.hierarchy_heads = hierarchy_heads
        self.class_names = class_names
        self.tau0 = float(tau0)
        self.extra_metadata = dict(metadata or {})
        self._teacher_cache = teacher_cache
        self.hooks = None
        if hook_stages:
            from kdx.models import FeatureHooks

            self.hooks = FeatureHooks(self.zoo_model, hook_stages).register()

    @property
    def zoo_model(self) -> nn.Module:
        return getattr(self.model, "student", self.model)

    @property
    def has_vam(self) -> bool:
        return hasattr(self.model, "routing_matrix")

    def teacher_logits(self, x):
        if self.teacher is None or not self.objective.needs_teacher:
            return None
        if self._teacher_cache is not None:
            return self._teacher_cache(self.teacher, x)
        return super().teacher_logits(x)

    def forward(self, x, y):
        t_logits = self.teacher_logits(x)
        if self.hooks is not None:
            self.hooks.clear()
        logits = self.model(x)
        outputs = {"logits": logits, "teacher_logits": t_logits, "model": self.model,
                   "features": self.hooks.features if self.hooks is not None else {}}
        losses: dict = {}
        for name in self.pieces:
            losses.update(get_loss_piece(name)(self, x, y, outputs))
        return logits, losses

    def param_groups(self, cfg) -> list[dict]:
        routing = [self.model.routing_matrix] if self.has_vam else []
        ids = {id(p) for p in routing}
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids],
                   "lr": cfg.lr, "name": "model"}]
        if routing:  # [kdx] no weight decay on the routing logits (it would pull attention to uniform)
            groups.append({"params": routing, "lr": cfg.lr, "weight_decay": 0.0, "name": "routing"})
        if self.hierarchy_heads is not None:
            groups.append({"params": list(self.hierarchy_heads.parameters()), "lr": cfg.lr, "name": "hierarchy"})
        return groups

    def on_epoch_start(self, epoch: int) -> None:
        if self.has_vam:
            from kdx.explainer.routing import tau_at

            self.model.tau = tau_at(epoch, self.tau0)

    @torch.no_grad()
    def epoch_metrics(self, epoch: int) -> dict:
        if not self.has_vam:
            return {}
        return {"tau": float(self.model.tau),
                "vam_entropy": float(self.model.attention_entropy(mode="soft")),
                "vam_entropy_eval": float(self.model.attention_entropy(mode=self.model.routing))}

    @torch.no_grad()
    def epoch_records(self, epoch: int) -> dict:
        if not self.has_vam:
            return {}
        a = self.model.routing_weights(mode="soft")[0].float().cpu()
        names = self.class_names or [str(c) for c in range(a.shape[0])]
        return {"vam_attention": [{"class": c, "class_name": names[c], "block": k, "weight": float(a[c, k])}
                                  for c in range(a.shape[0]) for k in range(a.shape[1])]}

    def checkpoint_metadata(self) -> dict:
        meta = {"arch": getattr(self.model, "arch", type(self.model).__name__),
                "kind": "vam-student" if self.has_vam else "classifier",
                "loss_pieces": list(self.pieces),
                "loss_weights": dict(self.weights),
                "teacher": self.teacher_record() if "kd" in self.pieces else None}
        meta.update(self.extra_metadata)
        if self.has_vam:
            vam = dict(meta.get("vam") or {})
            vam.update(self.model.config_dict())
            vam["final_tau"] = float(self.model.tau)
            meta["vam"] = vam
        return meta
