"""Dataclass configs of the training commands: every option declared once, here or in its method.

A field is declared with :func:`kdx.options.option` (default, help, choices, range, panel);
the KD methods of :mod:`kdx.distill.methods` declare their own options, which
:func:`config_class` adds to the configs of the commands that offer them. The CLI flags, the
help text, ``--config`` files, presets, ``config.json`` and the pipeline's study tables all
derive from these declarations.

A config is filled, lowest precedence first, from: the declared defaults, the dataset's recipe
(fashion-mnist-mini, the embedded CPU set, takes the ``quick`` preset; every other dataset the
paper's recipe, which the declared defaults are), a ``--preset``, a ``--config`` file (JSON,
TOML or YAML), and finally the options given on the command line. Every value is checked
(type, finiteness, range, choices) by :func:`kdx.options.coerce`. The effective config is saved
as ``config.json`` beside every run, and ``--config RUN/config.json`` reproduces it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, fields
from typing import Any, Optional

from kdx.configfile import (build_config, command_of, config_to_dict, load_table_file, options_of,  # noqa: F401
                            read_config_file, save_config)
from kdx.errors import KdxError
from kdx.options import as_field, option

RUN, DATA, OPTIM, RUNTIME = "Run", "Data", "Optimisation", "Runtime"
SEED_MAX = 2**32 - 1
DEFAULT_SEED = 1029  # the official code's seed
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("multistep", "cosine", "constant", "halving")
VAM_VARIANTS = ("off", "tree", "head", "tree+head")
VAM_CHOICES = ("auto",) + VAM_VARIANTS


@dataclass
class RunConfig:
    """Options every training command shares (run directory, data, runtime)."""

    out: Optional[str] = option(None, "Run directory to write (required unless --resume).", panel=RUN,
                                flags=("-o",), metavar="DIR")
    preset: Optional[str] = option(None, "Named recipe; flags override it.", panel=RUN, metavar="NAME")
    resume: Optional[str] = option(None, "Continue the run in this directory exactly where it stopped.", panel=RUN,
                                   metavar="DIR")
    overwrite: bool = option(False, "Replace a run already in --out.", panel=RUN)
    # data
    dataset: str = option("fashion-mnist-mini", "Dataset, as `kdx datasets` lists them (the default, fashion-mnist-mini, "
                          "is embedded and takes the quick preset's values as defaults).",
                          panel=DATA, flags=("-d",), metavar="NAME")
    data_root: Optional[str] = option(None, "Folder holding the dataset files [$KDX_DATA or ~/.cache/kdx/data].",
                                      panel=DATA, metavar="DIR")
    download: bool = option(False, "Download the dataset if missing (opt-in).", panel=DATA)
    val_fraction: float = option(0.1, "Share of train held out for validation and best-epoch selection.", panel=DATA,
                                 low=0, high=1, high_open=True)
    batch_size: int = option(64, "Training batch size per process.", panel=DATA, flags=("-b",), low=1)
    eval_batch_size: int = option(256, "Evaluation batch size.", panel=DATA, low=1)
    num_workers: int = option(2, "DataLoader workers for image-folder datasets.", panel=DATA, low=0)
    augment: bool = option(True, "Random crop + flip on training batches.", panel=DATA)
    max_train_samples: Optional[int] = option(None, "Train on a seeded, stratified subset of this size.", panel=DATA,
                                              low=1)
    label_smoothing: Optional[float] = option(None, "Label smoothing epsilon of the cross-entropy "
                                              "[unset: 0, or 0.1 under --method ls].", panel=OPTIM, low=0, high=1,
                                              high_open=True)
    weight_decay: float = option(5e-4, "Weight decay.", panel=OPTIM, low=0)
    momentum: float = option(0.9, "SGD momentum.", panel=OPTIM, low=0, high=1)
    # runtime
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps.", panel=RUNTIME)
    precision: str = option("auto", "Autocast precision (auto: bf16 where the hardware has it).", panel=RUNTIME,
                            choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: str = option("auto", "Channels-last memory format (auto: on for CUDA and CPU).",
                                panel=RUNTIME, choices=("auto", "on", "off"))
    threads: Optional[int] = option(None, "CPU threads of torch's operators (default: torch's choice, usually the "
                                    "core count). A run repeats bit for bit only at the same count; "
                                    "results.json records the count used.", panel=RUNTIME, low=1)
    seed: int = option(DEFAULT_SEED, "Random seed.", panel=RUNTIME, low=0, high=SEED_MAX)
    deterministic: bool = option(False, "Deterministic algorithms (bit-exact resume).", panel=RUNTIME)
    quiet: bool = option(False, "One line per epoch instead of progress bars.", panel=RUNTIME, flags=("-q",))
    save_every: int = option(1, "Save the resume state every N epochs.", panel=RUNTIME, low=1)
    max_steps: Optional[int] = option(None, "Stop (resumably) after this many optimizer steps in total.",
                                      panel=RUNTIME, low=1)
    max_bad_steps: int = option(0, "Non-finite losses tolerated (steps skipped) before the run stops.",
                                panel=RUNTIME, low=0)
    log: str = option("csv", "Per-epoch scalars beside metrics.csv: csv (metrics.csv only), tensorboard "
                      "(RUN/tensorboard; pip install 'kdx[tensorboard]') or mlflow (params = the resolved config; "
                      "--mlflow-uri; pip install 'kdx[mlflow]').", panel=RUNTIME,
                      choices=("csv", "tensorboard", "mlflow"))
    mlflow_uri: Optional[str] = option(None, "MLflow tracking URI of --log mlflow (sqlite:///mlflow.db, "
                                       "http://host:5000, ...) [$MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db].",
                                       panel=RUNTIME, metavar="URI")

    def validate(self) -> None:
        """Cross-field checks (each value was checked on its own when the config was built)."""
        if self.out is None and self.resume is None:
            raise KdxError("--out RUN_DIR is required")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or str(self.device).startswith("cuda:")):
            raise KdxError(f"--device must be one of auto, cpu, cuda, cuda:N, mps; got '{self.device}'")


@dataclass
class OptimConfig(RunConfig):
    """One optimiser and schedule (teacher and student; the explainer has one per stage)."""

    epochs: int = option(240, "Training epochs.", panel=OPTIM, flags=("-e",), low=1)
    optimizer: str = option("sgd", "Optimizer.", panel=OPTIM, choices=OPTIMIZERS)
    lr: float = option(0.05, "Base learning rate.", panel=OPTIM, low=0, low_open=True)
    nesterov: bool = option(False, "Nesterov momentum (SGD).", panel=OPTIM)
    schedule: str = option("multistep", "Learning-rate schedule.", panel=OPTIM, choices=SCHEDULES)
    milestones: list[int] = option([150, 180, 210], "Epochs of the multistep decay.", panel=OPTIM, low=1)
    gamma: float = option(0.1, "Multistep decay factor.", panel=OPTIM, low=0, low_open=True, high=1)
    warmup_epochs: int = option(0, "Linear warm-up epochs.", panel=OPTIM, low=0)


@dataclass
class TeacherConfig(OptimConfig):
    """``kdx train-teacher``."""

    arch: str = option("resnet56", "Zoo architecture (`kdx models` lists them).", panel="Model", flags=("-a",),
                       metavar="ARCH")


@dataclass
class ExplainerBase(RunConfig):
    """``kdx distill-explainer``: the two stages of spec section 3 (official values by default)."""

    method: list[str] = option(["kd"], "Training method(s), comma-separated: ce, ls, kd, ... (see --help).",
                               panel="Method", metavar="NAMES")
    teacher: Optional[str] = option(None, "Teacher run or checkpoint (for kd and other teacher methods).",
                                    panel="Method", flags=("-t",), metavar="PATH")
    stage: str = option("both", "Stages to train.", panel="Explainer", choices=("1", "2", "both"))
    from_run: Optional[str] = option(None, "Stage-1 run (or checkpoint) that --stage 2 starts from.",
                                     panel="Explainer", flags=("--from",), metavar="PATH")
    experts: Optional[list[int]] = option(None, "Experts per layer [2,4,8; 2,4,8,16 above 32 px].",
                                          panel="Explainer", low=1, metavar="COUNTS")
    widths: Optional[str] = option(None, "mid:out channels per expert layer [64:64,64:64,64:32].",
                                   panel="Explainer", metavar="SPEC")
    head: str = option("ce", "Leaf head: ce (1 output) | nce (2 outputs, max).", panel="Explainer",
                       choices=("ce", "nce"))
    routing: str = option("soft", "Stage-1 routing: soft (official) | gumbel.", panel="Explainer",
                          choices=("soft", "gumbel"))
    tau0: float = option(10.0, "Stage-1 temperature tau = tau0 / epoch.", panel="Explainer", low=0, low_open=True)
    stage1_epochs: int = option(300, "Stage-1 epochs.", panel="Explainer", low=1)
    stage1_lr: float = option(0.05, "Stage-1 Adam lr of experts and heads.", panel="Explainer", low=0,
                              low_open=True)
    routing_lr: float = option(0.01, "Stage-1 Adam lr of the routing.", panel="Explainer", low=0)
    stage2_epochs: int = option(300, "Stage-2 epochs.", panel="Explainer", low=1)
    stage2_lr: float = option(0.05, "Stage-2 lr.", panel="Explainer", low=0, low_open=True)
    stage2_optimizer: str = option("sgd", "Stage-2 optimizer: sgd (official) | adam.", panel="Explainer",
                                   choices=("sgd", "adam"))
    halve_every: int = option(30, "Stage-2 lr halving period in epochs.", panel="Explainer", low=1)
    stage2_from: str = option("best", "Stage-1 checkpoint stage 2 starts from: best (on validation, never test) "
                              "| last (epoch).", panel="Explainer", choices=("best", "last"))
    batch_size: int = option(128, "Training batch size per process.", panel=DATA, flags=("-b",), low=1)

    def validate(self) -> None:
        super().validate()
        if self.stage == "2" and not self.from_run:
            raise KdxError("--stage 2 needs --from RUN (a stage-1 run or its stage1/model.safetensors)")
        parse_widths(self.widths)
        _check_methods(self, "explainer")


@dataclass
class StudentBase(OptimConfig):
    """``kdx train-vam-student``: a zoo student with KD methods, the VAM and hierarchy guidance."""

    teacher: Optional[str] = option(None, "Teacher run or checkpoint (teacher methods, --compare).",
                                    panel="Method", flags=("-t",), metavar="PATH")
    arch: str = option("resnet8", "Zoo student architecture.", panel="Student", flags=("-a",), metavar="ARCH")
    method: list[str] = option(["kd"], "Training method(s), comma-separated (e.g. kd or kd,crd); their losses "
                               "add up.", panel="Method", metavar="NAMES")
    vam: str = option("auto", "VAM variant: tree = the authors' tree-guided cluster heads on student stages 1 and 2 "
                      "(needs --hierarchy); head = the virtual-attention head [kdx] (form: --vam-head); tree+head = "
                      "both; off = none; auto = tree when --hierarchy gives a class tree, else off.",
                      panel="VAM", choices=VAM_CHOICES)
    vam_head: str = option("aux", "Form of the head of --vam head/tree+head: aux = a training-time auxiliary output "
                           "beside the student's classifier, distilled from the teacher and dropped at inference "
                           "[kdx]; replace = instead of the linear classifier (the --vam of kdx 0.1).",
                           panel="VAM", choices=("aux", "replace"))
    vam_blocks: Optional[int] = option(None, "K virtual experts; must divide the feature channels D "
                                       "[8, or the largest divisor of D below 8].", panel="VAM", low=1)
    vam_hard_eval: bool = option(False, "Hard routing at evaluation (always soft while training).", panel="VAM")
    vam_tau0: float = option(10.0, "VAM temperature tau = tau0 / epoch.", panel="VAM", low=0, low_open=True)
    compare: bool = option(False, "Train the comparison grid (see --compare-methods) and compare the arms.",
                           panel="Compare")
    compare_methods: list[str] = option(["kd"], "--compare: the methods whose arms are trained (one per variant "
                                        "of --compare-vam), e.g. kd,at,dkd; kd+crd combines two.",
                                        panel="Compare", metavar="NAMES")
    compare_vam: list[str] = option(list(VAM_VARIANTS), "--compare: the VAM variants trained for every method "
                                    "(the tree ones only with --hierarchy).", panel="Compare", choices=VAM_VARIANTS,
                                    metavar="VARIANTS")
    compare_weights: Optional[list[float]] = option(None, "--compare: tree weights w, one tree arm each "
                                                    "[--hierarchy-weight].", panel="Compare", low=0,
                                                    metavar="WEIGHTS")
    compare_ce: bool = option(True, "--compare: train the ce arm too (leave it out when another grid into the same "
                              "folder has it).", panel="Compare")
    seeds: Optional[list[int]] = option(None, "Seeds, one run each, e.g. 0,1,2.", panel="Compare", low=0,
                                        high=SEED_MAX, metavar="SEEDS")
    teacher_cache_mb: int = option(256, "--compare: share the frozen teacher's logits between the arms of a seed "
                                   "(MiB).", panel="Compare", low=0)
    plot_format: Optional[str] = option(None, "--compare figure format; pdf/svg are written beside comparison.png "
                                        "[png].", panel="Compare", choices=("png", "pdf", "svg"))

    @staticmethod
    def upgrade_values(values: dict) -> dict:
        """Config files of kdx 0.1 (``vam: true/false``, ``--hierarchy`` alone meaning its heads) ->
        today's variants, with the same meaning: a true ``vam`` was the replacing head."""
        old = values.get("vam")
        if isinstance(old, bool):
            values = dict(values)
            tree = bool(values.get("hierarchy"))
            values["vam"] = ("tree+head" if tree else "head") if old else ("tree" if tree else "off")
            if old:
                values.setdefault("vam_head", "replace")
        return values

    def vam_variant(self) -> tuple[str, str]:
        """The variant this run trains and why (``auto`` resolved): ``(variant, reason)``."""
        if self.vam != "auto":
            return self.vam, "--vam " + self.vam
        if self.hierarchy:
            return "tree", ("the default with a class tree: the authors' mechanism, the variant with evidence "
                            "(docs/reproducing.md)")
        return "off", ("the default without a class tree (--hierarchy ANALYSIS_OR_EXPLAINER_RUN gives one): "
                       "the head alone has not been shown to help (docs/reproducing.md); --vam head trains it")

    def trains_tree(self) -> bool:
        return "tree" in self.vam_variant()[0]

    def trains_head(self) -> bool:
        return "head" in self.vam_variant()[0]

    def validate(self) -> None:
        super().validate()
        if not self.compare:
            variant = self.vam_variant()[0]
            if "tree" in variant and not self.hierarchy:
                raise KdxError(f"--vam {variant} needs --hierarchy ANALYSIS_OR_EXPLAINER_RUN (the class tree)")
            if "tree" not in variant and self.hierarchy:
                raise KdxError(f"--hierarchy feeds the tree heads, which --vam {variant} does not train; "
                               f"use --vam tree or tree+head, or drop --hierarchy")
        if self.compare and not self.teacher:
            raise KdxError("--compare needs --teacher RUN_OR_CHECKPOINT")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise KdxError(f"--seeds repeats a seed: {self.seeds}")
        _check_methods(self, "student")
        if self.compare:
            from kdx.distill.methods import get_method

            for item in self.compare_methods:
                for name in item.split("+"):
                    get_method(name, "student")


