"""The task every distilling command trains: a model, a frozen teacher, and registered methods.

:class:`MethodTask` runs the teacher (frozen, eval mode, ``no_grad``, same autocast as the
student) and the student once per step, captures the stages the methods asked for with
forward hooks, and returns the logits and the union of the methods' named, weighted losses
(the TrainTask contract of :mod:`kdx.engine.task`). It names no method: what to compute comes
from the :class:`kdx.distill.methods.Method` objects it holds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from kdx.distill.methods.base import (Method, MethodContext, StepOutputs, all_methods, get_method, resolve_ce_weight,
                                      sum_losses)
from kdx.data.registry import same_family
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
    if ds is not None and ds != bundle.name and not same_family(str(ds), bundle.name):
        raise KdxError(f"teacher {path} was trained on '{ds}', not on '{bundle.name}'")
    shape = meta.get("input_shape")
    if shape and int(shape[0]) != bundle.in_channels:
        raise KdxError(f"teacher {path} takes {shape[0]}-channel input but '{bundle.name}' has {bundle.in_channels}")
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model, meta


WEAK_TEACHER = 0.5  # of the way from chance to 100%: below it a teacher likely teaches worse than CE alone


def weak_teacher_warning(meta: dict) -> str | None:
    """The rule for a teacher that is likely worse than the student would be: its recorded top-1
    (validation, else test, of the checkpoint's epoch) below ``chance + WEAK_TEACHER * (1 - chance)``
    (55% for 10 classes, 50.5% for 100). None when it passes or records no accuracy."""
    metrics, n = meta.get("metrics") or {}, int(meta.get("num_classes") or 0)
    split, top1 = next(((s, metrics[f"{s}_top1"]) for s in ("val", "test") if metrics.get(f"{s}_top1") is not None),
                       (None, None))
    if top1 is None or n < 2:
        return None
    bound = 1 / n + WEAK_TEACHER * (1 - 1 / n)
    if float(top1) >= bound:
        return None
    where = f" ({meta['_path']})" if meta.get("_path") else ""
    return (f"the teacher{where} reaches {float(top1):.1%} {split} top-1 at its epoch {meta.get('epoch', '?')}, below "
            f"{bound:.1%} (chance {1 / n:.1%} plus half the way to 100%): a student distilled from it likely learns "
            f"less than with cross-entropy alone; train the teacher longer (train-teacher --epochs)")


def method_names(chosen: list[str], command: str, ce_weight) -> tuple[list[str], float]:
    """The methods to build, in order (``ce`` first unless its weight is 0), and the CE weight."""
    for name in chosen:
        get_method(name, command)
    if len(set(chosen)) != len(chosen):
        raise KdxError(f"--method names a method twice: {','.join(chosen)}")
    weight = resolve_ce_weight(list(chosen), ce_weight)
    names = [n for n in chosen if n != "ce"]
    if weight > 0 or "ce" in chosen:
        names.insert(0, "ce")
    return names, weight


def build_methods(names: list[str], ctx: MethodContext) -> list[Method]:
    """Instantiate the named methods; each sees in ``ctx.params`` only its own options and the run
    values it declares in ``reads`` (``ctx.params`` may hold the whole run config)."""
    registry = all_methods()
    out = []
    for n in names:
        cls = registry[n]
        keep = {o.name for o in cls.options} | set(cls.reads)
        out.append(cls(dataclasses.replace(ctx, params={k: v for k, v in ctx.params.items() if k in keep})))
    return out


def logit_loss(method: str, params: dict | None, command: str = "explainer", epoch: int | None = None):
    """The summed training loss of logit-only ``method`` (``"kd"``, ``"kd+dkd"``) with the recorded
    option values ``params``, as ``fn(logits, y, teacher_logits)`` (``fn.needs_teacher``): what the
    analysis needs to recompute a run's own loss. ``epoch`` (default: past every warm-up, as at the
    end of training) is what epoch-dependent methods such as DKD's warm-up see."""
    params = dict(params or {})
    if "smoothing" in params and "label_smoothing" not in params:  # checkpoints before the method registry
        params["label_smoothing"] = params.pop("smoothing")
    names, ce_weight = method_names([n for n in str(method).split("+") if n], command, params.get("ce_weight"))
    params["ce_weight"] = ce_weight
    methods = build_methods(names, MethodContext(params=params))
    if any(m.uses_features for m in methods):
        raise KdxError(f"method {method} reads features; only logit methods can be recomputed from logits")

    def fn(logits, y, teacher_logits=None):
        out = StepOutputs(x=logits, y=y, logits=logits, model=None, teacher_logits=teacher_logits,
                          epoch=10**9 if epoch is None else int(epoch))
        return sum(sum_losses(methods, out).values())

    fn.needs_teacher = any(m.needs_teacher for m in methods)
    return fn


