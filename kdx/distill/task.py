"""A training task with a registered objective and an optional frozen teacher."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from kdx.distill.losses import get_objective
from kdx.engine.task import TrainTask
from kdx.errors import KdxError


def load_teacher(path: str | Path, bundle) -> tuple[nn.Module, dict]:
    """Load a teacher run/checkpoint, frozen, and refuse one trained for other data."""
    from kdx.engine.checkpoint import load_model

    model, meta = load_model(path)
    n = int(meta.get("num_classes", -1))
    if n != bundle.num_classes:
        raise KdxError(f"teacher {path} predicts {n} classes but dataset '{bundle.name}' has {bundle.num_classes}")
    ds = meta.get("dataset")
    same_family = {ds, bundle.name} <= {"fashion-mnist", "fashion-mnist-mini"}
    if ds is not None and ds != bundle.name and not same_family:
        raise KdxError(f"teacher {path} was trained on '{ds}', not on '{bundle.name}'")
    shape = meta.get("input_shape")
    if shape and int(shape[0]) != bundle.in_channels:
        raise KdxError(f"teacher {path} takes {shape[0]}-channel input but '{bundle.name}' has {bundle.in_channels}")
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model, meta


class DistillTask(TrainTask):
    """``objective`` (ce | ls | kd | ...) on ``model``; the teacher (if any) runs frozen in eval
    mode under no_grad, inside the same autocast as the student (same precision)."""

    def __init__(self, model: nn.Module, objective: str, cfg, teacher: nn.Module | None = None,
                 teacher_meta: dict | None = None):
        super().__init__(model)
        self.objective_name = objective
        self.objective = get_objective(objective)
        if self.objective.needs_teacher and teacher is None:
            raise KdxError(f"objective '{objective}' needs a teacher: pass --teacher RUN_OR_CHECKPOINT")
        self.cfg = cfg
        self.teacher = teacher
        self.teacher_meta = teacher_meta or {}

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher] if self.teacher is not None else []

    def teacher_logits(self, x: torch.Tensor):
        if self.teacher is None or not self.objective.needs_teacher:
            return None
        with torch.no_grad():
            return self.teacher(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        t_logits = self.teacher_logits(x)
        logits = self.model(x)
        return logits, self.objective.fn(logits, y, t_logits, self.cfg)

    def param_groups(self, cfg) -> list[dict]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": cfg.lr, "name": "model"}]

    def teacher_record(self) -> dict | None:
        if self.teacher is None:
            return None
        return {k: self.teacher_meta.get(k) for k in ("arch", "kind", "dataset", "num_classes")} | {
            "path": str(self.teacher_meta.get("_path", "")), "test_top1": (self.teacher_meta.get("metrics") or {}).get("test_top1")}