def _check_methods(cfg, command: str) -> None:
    from kdx.distill.methods import get_method

    if not cfg.method:
        raise KdxError("--method needs at least one method name")
    for name in cfg.method:
        cls = get_method(name, command)
        if cls.needs_teacher and not cfg.teacher:
            raise KdxError(f"--method {name} needs --teacher RUN_OR_CHECKPOINT")


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


# ---------------------------------------------------------------- presets and dataset recipes

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "train-teacher": {
        "paper": {},  # spec section 4: the official CIFAR recipe, which the declared defaults are
        "quick": dict(epochs=15, batch_size=128, lr=0.1, schedule="cosine", warmup_epochs=1),
    },
    "distill-explainer": {
        "paper": {},  # spec section 3: the official values, which the declared defaults are
        # CPU-sized [kdx]: a narrower tree, 8 + 10 epochs, a faster routing rate (the routing only
        # trains from stage-1 epoch 3), and Adam in stage 2 (the official SGD at 0.05 starts too
        # slowly for a 10-epoch stage); measured in docs/method-decisions.md
        "quick": dict(stage1_epochs=8, stage2_epochs=10, stage1_lr=0.01, routing_lr=0.05, stage2_lr=0.005,
                      stage2_optimizer="adam", widths="32:32,32:32,32:32", tau0=4.0, halve_every=3,
                      eval_batch_size=500),
    },
    "train-vam-student": {
        "paper": {},
        # CPU-sized: a few epochs of a small student on fashion-mnist-mini; tau0 4 as the quick explainer
        "quick": dict(epochs=8, batch_size=128, lr=0.1, schedule="cosine", warmup_epochs=1, vam_tau0=4.0,
                      eval_batch_size=500),
    },
}

