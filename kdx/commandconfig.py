"""Declared options of the commands that train nothing: one dataclass per command.

``analyze-conflicts``, ``evaluate``, ``info``, ``import-checkpoint``, ``models``, ``datasets``
and ``methods`` declare their options here as the training commands do in :mod:`kdx.config`
(:func:`kdx.options.option`: default, help, choices, range, short flags; ``argument=True`` for a
positional argument, ``required=True`` for a value that must be given). The CLI derives each
command's flags, its ``--help`` (defaults computed), ``--config FILE`` and ``--print-config``
from them, and every value is checked by :func:`kdx.options.coerce` before the command runs.
``kdx pipeline`` declares its options beside its presets (:class:`kdx.commands.study.PipelineOptions`).
The pipeline's analysis step is an :class:`AnalyzeConflictsOptions` too, so a study's
``[analysis]`` table takes exactly these keys, checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from kdx.config import SEED_MAX
from kdx.engine.metric_log import LOGGERS
from kdx.engine.runs import CHECKPOINTS
from kdx.errors import KdxError
from kdx.options import check_required, option

PLOT_FORMATS = ("png", "pdf", "svg")  # kdx.analysis.plots.PLOT_FORMATS (tests/test_declared_commands.py holds them equal)
# kdx.models.routed.routing.MODES, not imported: that loads torch, and `kdx --help` must not (tests/test_startup.py)
ROUTING_MODES = ("soft", "hard", "gumbel")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps."
IMPORT_KINDS = ("classifier", "explainer")


def check_device(device: Optional[str]) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (None: unset); a one-line error otherwise."""
    if device is None or device in ("auto", "cpu", "cuda", "mps"):
        return
    if str(device).startswith("cuda:") and str(device)[5:].isdigit():
        return
    raise KdxError(f"--device must be one of auto, cpu, cuda, cuda:N, mps; got '{device}'")


class CommandOptions:
    """Base of the declarations here: :meth:`validate` checks what one value alone cannot say."""

    command: ClassVar[str] = ""

    def validate(self) -> None:
        check_required(self)
        check_device(getattr(self, "device", None))


@dataclass
class AnalyzeConflictsOptions(CommandOptions):
    """``kdx analyze-conflicts`` (and the pipeline's analysis step)."""

    command: ClassVar[str] = "analyze-conflicts"
    runs: list[str] = option([], "Explainer runs (or VAM student runs / checkpoints) to compare, one or more.",
                             argument=True, required=True, comma=False, metavar="RUN")
    out: Optional[str] = option(None, "Folder to write the analysis to.", flags=("-o",), required=True, metavar="DIR")
    dataset: Optional[str] = option(None, "Dataset [the runs' own].", flags=("-d",), metavar="NAME")
    split: str = option("val", "Split to analyse: val (seeded like the run; the default, because the class tree "
                        "read here guides students, so it is not read off the test set) or test.", choices=("val", "test"))
    images: int = option(1024, "Seeded subset of the split, the same for every run.", flags=("-n",), low=2,
                         metavar="N")
    label: Optional[list[str]] = option(None, "Name of each run, one per run, comma-separated or repeated [its "
                                        "objective; duplicates get -2, -3...].", flags=("-l",), metavar="NAMES")
    batch_size: int = option(256, "Images per forward/backward chunk.", flags=("-b",), low=1)
    conflict_images: Optional[int] = option(None, "Gradient conflicts on the first N of the images [all].", low=1,
                                            metavar="N")
    conflicts: bool = option(True, "Compute gradient conflicts.")
    data_root: Optional[str] = option(None, "Dataset folder [the run's].", metavar="DIR")
    device: str = option("auto", DEVICE_HELP, metavar="DEVICE")
    plot_format: str = option("png", "Figure format (pdf/svg are written beside the PNGs the report embeds).",
                              choices=PLOT_FORMATS)
    quiet: bool = option(False, "No progress lines and no summary table (errors and warnings still go to stderr).",
                         flags=("-q",))
    log: str = option("csv", "csv, or tensorboard: also the heatmaps and summary numbers into OUT/tensorboard "
                      "(pip install 'kdx[tensorboard]').", choices=LOGGERS)


