"""The training-method contract and its registry.

A *method* is one registered :class:`Method` subclass in its own file under
``kdx/distill/methods/`` (or in another package, through the entry-point group
``kdx.methods``). It declares

* ``name``, ``help``, ``paper`` and its ``options`` (:class:`kdx.options.Option`, each with
  default, help, choices and range: the command line, config files, presets and
  ``config.json`` all derive from them);
* what it needs: ``needs_teacher``, ``reads`` (the run values it reads besides its own
  options, e.g. ``seed``: a method sees nothing else of the run config), ``uses_features`` (zoo stages: such methods are offered to zoo students,
  not to the explainer), the student and teacher stages it reads (:meth:`stages`), the CE
  weight it asks for (``ce_weight``), and ``commands`` (which training commands offer it);
* its own trainable modules (connectors, embeddings), built in :meth:`setup` as ordinary
  submodules: they are trained (optimizer group ``methods``) and resumed, not saved in
  ``model.safetensors``;
* an optional initialisation phase, :meth:`initialise`, run once before the first epoch;

and :meth:`loss` returns ``{name: weighted loss}``: the engine sums the values and logs each
one as ``train_loss_<name>`` in metrics.csv. The engine and the commands name no method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from kdx.errors import KdxError
from kdx.options import Option
from kdx.plugins import load_entry_points

ENTRY_POINT_GROUP = "kdx.methods"


@dataclass
class StepOutputs:
    """What one training step produced, handed to every method's :meth:`Method.loss`.

    ``features_s``/``features_t``: ``{stage: tensor}`` for the stages the methods asked for
    (teacher ones computed under ``no_grad``); ``feat_s``/``feat_t``: the final feature maps
    (``forward_features``, before pooling) when a method asked for them (``wants_final``).
    """

    x: Tensor
    y: Tensor
    logits: Tensor
    model: nn.Module
    teacher_logits: Optional[Tensor] = None
    index: Optional[Tensor] = None
    features_s: dict = field(default_factory=dict)
    features_t: dict = field(default_factory=dict)
    feat_s: Optional[Tensor] = None
    feat_t: Optional[Tensor] = None
    epoch: int = 1


@dataclass
class MethodContext:
    """What a method may look at when it is built.

    ``params``: the values of the method's own options and of the run values it ``reads`` (by
    name; :func:`kdx.distill.task.build_methods` hands each method only those); ``student`` and
    ``teacher``: the zoo models (``teacher`` None without one); ``num_classes``;
    ``num_samples``: size of the training split (memory banks); ``train_labels``: its labels
    (N,), by dataset index (crd's class-aware negatives).
    """

    params: dict
    student: Optional[nn.Module] = None
    teacher: Optional[nn.Module] = None
    num_classes: int = 0
    num_samples: int = 0
    in_shape: tuple = ()
    train_labels: Optional[torch.Tensor] = None


class Method(nn.Module):
    """Base class of every training method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    options: ClassVar[tuple] = ()
    needs_teacher: ClassVar[bool] = False
    reads: ClassVar[tuple] = ()  # run values read besides the own options (config fields such as "seed")
    uses_features: ClassVar[bool] = False
    wants_final: ClassVar[bool] = False  # needs feat_s / feat_t (forward_features outputs)
    wants_final_teacher: ClassVar[Optional[bool]] = None  # needs feat_t too (None: as wants_final)
    ce_weight: ClassVar[Optional[float]] = None  # the student's CE weight this method asks for
    commands: ClassVar[frozenset] = frozenset({"student"})
    selectable: ClassVar[bool] = True  # False: added by its own flag (e.g. --hierarchy), not by --method

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.params = {o.name: ctx.params.get(o.name, o.default) for o in self.options}

    # ------------------------------------------------------------------ hooks
    def stages(self) -> tuple[list[str], list[str]]:
        """Student and teacher module names whose outputs :meth:`loss` reads (``name:in`` for a
        module's input)."""
        return [], []

    def setup(self, probe: StepOutputs) -> None:
        """Build trainable connectors from the shapes of a probe forward (no gradient)."""

    def initialise(self, task, loader, runtime) -> None:
        """Optional initialisation phase before the first epoch (FT's paraphraser, FSP)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before every training epoch (counted from 1), also after a resume."""

    def loss(self, out: StepOutputs) -> dict[str, Tensor]:
        raise NotImplementedError

    def attention_module(self):
        """A module of this method with class-by-block attention to report per epoch
        (``routing_weights``, ``attention_entropy``, ``tau``), or None."""
        return None

    def no_decay_parameters(self) -> list:
        """Own parameters trained without weight decay (routing logits); the rest of the method's
        parameters go to the ``methods`` group with the run's decay."""
        return []

    def record(self) -> dict:
        """What the checkpoint metadata records of this method: its name and option values."""
        return {"name": self.name, "params": dict(self.params)}

    def warnings(self) -> list[str]:
        """What this method changed of what was asked or what makes its loss meaningless (printed
        as ``kdx: warning:`` lines before the first step); e.g. an option clamped to the data."""
        return []


# ---------------------------------------------------------------------- registry

_METHODS: dict[str, type[Method]] = {}
_entry_points_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add ``cls`` to the registry under ``cls.name`` (names are unique)."""
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"method class {cls.__name__} needs a name that is an identifier, got {cls.name!r}")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}: {_METHODS[cls.name].__module__}, {cls.__module__}")
    for other in _METHODS.values():
        if other is cls:
            continue
        for opt in cls.options:
            clash = next((o for o in other.options if o.name == opt.name), None)
            if clash is not None and clash != opt:
                raise ValueError(f"method {cls.name!r} declares option {opt.name!r}, which method {other.name!r} "
                                 f"declares differently; rename it (e.g. {cls.name}_{opt.name})")
    _METHODS[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    """Methods of separately installed packages: ``[project.entry-points."kdx.methods"] name = "pkg.mod:Cls"``."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    load_entry_points(ENTRY_POINT_GROUP, "KD method", "a kdx Method subclass",
                      lambda obj: isinstance(obj, type) and issubclass(obj, Method), register_method)