DATASET_RECIPES = {"fashion-mnist-mini": "quick"}
"""The preset whose values are a dataset's defaults (every other dataset: the declared ones, the paper's)."""


def recipe_preset(dataset: Optional[str]) -> str:
    return DATASET_RECIPES.get(str(dataset), "paper")


# ---------------------------------------------------------------- config classes per command

_BASES = {"train-teacher": (TeacherConfig, None), "distill-explainer": (ExplainerBase, "explainer"),
          "train-vam-student": (StudentBase, "student")}
COMMANDS = tuple(_BASES)


@functools.lru_cache(maxsize=None)
def config_class(command: str) -> type:
    """The config dataclass of ``command``, with the options of the methods it offers."""
    base, methods_for_command = _BASES[command]
    if methods_for_command is None:
        return base
    from kdx.distill.methods import method_options

    own = {f.name for f in fields(base)}
    clash = [opt.name for opt in method_options(methods_for_command) if opt.name in own]
    if clash:  # a method option named like a command option would be silently shadowed by it
        raise KdxError(f"method option(s) {', '.join(clash)} collide with options of {command}; a method's "
                       f"options need names of their own (prefix them with the method name)")
    extra = [as_field(opt) for opt in method_options(methods_for_command)]
    name = {"distill-explainer": "ExplainerConfig", "train-vam-student": "StudentConfig"}[command]
    cls = dataclasses.make_dataclass(name, extra, bases=(base,))
    cls.__module__ = __name__
    cls.command = command
    return cls


TeacherConfig.command = "train-teacher"
for _cls, _command in ((TeacherConfig, "train-teacher"), (ExplainerBase, "distill-explainer"), (StudentBase, "train-vam-student")):
    _cls.presets = PRESETS[_command]
    _cls.recipe_preset = staticmethod(recipe_preset)


def __getattr__(name: str):  # ExplainerConfig / StudentConfig are built on first use (methods may be plug-ins)
    if name == "ExplainerConfig":
        return config_class("distill-explainer")
    if name == "StudentConfig":
        return config_class("train-vam-student")
    raise AttributeError(name)
