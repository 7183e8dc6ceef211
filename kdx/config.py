"""Dataclass configs for every command.

A config is filled, lowest precedence first, from: the dataclass defaults, the
recipe of the dataset (the CIFAR recipe of the spec is the default), a
``--preset``, a ``--config`` file (JSON or TOML), and finally the options given
explicitly on the command line. The effective config is saved as
``config.json`` beside every run, and ``--config RUN/config.json`` reproduces it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from kdx.errors import KdxError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore


@dataclass
class RunConfig:
    """Options every training command shares (data, optimisation, runtime)."""

    out: Optional[str] = None
    # data
    dataset: str = "fashion-mnist-mini"
    data_root: Optional[str] = None
    download: bool = False
    val_fraction: float = 0.1
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 2
    augment: bool = True
    max_train_samples: Optional[int] = None  # a seeded, stratified subset of train (debugging, tests)
    # optimisation
    epochs: int = 240
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: list = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    # runtime
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    seed: int = 1029
    deterministic: bool = False
    quiet: bool = False
    save_every: int = 1
    max_steps: Optional[int] = None  # stop (resumably) after this many optimizer steps in total; for tests/debugging
    preset: Optional[str] = None
    resume: Optional[str] = None
    overwrite: bool = False

    def validate(self) -> None:
        positive_int = ["epochs", "batch_size", "eval_batch_size", "save_every"]
        for name in positive_int:
            if getattr(self, name) <= 0:
                raise KdxError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise KdxError(f"--num-workers must be >= 0, got {self.num_workers}")
        if not (self.lr > 0) or not math.isfinite(self.lr):
            raise KdxError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise KdxError("--weight-decay and --momentum must be >= 0")
        if not 0 <= self.val_fraction < 1:
            raise KdxError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise KdxError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0:
            raise KdxError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise KdxError(f"--max-train-samples must be positive, got {self.max_train_samples}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise KdxError(f"--max-steps must be positive, got {self.max_steps}")
        choices = {
            "device": ("auto", "cpu", "cuda", "mps"),
            "precision": ("auto", "fp32", "bf16", "fp16"),
            "channels_last": ("auto", "on", "off"),
            "optimizer": ("sgd", "adam", "adamw"),
        }
        for name, valid in choices.items():
            value = getattr(self, name)
            if name == "device" and isinstance(value, str) and value.startswith("cuda:"):
                continue
            if value not in valid:
                raise KdxError(f"--{name.replace('_', '-')} must be one of {', '.join(valid)}; got '{value}'")
        if self.out is None and self.resume is None:
            raise KdxError("--out RUN_DIR is required")


@dataclass
class TeacherConfig(RunConfig):
    arch: str = "resnet56"


@dataclass
class ExplainerConfig(RunConfig):
    """``kdx distill-explainer``: the two stages of spec section 3 (official values by default)."""

    objective: str = "kd"
    teacher: Optional[str] = None
    smoothing: float = 0.1
    kd_temperature: float = 4.0
    kd_weight: float = 0.9
    ce_weight: float = 0.1
    stage: str = "both"
    from_run: Optional[str] = None
    experts: Optional[list] = None  # None: 2,4,8 (and 16 for inputs > 32 px)
    widths: Optional[str] = None  # "mid:out,..." per expert layer; None: 64:64,64:64,64:32
    head: str = "ce"
    routing: str = "soft"  # stage-1 training routing: soft (official) | gumbel
    tau0: float = 10.0
    stage1_epochs: int = 300
    stage1_lr: float = 0.05
    routing_lr: float = 0.01
    stage2_epochs: int = 300
    stage2_lr: float = 0.05
    stage2_optimizer: str = "sgd"
    halve_every: int = 30
    batch_size: int = 128
    routing_every: int = 1

    def validate(self) -> None:
        super().validate()
        if self.stage not in ("1", "2", "both"):
            raise KdxError(f"--stage must be 1, 2 or both; got '{self.stage}'")
        if self.stage == "2" and not self.from_run:
            raise KdxError("--stage 2 needs --from RUN (a stage-1 run or its stage1/model.safetensors)")
        for name in ("stage1_epochs", "stage2_epochs", "halve_every"):
            if getattr(self, name) <= 0:
                raise KdxError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("stage1_lr", "stage2_lr", "tau0", "kd_temperature"):
            if not getattr(self, name) > 0:
                raise KdxError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.routing_lr < 0:
            raise KdxError(f"--routing-lr must be >= 0, got {self.routing_lr}")
        if not 0 <= self.smoothing < 1:
            raise KdxError(f"--smoothing must be in [0, 1), got {self.smoothing}")
        if self.head not in ("ce", "nce"):
            raise KdxError(f"--head must be ce or nce; got '{self.head}'")
        if self.stage2_optimizer not in ("sgd", "adam"):
            raise KdxError(f"--stage2-optimizer must be sgd or adam; got '{self.stage2_optimizer}'")
        if self.routing not in ("soft", "gumbel"):
            raise KdxError(f"--routing must be soft or gumbel for training; got '{self.routing}'")
        if self.experts is not None and (not self.experts or min(int(e) for e in self.experts) < 1):
            raise KdxError(f"--experts must be positive counts, e.g. 2,4,8; got {self.experts}")
        parse_widths(self.widths)
        from kdx.distill.losses import get_objective

        spec = get_objective(self.objective)
        if spec.needs_teacher and not self.teacher:
            raise KdxError(f"--objective {self.objective} needs --teacher RUN_OR_CHECKPOINT (or use --objective ce|ls)")


def parse_widths(text: Optional[str]):
    """``"64:64,64:64,64:32"`` -> [(64, 64), (64, 64), (64, 32)] (mid:out per expert layer)."""
    if text is None:
        return None
    out = []
    try:
        for part in str(text).split(","):
            mid, _, cout = part.strip().partition(":")
            out.append((int(mid), int(cout or mid)))
    except ValueError:
        raise KdxError(f"--widths must look like 64:64,64:64,64:32 (mid:out per expert layer); got '{text}'") from None
    if min(min(p) for p in out) < 1:
        raise KdxError(f"--widths must be positive; got '{text}'")
    return out


@dataclass
class VamConfig(RunConfig):
    """``kdx train-vam-student``: a zoo student with KD, the virtual attention module and hierarchy guidance."""

    teacher: Optional[str] = None
    arch: str = "resnet8"
    objective: str = "kd"  # ce | kd (kd needs --teacher)
    kd_temperature: float = 4.0
    kd_weight: float = 0.9
    ce_weight: float = 0.1
    vam: bool = True
    vam_blocks: Optional[int] = None  # None: 8 if it divides D, else the largest divisor of D below 8
    vam_entropy: float = 0.0
    vam_hard_eval: bool = False
    vam_tau0: float = 10.0
    hierarchy: Optional[list] = None  # analysis dirs or clusters/layer{L}.json files
    hierarchy_weight: float = 0.1
    hierarchy_stages: Optional[list] = None
    compare: bool = False
    seeds: Optional[list] = None
    teacher_cache_mb: int = 256  # --compare: share the frozen teacher's logits between the methods of a seed

    def validate(self) -> None:
        super().validate()
        if self.objective not in ("ce", "kd"):
            raise KdxError(f"--objective must be ce or kd; got '{self.objective}'")
        if (self.objective == "kd" or self.compare) and not self.teacher:
            raise KdxError("--teacher RUN_OR_CHECKPOINT is required for KD and --compare (or use --objective ce)")
        if self.vam_blocks is not None and self.vam_blocks < 1:
            raise KdxError(f"--vam-blocks must be a positive integer, got {self.vam_blocks}")
        for name in ("vam_tau0", "kd_temperature"):
            if not getattr(self, name) > 0:
                raise KdxError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("vam_entropy", "hierarchy_weight", "kd_weight", "ce_weight", "teacher_cache_mb"):
            if not getattr(self, name) >= 0:
                raise KdxError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.seeds is not None:
            if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
                raise KdxError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {self.seeds}")
            if len(set(self.seeds)) != len(self.seeds):
                raise KdxError(f"--seeds repeats a seed: {self.seeds}")


VAM_PRESETS: dict[str, dict[str, Any]] = {
    # spec section 4: the student recipe of the official code (also the defaults)
    "paper": dict(epochs=240, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="multistep",
                  milestones=[150, 180, 210], gamma=0.1, batch_size=64, seed=1029, vam_tau0=10.0),
    # CPU-sized: a few epochs of a small student on fashion-mnist-mini; tau0 4 as the quick explainer
    "quick": dict(epochs=8, batch_size=128, lr=0.1, schedule="cosine", warmup_epochs=1, weight_decay=5e-4,
                  vam_tau0=4.0, eval_batch_size=500),
}


def vam_recipe(dataset: str | None) -> dict:
    return dict(VAM_PRESETS["paper"])


# ---------------------------------------------------------------- presets / recipes

CIFAR_RECIPE: dict[str, Any] = dict(
    epochs=240, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="multistep",
    milestones=[150, 180, 210], gamma=0.1, batch_size=64, seed=1029,
)
"""Spec section 4: the teacher/student recipe of the official code (the default everywhere)."""

TEACHER_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(CIFAR_RECIPE),
    # a CPU-sized run: a few minutes on 2 cores for a small net on fashion-mnist-mini
    "quick": dict(epochs=15, batch_size=128, lr=0.1, schedule="cosine", warmup_epochs=1, weight_decay=5e-4),
}


EXPLAINER_PRESETS: dict[str, dict[str, Any]] = {
    # spec section 3: the official values (also the defaults)
    "paper": dict(stage1_epochs=300, stage2_epochs=300, stage1_lr=0.05, routing_lr=0.01, stage2_lr=0.05,
                  batch_size=128, seed=1029, tau0=10.0, weight_decay=5e-4, halve_every=30),
    # CPU-sized [kdx]: a narrower tree, 8 + 10 epochs, a faster routing rate (the routing only
    # trains from stage-1 epoch 3), and Adam in stage 2 (the official SGD at 0.05 starts too
    # slowly for a 10-epoch stage); measured in docs/method-decisions.md
    "quick": dict(stage1_epochs=8, stage2_epochs=10, stage1_lr=0.01, routing_lr=0.05, stage2_lr=0.005,
                  stage2_optimizer="adam", batch_size=128, widths="32:32,32:32,32:32", tau0=4.0,
                  halve_every=3, eval_batch_size=500),
}


def explainer_recipe(dataset: str | None) -> dict:
    return dict(EXPLAINER_PRESETS["paper"])


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def load_table_file(path: str | Path, default_name: str = "config.json") -> dict:
    """Parse a JSON or TOML file (or ``DIR/default_name``) into a dict, with one-line errors."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise KdxError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise KdxError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise KdxError(f"config file {path} must hold a table/object of options")
    return data


