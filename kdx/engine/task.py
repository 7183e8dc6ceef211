"""What a training command plugs into the engine: a ``TrainTask``.

A task is an ``nn.Module`` (so DDP can wrap it) holding the model that is trained
and saved (``task.model``) plus whatever the method needs (a frozen teacher, extra
heads). Like mdistiller's distillers, ``forward(x, y)`` returns the logits and a
dict of *named* losses; the engine sums them, logs each one in metrics.csv and
never needs to know which method it is running.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TrainTask(nn.Module):
    """Base class: plain supervised training of ``model`` with (label-smoothed) cross-entropy."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = float(label_smoothing)

    # --- the training step ---------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor):
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at evaluation time (the engine calls it under no_grad, in eval mode)."""
        return self.model(x)

    # --- hooks ---------------------------------------------------------------------
    def param_groups(self, cfg) -> list[dict]:
        """Parameter groups for the optimizer; ``lr`` is each group's base learning rate."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": params, "lr": cfg.lr, "name": "model"}]

    def on_epoch_start(self, epoch: int) -> None:
        """Called before every training epoch (epoch counted from 1), also after a resume."""

    def epoch_metrics(self, epoch: int) -> dict:
        """Extra columns for this epoch's metrics.csv row (e.g. tau, routing entropy)."""
        return {}

    def epoch_records(self, epoch: int) -> dict[str, list[dict]]:
        """Long-format rows to append to ``<name>.csv`` in the run directory after every epoch
        (e.g. ``{"routing": [...]}``); the engine keeps them consistent across resumes."""
        return {}

    def checkpoint_metadata(self) -> dict:
        """kind/arch/... written into the checkpoint metadata so ``kdx.load`` can rebuild the model."""
        return {"kind": "classifier", "arch": getattr(self.model, "arch", type(self.model).__name__)}

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that stay in eval mode while training (e.g. a teacher)."""
        return []

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self
