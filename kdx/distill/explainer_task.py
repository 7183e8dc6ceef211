"""Training the explainer with the engine: the stage-1 schedule and the task.

Stage 1 (official): soft routing with ``tau = tau0 / epoch``, Adam with two parameter groups
(everything but the routing at ``lr``, routing at ``routing_lr``) and the official warm-up
and decay schedule (``explainer-stage1``). Stage 2: the stage-1 tree is kept (routing
frozen, hard), every other weight re-initialised, SGD with the ``halving`` schedule.
"""

from __future__ import annotations

import types

import torch

from kdx.distill.task import MethodTask
from kdx.engine.schedule import register_schedule
from kdx.models.routed.explainer import KDExplainer
from kdx.models.routed.routing import routing_entropy, tau_at
from kdx.models.routed.tree import hard_tree


@register_schedule("explainer-stage1")
def explainer_stage1(epoch, base_lrs, cfg):
    """Official stage-1 schedule (epochs from 1); group 0 = experts/heads, group 1 = routing.

    e=1: lr/4, routing 0; e=2: lr/2, routing 0; e=3: both full; then on every epoch with
    e-1 even: base * (1 - (e-1) / int(1.03093 * E)) for both groups, unchanged in between.
    """
    if epoch == 1:
        factors = [0.25, 0.0]
    elif epoch == 2:
        factors = [0.5, 0.0]
    elif epoch <= 4:
        factors = [1.0, 1.0]
    else:
        e = epoch if (epoch - 1) % 2 == 0 else epoch - 1  # the last epoch that updated the rate
        f = max(0.0, 1.0 - (e - 1) / int(1.03093 * cfg.epochs))
        factors = [f, f]
    return [lr * factors[min(i, 1)] for i, lr in enumerate(base_lrs)]


def routing_epochs(stage1_epochs: int, routing_lr: float) -> list[int]:
    """The stage-1 epochs in which the routing's learning rate is above 0 (asked of the schedule)."""
    cfg = types.SimpleNamespace(epochs=stage1_epochs)
    return [e for e in range(1, stage1_epochs + 1) if explainer_stage1(e, [1.0, routing_lr], cfg)[1] > 0]


def untrained_routing_warning(stage1_epochs: int, routing_lr: float) -> str:
    """Why the routing of this stage 1 never changes, and the flag that fixes it."""
    if routing_lr <= 0:
        return ("--routing-lr 0: the routing logits never change in stage 1, so the class tree, its clusters and "
                "their analysis are those of the initialisation; give --routing-lr > 0")
    first = next(e for e in range(1, 10_000) if explainer_stage1(e, [1.0, 1.0], types.SimpleNamespace(epochs=e))[1] > 0)
    return (f"stage 1 has {stage1_epochs} epoch{'s' if stage1_epochs != 1 else ''} and the official schedule keeps the "
            f"routing's learning rate at 0 in stage-1 epochs 1-{first - 1}: the routing logits never change, so the "
            f"class tree, its clusters and their analysis are those of the initialisation; use --stage1-epochs "
            f"{first} or more (the routing trains from epoch {first} on)")


class ExplainerTask(MethodTask):
    """Train a :class:`KDExplainer` (stage 1 or 2) with registered methods: the logit ones (ce, ls,
    kd, dkd) and the feature ones, which read the explainer's expert layers as its stages."""

    def __init__(self, model: KDExplainer, methods, cfg, stage: int, teacher=None, teacher_meta=None,
                 class_names=None, probe_shape=None):
        super().__init__(model, methods, teacher=teacher, teacher_meta=teacher_meta)
        self.cfg = cfg
        self.stage = stage
        self.class_names = class_names
        if stage == 2:
            for p in model.routing_logits():
                p.requires_grad_(False)
            model.routing = "hard"
        else:
            model.routing = cfg.routing
        if probe_shape is not None:  # feature methods build their connectors from the shapes
            self.setup_methods(torch.zeros(2, *probe_shape))

    def param_groups(self, cfg) -> list[dict]:
        model: KDExplainer = self.model
        if self.stage == 1:
            return [{"params": model.non_routing_parameters(), "lr": cfg.lr, "name": "experts"},
                    {"params": model.routing_logits(), "lr": cfg.routing_lr, "name": "routing"}] + \
                self.method_param_group(cfg.lr)
        return [{"params": model.non_routing_parameters(), "lr": cfg.lr, "name": "experts"}] + \
            self.method_param_group(cfg.lr)

    def warnings(self) -> list[str]:
        found = super().warnings()
        if self.stage == 1 and not routing_epochs(self.cfg.stage1_epochs, self.cfg.routing_lr):
            found.append(untrained_routing_warning(self.cfg.stage1_epochs, self.cfg.routing_lr))
        return found

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.stage == 1:
            self.model.tau = tau_at(epoch, self.cfg.tau0)

    @torch.no_grad()
    def layer_entropies(self) -> list[float]:
        """``routing_entropy_l<i>``: mean over the children of routing matrix i of
        ``-sum_j a_ij log a_ij``, ``a = route(R_i, tau, routing)`` at this epoch's tau (one matrix,
        not the composed subtask attention of ``kdx analyze-conflicts``)."""
        return [float(routing_entropy(a.float()).mean()) for a in self.model.routing_weights()]

    def epoch_metrics(self, epoch: int) -> dict:
        row = {"stage": self.stage}
        if self.stage == 1:
            row["tau"] = float(self.model.tau)
        for i, h in enumerate(self.layer_entropies(), start=1):
            row[f"routing_entropy_l{i}"] = h
        return row

    @torch.no_grad()
    def epoch_records(self, epoch: int) -> dict:
        rows = []
        weights = self.model.routing_weights()
        for layer, (logits, a) in enumerate(zip(self.model.routing_logits(), weights), start=1):
            lg, w = logits.detach().float().cpu(), a.detach().float().cpu()
            for i in range(lg.shape[0]):
                for j in range(lg.shape[1]):
                    rows.append({"stage": self.stage, "layer": layer, "child": i, "parent": j,
                                 "logit": float(lg[i, j]), "weight": float(w[i, j])})
        return {"routing": rows}

    def checkpoint_metadata(self) -> dict:
        model: KDExplainer = self.model
        cfg = self.cfg
        return {
            "kind": "explainer",
            "arch": "kdexplainer",
            "explainer": model.config_dict(),
            "stage": self.stage,
            "method": list(cfg.method),
            "method_params": {k: v for r in self.method_records() for k, v in r["params"].items()},
            "methods": self.method_records(),
            "teacher": self.teacher_record(),
            "tau_schedule": {"tau0": cfg.tau0, "rule": "tau0 / epoch", "routing": model.routing,
                             "final_tau": float(model.tau)},
            "tree": hard_tree(model, self.class_names),
        }