def all_methods() -> dict[str, type[Method]]:
    _load_entry_points()
    return dict(_METHODS)


def methods_for(command: str, selectable_only: bool = True) -> dict[str, type[Method]]:
    """The methods a command offers, by name (sorted)."""
    return {n: c for n, c in sorted(all_methods().items())
            if command in c.commands and (c.selectable or not selectable_only)}


def get_method(name: str, command: Optional[str] = None) -> type[Method]:
    offered = methods_for(command) if command else all_methods()
    if name not in offered:
        where = f" for {command}" if command else ""
        raise KdxError(f"unknown method '{name}'{where}; valid methods: {', '.join(sorted(offered))}")
    return offered[name]


def method_options(command: str) -> list[Option]:
    """Every option of every method the command offers (including flag-added ones), each once."""
    seen: dict[str, Option] = {}
    for cls in methods_for(command, selectable_only=False).values():
        for opt in cls.options:
            seen.setdefault(opt.name, opt)  # equal declarations only: register_method refuses the rest
    return list(seen.values())


def resolve_ce_weight(names: list[str], explicit: Optional[float]) -> float:
    """The student's CE weight: ``explicit`` if given, else the smallest one the methods ask
    for (kd asks 0.1, ls 0: it replaces CE), else 1."""
    if explicit is not None:
        return float(explicit)
    asked = [c.ce_weight for n in names if (c := all_methods()[n]).ce_weight is not None]
    return float(min(asked)) if asked else 1.0


def sum_losses(methods, out: StepOutputs) -> dict[str, Tensor]:
    """Every method's named losses, in method order (names must not collide)."""
    losses: dict[str, Tensor] = {}
    for m in methods:
        for k, v in m.loss(out).items():
            if k in losses:
                raise KdxError(f"two methods both return a loss named '{k}'")
            losses[k] = v
    return losses


def zero_like(t: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float32, device=t.device)