@dataclass
class EvaluateOptions(CommandOptions):
    """``kdx evaluate``."""

    command: ClassVar[str] = "evaluate"
    checkpoint: Optional[str] = option(None, "A checkpoint file or a run directory.", argument=True, required=True,
                                       metavar="CHECKPOINT")
    dataset: Optional[str] = option(None, "Dataset [the checkpoint's].", flags=("-d",), metavar="NAME")
    split: str = option("test", "Split to evaluate: test (the default: the number a run reports), or val (the "
                        "run's own validation split; analyze-conflicts defaults to it).", choices=("test", "val"))
    data_root: Optional[str] = option(None, "Dataset folder [the run's].", metavar="DIR")
    which: str = option("model", "In a run directory: model (last epoch) or best (on validation).",
                        choices=tuple(CHECKPOINTS))
    routing: Optional[str] = option(None, "Explainers/VAM: routing [from metadata].", choices=ROUTING_MODES)
    tau: Optional[float] = option(None, "Explainers/VAM: routing temperature [from metadata].", low=0, low_open=True)
    per_class_csv: Optional[str] = option(None, "Where to write per-class accuracy [RUN/eval_<dataset>_<split>[_best]"
                                          "[_<routing>][_tau<tau>][_<precision>].csv, or beside the file].",
                                          metavar="FILE")
    device: str = option("auto", DEVICE_HELP, metavar="DEVICE")
    batch_size: Optional[int] = option(None, "Evaluation batch size [the run's eval batch size, or 256].",
                                       flags=("-b",), low=1)
    precision: Optional[str] = option(None, "Autocast precision [the run's, so the numbers agree with its "
                                      "results.json; fp32 if it records none].", choices=PRECISIONS)
    val_fraction: Optional[float] = option(None, "Validation share [the run's, or 0.1].", low=0, high=1,
                                           high_open=True)
    seed: Optional[int] = option(None, "Seed of the validation split [the run's].", low=0, high=SEED_MAX)
    json: bool = option(False, "Print one JSON object (top1, top5 as fractions) for scripts.")
    quiet: bool = option(False, "Print no table (errors still go to stderr; --json still prints its object).",
                         flags=("-q",))


@dataclass
class InfoOptions(CommandOptions):
    """``kdx info``."""

    command: ClassVar[str] = "info"
    checkpoint: Optional[str] = option(None, "A checkpoint file or a run directory.", argument=True, required=True,
                                       metavar="CHECKPOINT")
    json: bool = option(False, "Print the metadata as JSON.")
    which: str = option("model", "In a run directory: model (last epoch) or best (on validation).",
                        choices=tuple(CHECKPOINTS))


@dataclass
class ImportCheckpointOptions(CommandOptions):
    """``kdx import-checkpoint``."""

    command: ClassVar[str] = "import-checkpoint"
    file: Optional[str] = option(None, "A .pth/.pt state dict (RepDistiller {'model': ...} or bare).", argument=True,
                                 required=True, metavar="FILE")
    out: Optional[str] = option(None, "The .safetensors file to write.", flags=("-o",), required=True, metavar="FILE")
    kind: str = option("classifier", "classifier (zoo model) or explainer (official KDExplainer).",
                       choices=IMPORT_KINDS)
    arch: Optional[str] = option(None, "Zoo architecture (kind classifier; `kdx models` lists them).", flags=("-a",),
                                 metavar="ARCH")
    num_classes: Optional[int] = option(None, "Number of classes [from the weights].", low=1)
    in_channels: Optional[int] = option(None, "Input channels [from the weights].", low=1)
    dataset: Optional[str] = option(None, "Dataset the weights were trained on (sets input shape and normalisation "
                                    "in the metadata).", flags=("-d",), metavar="NAME")
    overwrite: bool = option(False, "Replace --out if it exists.")


@dataclass
class ModelsOptions(CommandOptions):
    """``kdx models``."""

    command: ClassVar[str] = "models"
    pattern: Optional[str] = option(None, "Only the architectures matching this pattern (fnmatch, case-insensitive; "
                                    "quote it: 'resnet*').", argument=True, metavar="PATTERN")
    json: bool = option(False, "Print a JSON list (name, family, description, parameters, stage names and channels) "
                        "for scripts.")


@dataclass
class DatasetsOptions(CommandOptions):
    """``kdx datasets``."""

    command: ClassVar[str] = "datasets"
    json: bool = option(False, "Print a JSON list (name, classes, input shape, description) for scripts.")


@dataclass
class MethodsOptions(CommandOptions):
    """``kdx methods``."""

    command: ClassVar[str] = "methods"
    json: bool = option(False, "Print a JSON list (name, paper, reads, options with defaults, commands) for scripts.")
