"""What a training command plugs into the engine: a ``TrainTask``.

A task is an ``nn.Module`` (so DDP can wrap it) holding the model that is trained
and saved (``task.model``) plus whatever the method needs (a frozen teacher, extra
heads). Like mdistiller's distillers, ``forward(x, y, index)`` returns the logits and a
dict of *named* losses; the engine sums them, logs each one in metrics.csv and
never needs to know which method it is running.

The contract with the engine (:class:`kdx.engine.trainer.Trainer`):

* ``forward(x, y, index=None)``: ``index`` holds the dataset indices of the batch's samples
  (int64, on the device; indices into ``bundle.train`` as the command built it), for methods
  such as CRD that keep per-sample memories. The engine always passes it (through DDP too).
* ``initialise(train_loader, runtime)``: an optional initialisation phase (e.g. FT's
  paraphraser, FSP's pre-training) that the engine calls once before epoch 1 of a *fresh*
  run, after the task was moved to the device and before the optimiser is built (parameters
  it creates are optimised if ``param_groups`` lists them; build them in ``__init__`` so a
  resumed run, which skips this phase, has the same state dict). A run interrupted during the
  phase has no resume state yet, so ``--resume`` simply runs it again. It must not touch the
  global RNG if a run is to be reproducible, and ``train_loader.batches(e, with_index=True)``
  gives it the same batches as training.
* Resume: ``resume/`` holds the whole ``task.state_dict()``, so every trainable module the task
  owns as a *submodule* (connectors, embeddings, memory buffers registered with
  ``register_buffer``) is saved and restored with the model; state kept outside submodules
  and buffers (plain attributes) is not, and must be rebuilt from the epoch in
  ``on_epoch_start``. Only ``task.model`` goes into model.safetensors / best.safetensors.
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
    def forward(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None):
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

    def initialise(self, train_loader, runtime) -> None:
        """The initialisation phase before epoch 1 of a fresh run (default: none); see the module docstring."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before every training epoch (epoch counted from 1), also after a resume."""

    def epoch_metrics(self, epoch: int) -> dict:
        """Extra columns for this epoch's metrics.csv row (e.g. tau, routing entropy)."""
        return {}

    def warnings(self) -> list[str]:
        """What makes this run meaningless or doubtful, one sentence each (the engine prints them as
        ``kdx: warning:`` lines before the first step): e.g. a schedule that never trains a part."""
        return []

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