class TeacherCache:
    """Frozen-teacher logits keyed by a fingerprint of the (augmented) batch, bounded in bytes.

    ``--compare`` trains several students from the same seed on the same batches: the frozen
    teacher's outputs are then computed once per batch instead of once per method. The key is
    the shape plus weighted sums of the batch in float64 (different batches collide with
    negligible probability); entries stop being added at ``max_bytes``.
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


class MethodTask(TrainTask):
    """``model`` trained with the sum of ``methods``' losses; ``teacher`` (if any) frozen.

    ``zoo``: the module whose stages the methods hook (the zoo student inside a VAM wrapper;
    default ``model``).
    """

    def __init__(self, model: nn.Module, methods: list[Method], teacher: nn.Module | None = None,
                 teacher_meta: dict | None = None, zoo: nn.Module | None = None,
                 teacher_cache: TeacherCache | None = None):
        super().__init__(model)
        self.methods = nn.ModuleList(methods)
        self.needs_teacher = any(m.needs_teacher for m in methods)
        if self.needs_teacher and teacher is None:
            names = ", ".join(m.name for m in methods if m.needs_teacher)
            raise KdxError(f"method {names} needs a teacher: pass --teacher RUN_OR_CHECKPOINT")
        self.teacher = teacher if self.needs_teacher else None
        self.teacher_meta = teacher_meta or {}
        self._zoo = [zoo if zoo is not None else model]  # a list: not a second registered submodule
        self.wants_final = any(m.wants_final for m in methods)
        self.wants_final_teacher = any(m.wants_final if m.wants_final_teacher is None else m.wants_final_teacher
                                       for m in methods)
        self.hooks = self.teacher_hooks = None
        s_stages, t_stages = self._stage_union()
        from kdx.models import FeatureHooks

        if s_stages:
            self.hooks = FeatureHooks(self.zoo_model, s_stages).register()
        if t_stages:
            self.teacher_hooks = FeatureHooks(teacher, t_stages, detach=True).register()
        self._teacher_cache = teacher_cache if not (t_stages or self.wants_final_teacher) else None

    def _stage_union(self) -> tuple[list[str], list[str]]:
        s, t = [], []
        for m in self.methods:
            ms, mt = m.stages()
            s += [n for n in ms if n not in s]
            t += [n for n in mt if n not in t]
        return s, t

    @property
    def zoo_model(self) -> nn.Module:
        return self._zoo[0]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher] if self.teacher is not None else []

    def remove_hooks(self) -> None:
        for h in (self.hooks, self.teacher_hooks):
            if h is not None:
                h.remove()

    # ------------------------------------------------------------------ the step
    def run_teacher(self, x: torch.Tensor):
        """(teacher logits, teacher final feature map or None), without gradients."""
        if self.teacher is None:
            return None, None
        if self.teacher_hooks is not None:
            self.teacher_hooks.clear()
        if self._teacher_cache is not None:
            return self._teacher_cache(self.teacher, x), None
        with torch.no_grad():
            if self.wants_final_teacher:
                feat = self.teacher.forward_features(x)
                return self.teacher.forward_head(feat), feat
            return self.teacher(x), None

    def run_student(self, x: torch.Tensor):
        if self.hooks is not None:
            self.hooks.clear()
        if self.wants_final:
            feat = self.model.forward_features(x)
            return self.model.forward_head(feat), feat
        return self.model(x), None

    def outputs(self, x, y, index=None) -> StepOutputs:
        t_logits, feat_t = self.run_teacher(x)
        logits, feat_s = self.run_student(x)
        return StepOutputs(x=x, y=y, logits=logits, model=self.model, teacher_logits=t_logits, index=index,
                           features_s=dict(self.hooks.features) if self.hooks is not None else {},
                           features_t=dict(self.teacher_hooks.features) if self.teacher_hooks is not None else {},
                           feat_s=feat_s, feat_t=feat_t, epoch=getattr(self, "epoch", 1))

    def forward(self, x, y, index=None):
        out = self.outputs(x, y, index)
        return out.logits, sum_losses(self.methods, out)

    # ------------------------------------------------------------------ engine hooks
    def setup_methods(self, x: torch.Tensor) -> None:
        """Let the methods build their connectors from a probe forward (eval mode, no gradient,
        no running-statistics update); skipped when no method reads features."""
        if not any(m.uses_features for m in self.methods):
            return
        was = self.training
        self.eval()
        with torch.no_grad():
            probe = self.outputs(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        self.train(was)
        for m in self.methods:
            m.setup(probe)

    def method_param_group(self, lr: float) -> list[dict]:
        """The methods' own parameters: group ``methods`` and, where a method names some
        (:meth:`Method.no_decay_parameters`), group ``methods_no_decay`` with weight decay 0."""
        no_decay = {id(p) for m in self.methods for p in m.no_decay_parameters()}
        params = [p for m in self.methods for p in m.parameters() if p.requires_grad and id(p) not in no_decay]
        quiet = [p for m in self.methods for p in m.no_decay_parameters() if p.requires_grad]
        groups = [{"params": params, "lr": lr, "name": "methods"}] if params else []
        if quiet:
            groups.append({"params": quiet, "lr": lr, "weight_decay": 0.0, "name": "methods_no_decay"})
        return groups

    def param_groups(self, cfg) -> list[dict]:
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": cfg.lr, "name": "model"}]
        return groups + self.method_param_group(cfg.lr)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for m in self.methods:
            m.on_epoch_start(epoch)

    def initialise(self, loader, runtime) -> None:
        for m in self.methods:
            m.initialise(self, loader, runtime)

    def method_records(self) -> list[dict]:
        return [m.record() for m in self.methods]

    def warnings(self) -> list[str]:
        found = [w for m in self.methods for w in m.warnings()]
        weak = weak_teacher_warning(self.teacher_meta) if self.teacher is not None else None
        return found + ([weak] if weak else [])

    def teacher_record(self) -> dict | None:
        if self.teacher is None:
            return None
        return {k: self.teacher_meta.get(k) for k in ("arch", "kind", "dataset", "num_classes")} | {
            "path": str(self.teacher_meta.get("_path", "")),
            "test_top1": (self.teacher_meta.get("metrics") or {}).get("test_top1")}