def read_config_file(path: str | Path) -> dict:
    """Read a JSON or TOML config; TOML tables are flattened (``[optim] lr = 0.1`` -> ``lr``)."""
    data = load_table_file(path)
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("kdx",):
            flat.update(value)
        else:
            flat[key] = value
    flat.pop("kdx", None)
    return {k.replace("-", "_"): v for k, v in flat.items()}


def _coerce(cls, name: str, value):
    """Coerce JSON/TOML values to the field's type (ints stay ints, lists stay lists)."""
    default = next(f for f in fields(cls) if f.name == name)
    kind = default.type if isinstance(default.type, str) else getattr(default.type, "__name__", "")
    if value is None:
        return None
    try:
        if kind in ("int", "Optional[int]") and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind in ("float", "Optional[float]"):
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if kind in ("list", "Optional[list]"):
            if isinstance(value, str):
                return [int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in value.split(",") if v.strip()]
            return list(value)
    except (TypeError, ValueError):
        raise KdxError(f"option '{name}': cannot use value {value!r} (expected {kind})") from None
    return value


def build_config(cls, *, presets: dict[str, dict] | None = None, config_file: str | None = None,
                 cli: dict | None = None, recipe_for_dataset=None):
    """Build a config of dataclass ``cls`` from defaults < recipe < preset < file < CLI."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    file_values = read_config_file(config_file) if config_file else {}
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise KdxError(f"unknown option(s) in {config_file}: {', '.join(unknown)}")

    values: dict = {}
    dataset = cli.get("dataset", file_values.get("dataset", cls.dataset if hasattr(cls, "dataset") else None))
    if recipe_for_dataset is not None:
        values.update(recipe_for_dataset(dataset))
    preset = cli.get("preset", file_values.get("preset"))
    if preset is not None:
        if not presets or preset not in presets:
            valid = ", ".join(sorted(presets or {}))
            raise KdxError(f"unknown preset '{preset}'; valid presets: {valid}")
        values.update(presets[preset])
    values.update(file_values)
    values.update(cli)
    values = {k: _coerce(cls, k, v) for k, v in values.items() if k in names}
    cfg = cls(**values)
    return cfg


def teacher_recipe(dataset: str | None) -> dict:
    return dict(CIFAR_RECIPE)


def save_config(cfg, path: Path) -> None:
    from kdx.engine.io import atomic_write_text

    data = {"kdx": {"command": type(cfg).__name__}}
    data.update(config_to_dict(cfg))
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
