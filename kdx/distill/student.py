"""The student task: a zoo student (optionally wrapped by the VAM) trained with registered methods.

The VAM parts live here: the routing logits get their own optimizer group without weight
decay ([kdx]: decay would pull the attention to uniform), ``tau = tau0 / epoch``, and the
per-epoch attention report ``vam_attention.csv``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdx.distill.task import MethodTask
from kdx.models.routed.routing import tau_at
from kdx.models.routed.vam import VAMStudent


class StudentTask(MethodTask):
    """A (VAM) student; ``model`` is what ``model.safetensors`` holds (the VAM wrapper or the zoo model)."""

    def __init__(self, model: nn.Module, methods, teacher=None, teacher_meta=None, class_names=None,
                 tau0: float = 10.0, teacher_cache=None, metadata: dict | None = None, probe_shape=None):
        super().__init__(model, methods, teacher=teacher, teacher_meta=teacher_meta,
                         zoo=getattr(model, "student", model), teacher_cache=teacher_cache)
        self.class_names = class_names
        self.tau0 = float(tau0)
        self.extra_metadata = dict(metadata or {})
        if probe_shape is not None:
            self.setup_methods(torch.zeros(2, *probe_shape))

    @property
    def has_vam(self) -> bool:
        return isinstance(self.model, VAMStudent)

    def param_groups(self, cfg) -> list[dict]:
        no_decay = getattr(self.model, "no_decay_parameters", None)  # the model says (the VAM: its routing)
        routing = list(no_decay()) if no_decay is not None else []
        ids = {id(p) for p in routing}
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids],
                   "lr": cfg.lr, "name": "model"}]
        if routing:  # [kdx] no weight decay on the routing logits (it would pull attention to uniform)
            groups.append({"params": routing, "lr": cfg.lr, "weight_decay": 0.0, "name": "routing"})
        return groups + self.method_param_group(cfg.lr)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.has_vam:
            self.model.tau = tau_at(epoch, self.tau0)

    @property
    def attention_head(self):
        """The module whose class-by-block attention is reported: the replacing VAM head (the
        model), or a method's (:meth:`Method.attention_module`: the auxiliary head), or None."""
        if self.has_vam:
            return self.model
        return next((a for m in self.methods if (a := m.attention_module()) is not None), None)

    @torch.no_grad()
    def epoch_metrics(self, epoch: int) -> dict:
        head = self.attention_head
        if head is None:
            return {}
        eval_mode = getattr(head, "routing", "soft")
        return {"tau": float(head.tau),
                "vam_entropy": float(head.attention_entropy(mode="soft")),
                "vam_entropy_eval": float(head.attention_entropy(mode=eval_mode))}

    @torch.no_grad()
    def epoch_records(self, epoch: int) -> dict:
        head = self.attention_head
        if head is None:
            return {}
        a = head.routing_weights(mode="soft")[0].float().cpu()
        names = self.class_names or [str(c) for c in range(a.shape[0])]
        return {"vam_attention": [{"class": c, "class_name": names[c], "block": k, "weight": float(a[c, k])}
                                  for c in range(a.shape[0]) for k in range(a.shape[1])]}

    def checkpoint_metadata(self) -> dict:
        meta = {"arch": getattr(self.model, "arch", type(self.model).__name__),
                "kind": "vam-student" if self.has_vam else "classifier",
                "methods": self.method_records(),
                "teacher": self.teacher_record()}
        meta.update(self.extra_metadata)
        if self.has_vam:
            vam = dict(meta.get("vam") or {})
            vam.update(self.model.config_dict())
            vam["final_tau"] = float(self.model.tau)
            meta["vam"] = vam
        return meta
