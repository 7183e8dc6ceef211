"""The ``kdx`` command line (Typer + rich).

Each command only parses its options into a config and calls ``run()`` of its module in
:mod:`kdx.commands`. The training commands' flags, help texts (defaults computed) and checks
are derived from the config declarations of :mod:`kdx.config` and the methods' own options
(:func:`training_command`); nothing about an option is typed here a second time.
"""

import enum
import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import List, Optional

import typer

from kdx.version import __version__
from kdx.engine.progress import table_console
from kdx.errors import KdxError

app = typer.Typer(
    name="kdx",
    help="Explainable knowledge distillation: train a teacher, distill it into KDExplainer, "
    "analyse subtask attention and conflicts, and train students with a virtual attention module.",
    no_args_is_help=True,
    rich_markup_mode="rich",  # option panels; help texts are escaped where they are built
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _fail(message: str, code: int = 2):
    typer.echo(f"kdx: error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn user errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from kdx.engine import rundir
        from kdx.engine.trainer import TrainingInterrupted

        try:
            return fn(*args, **kwargs)
        except KdxError as exc:
            rundir.rollback()  # a run that failed before its first step leaves nothing behind
            _fail(str(exc))
        except TrainingInterrupted as exc:
            if exc.signum == 0:
                typer.echo(f"kdx: stopped after --max-steps; resume with {rundir.resume_hint(exc.run_dir)}", err=True)
                raise typer.Exit(0)
            typer.echo(f"kdx: interrupted ({exc}); resume with {rundir.resume_hint(exc.run_dir)}", err=True)
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("kdx: interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


def _version(value: bool):
    if value:
        typer.echo(f"kdx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the kdx version and exit.")):
    """kdx: explainable knowledge distillation."""


# ------------------------------------------------------------------ training commands from declarations

def _default_text(opt, command: str) -> str:
    """``[default: 240; quick: 15]``: the declared default and where the command's presets differ."""
    from kdx.config import PRESETS
    from kdx.options import coerce, show_default

    parts = [f"default: {show_default(opt)}"]
    for name, values in PRESETS.get(command, {}).items():
        if opt.name in values and values[opt.name] != opt.default:
            parts.append(f"{name}: {show_default(opt.replace(default=coerce(opt, values[opt.name])))}")
    return "[" + "; ".join(parts) + "]"


def _param(opt, command: str) -> inspect.Parameter:
    from kdx.options import type_name

    is_list = typing.get_origin(opt.type) is list
    decls = [opt.flag, *opt.flags]
    kw: dict = {}
    if opt.type is bool:
        decls = [f"{opt.flag}/--no-{opt.flag[2:]}", *opt.flags]
        annotation = Optional[bool]
    elif is_list:
        annotation = Optional[List[str]]
        kw["metavar"] = opt.metavar or type_name(opt).upper().replace(" ", "_")
    else:
        annotation = Optional[str]
        if opt.choices:  # an Enum: the parser refuses other values and lists the valid ones; completion
            annotation = Optional[enum.Enum(f"{opt.name}_choice", {str(c): str(c) for c in opt.choices}, type=str)]
        else:
            kw["metavar"] = opt.metavar or type_name(opt).upper()
    text = opt.help + (" Comma-separated or repeated." if is_list and "comma" not in opt.help.lower() else "")
    help_text = f"{text} {_default_text(opt, command)}"
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(None, *decls, help=help_text, rich_help_panel=opt.panel,
                                                  show_default=False, **kw))


def _meta_params() -> list[inspect.Parameter]:
    return [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
            None, "--config", help="JSON, TOML or YAML file (or a run directory) with options; flags override it.",
            rich_help_panel="Run", show_default=False, metavar="FILE")),
        inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--print-config", help="Print the resolved config (defaults, preset, file, flags) as JSON and exit.",
            rich_help_panel="Run")),
    ]


def make_config(command: str, options: dict):
    """Options of a training command -> its config (validated); ``--print-config`` prints it and exits."""
    import json

    from kdx.config import build_config, config_class, config_to_dict
    from kdx.engine.rundir import config_for_resume

    cls = config_class(command)
    options = dict(options)
    config_file = options.pop("config", None)
    print_config = options.pop("print_config", False)
    cli = {k: (v.value if isinstance(v, enum.Enum) else str(v) if isinstance(v, Path) else v)
           for k, v in options.items() if v is not None}
    if cli.get("resume"):
        cfg = config_for_resume(cls, cli["resume"], cli)
    else:
        cfg = build_config(cls, config_file=str(config_file) if config_file else None, cli=cli)
    if print_config:
        typer.echo(json.dumps(config_to_dict(cfg), indent=2))
        raise typer.Exit(0)
    cfg.validate()
    return cfg


def training_command(command: str, run_module: str, help_text: str):
    """Register ``command``: its flags derive from the config declarations, its body runs ``run_module.run``."""
    from kdx.config import config_class
    from kdx.options import field_options

    opts = [o for o in field_options(config_class(command)) if o.cli]

    def body(**kwargs):
        import importlib

        cfg = make_config(command, kwargs)
        importlib.import_module(f"kdx.commands.{run_module}").run(cfg)

    body.__signature__ = inspect.Signature([_param(o, command) for o in opts] + _meta_params())
    body.__doc__ = help_text
    body.__name__ = run_module
    app.command(command)(handle_errors(body))


training_command("train-teacher", "train_teacher",
    "Train a teacher (any zoo architecture) with cross-entropy.\n\n"
    "Defaults: the paper's CIFAR recipe (SGD 0.05, 240 epochs, x0.1 at 150/180/210, batch 64); on "
    "fashion-mnist-mini (the default dataset) the quick preset's values. Presets: paper, quick (15 "
    "epochs, cosine, batch 128: a CPU-sized run).")

training_command("distill-explainer", "distill_explainer",
    "Distill a teacher into KDExplainer (a hierarchical mixture of experts, one binary subtask per "
    "class).\n\n"
    "Stage 1 learns the tree with soft routing (tau = tau0/epoch, Adam, official warm-up/decay); stage 2 "
    "keeps the tree of the best stage-1 epoch on validation (--stage2-from), frozen under hard routing, "
    "re-initialises the rest and trains with SGD. Official values "
    "are the defaults; --preset quick (the default on fashion-mnist-mini) is a CPU-sized run (narrower "
    "tree, few epochs). Methods: ce, ls, kd and the other logit methods.")

training_command("train-vam-student", "train_vam_student",
    "Train a zoo student with KD methods and a VAM variant.\n\n"
    "--vam tree (the default when --hierarchy gives a class tree: an analyze-conflicts folder or an "
    "explainer run) adds the authors' cluster heads on student stages 1 and 2; --vam head adds kdx's "
    "virtual-attention head (an auxiliary output by default, --vam-head); tree+head both; off none. "
    "Defaults: the paper's student recipe (SGD 0.05, 240 epochs, x0.1 at 150/180/210, batch 64); on "
    "fashion-mnist-mini (the default dataset) the quick preset's values (8 epochs, cosine, batch 128). "
    "--method kd,crd sums methods. --compare trains, for every method of --compare-methods, one arm per "
    "variant of --compare-vam, plus ce, from the same seeds into RUN/seed<s>/<arm> and writes "
    "comparison.csv, comparison_summary.csv and a comparison plot.")


@app.command("analyze-conflicts")
@handle_errors
def analyze_conflicts(
    runs: List[Path] = typer.Argument(..., help="Explainer runs (or VAM student runs / checkpoints) to compare, "
                                      "one or more.", metavar="RUN"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the analysis to."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset [the runs' own]."),
    split: str = typer.Option("val", "--split", help="val (seeded like the run) | test."),
    images: int = typer.Option(1024, "--images", "-n", help="Seeded subset of the split, the same for every run."),
    label: Optional[List[str]] = typer.Option(None, "--label", "-l", metavar="NAMES", help="Name of each run, one per "
                                              "run, comma-separated or repeated [its objective; duplicates get -2, -3...]."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Images per forward/backward chunk."),
    conflict_images: Optional[int] = typer.Option(None, "--conflict-images", help="Gradient conflicts on the first "
                                                  "N of the images [all]."),
    conflicts: bool = typer.Option(True, "--conflicts/--no-conflicts", help="Compute gradient conflicts."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder [the run's]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps"),
    plot_format: str = typer.Option("png", "--plot-format", help="Figure format: png | pdf | svg (pdf/svg are written beside the PNGs the report embeds)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines and no summary table (errors and "
                               "warnings still go to stderr)."),
    log: str = typer.Option("csv", "--log", help="csv | tensorboard (also the heatmaps and summary numbers into OUT/tensorboard)."),
):
    """Subtask attention, entropy, sharing, gradient conflicts and class clusters of explainer runs.

    Typically the same data trained with ce, ls and kd; writes CSVs, clusters/layer{L}.json
    (for the VAM hierarchy guidance), plots and report.md to --out (docs/analyze-conflicts.md).
    """
    from kdx.analysis.plots import set_plot_format
    from kdx.commands import analyze_conflicts as cmd
    from kdx.options import split_list

    set_plot_format(plot_format)
    cmd.run(runs, dataset=dataset, split=split, images=images, labels=split_list(label) if label else None,
            batch_size=batch_size, device=device, out=out, data_root=data_root, conflict_images=conflict_images,
            conflicts=conflicts, quiet=quiet, log=log)


def run_option_help(name: str) -> str:
    """The help of a run option as kdx/config.py declares it (for commands that type their flags by hand)."""
    from kdx.config import RunConfig
    from kdx.options import field_options

    return next(o.help for o in field_options(RunConfig) if o.name == name)


@app.command("pipeline")
@handle_errors
def pipeline_cmd(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study folder [runs/study-<preset>]."),
    config: Optional[Path] = typer.Option(None, "--config", help="Study TOML/JSON with [teacher], [explainer], "
                                          "[analysis], [student] tables (or a study folder)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="demo | evidence | fashion-mnist | cifar10-paper | "
                                         "cifar100-paper | tiny-imagenet [demo]."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective study config and exit."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", "-t", help="Use this teacher run instead of training one."),
    seeds: Optional[List[str]] = typer.Option(None, "--seeds", metavar="INTS", help="Train the explainers (and "
                                              "analyse them) for each of these seeds, e.g. 0,1,2 (comma-separated or "
                                              "repeated)."),
    methods: Optional[List[str]] = typer.Option(None, "--methods", metavar="NAMES", help="Explainer methods, e.g. "
                                                "ce,ls,kd (comma-separated or repeated) [the preset's]."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="STEP.KEY=VALUE", help="STEP.KEY=VALUE: any option of a step's command, "
                                             "e.g. explainer.stage1_epochs=30 or teacher.arch=resnet32 "
                                             "(repeatable; steps: teacher, explainer, analysis, student)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Override the preset's dataset."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder."),
    download: bool = typer.Option(False, "--download", help="Download the dataset if it is missing."),
    device: Optional[str] = typer.Option(None, "--device", help=run_option_help("device")),
    threads: Optional[int] = typer.Option(None, "--threads", help=run_option_help("threads")),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the study in --out (deletes its runs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line per epoch instead of progress bars."),
    plot_format: str = typer.Option("png", "--plot-format", help="Figure format: png | pdf | svg (pdf/svg are written beside the PNGs the report embeds)."),
):
    """Run the whole study: teacher -> explainers (ce, ls, kd) per seed -> analyze-conflicts -> VAM students.

    Every input is checked before the first step. Every step is an ordinary run directory under
    the study folder; a rerun skips finished steps and resumes an interrupted one. Writes
    study_report.md, study_summary.csv and explainer_differences.csv.
    """
    from kdx.analysis.plots import set_plot_format
    from kdx.commands import pipeline as cmd
    from kdx.commands.study import merge_study, parse_sets
    from kdx.options import split_list

    set_plot_format(plot_format)
    flags = {"teacher_run": str(teacher) if teacher else None, "dataset": dataset,
             "data_root": str(data_root) if data_root else None, "device": device, "threads": threads,
             "quiet": True if quiet else None,
             "download": True if download else None, "methods": split_list(methods) if methods else None}
    if seeds:
        try:
            flags["seeds"] = [int(v) for v in split_list(seeds)]
        except ValueError:
            raise KdxError(f"--seeds must be integers (comma-separated or repeated), got '{','.join(seeds)}'") from None
    study = cmd.build_study(preset, str(config) if config else None, merge_study(parse_sets(set_ or []),
                                                                           {k: v for k, v in flags.items() if v is not None}))
    if print_config:
        typer.echo(cmd.print_config(study))
        return
    cmd.run(study, out or Path("runs") / f"study-{study['preset']}", overwrite=overwrite)


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run directory.", metavar="CHECKPOINT"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset [the checkpoint's]."),
    split: str = typer.Option("test", "--split", help="test | val"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder."),
    which: str = typer.Option("model", "--which", help="In a run directory: model (last epoch) or best."),
    routing: Optional[str] = typer.Option(None, "--routing", help="Explainers/VAM: soft | hard | gumbel [from metadata]."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Explainers/VAM: routing temperature [from metadata]."),
    per_class_csv: Optional[Path] = typer.Option(None, "--per-class-csv", help="Where to write per-class accuracy "
                                                 "[RUN/eval_<dataset>_<split>[_best][_<routing>][_tau<tau>]"
                                                 "[_<precision>].csv, or beside the file]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Evaluation batch size [the run's "
                                             "eval batch size, or 256]."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16 autocast [the "
                                            "run's, so the numbers agree with its results.json; fp32 if it records none]."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Validation share [the run's, or 0.1]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the validation split [the run's]."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (top1, top5 as fractions) for scripts."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print no table (errors still go to stderr; --json "
                               "still prints its object)."),
):
    """Top-1, top-5 and per-class accuracy of a checkpoint on a dataset split."""
    from kdx.commands import evaluate as cmd

    cmd.run(checkpoint, dataset=dataset, split=split, data_root=data_root, which=which, routing=routing, tau=tau,
            per_class_csv=per_class_csv, device=device, batch_size=batch_size, val_fraction=val_fraction, seed=seed,
            json_out=json_out, precision=precision, quiet=quiet)


@app.command("info")
@handle_errors
def info_cmd(checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run directory.", metavar="CHECKPOINT"),
             json_out: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
             which: str = typer.Option("model", "--which", help="In a run directory: model (last epoch) or best.")):
    """Show a checkpoint's metadata (kind, arch, dataset, metrics...) as a table."""
    from kdx.commands import info as cmd

    cmd.run(checkpoint, json_out=json_out, which=which)


@app.command("import-checkpoint")
@handle_errors
def import_checkpoint_cmd(
    file: Path = typer.Argument(..., help="A .pth/.pt state dict (RepDistiller {'model': ...} or bare).", metavar="FILE"),
    out: Path = typer.Option(..., "--out", "-o", help="The .safetensors file to write."),
    kind: str = typer.Option("classifier", "--kind", help="classifier (zoo model) | explainer (official KDExplainer)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Zoo architecture (kind classifier)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Number of classes [from the weights]."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="Input channels [from the weights]."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset the weights were trained on "
                                          "(sets input shape and normalisation in the metadata)."),
    force: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
):
    """Convert a foreign PyTorch checkpoint into a kdx safetensors checkpoint (no pickle code runs)."""
    from kdx.commands import import_checkpoint as cmd

    cmd.run(file, out=out, kind=kind, arch=arch, num_classes=num_classes, in_channels=in_channels, dataset=dataset,
            force=force)


@app.command("models")
@handle_errors
def models_cmd():
    """List the architectures of the model zoo."""
    from rich.table import Table

    from kdx.models import get_model_meta, list_models

    table = Table(title="kdx model zoo")
    table.add_column("arch")
    table.add_column("family")
    table.add_column("description")
    for name in list_models():
        meta = get_model_meta(name)
        table.add_row(name, str(meta.get("family", "")), str(meta.get("description", "")))
    table_console().print(table)


@app.command("datasets")
@handle_errors
def datasets_cmd():
    """List the datasets kdx knows (--dataset NAME)."""
    from rich.table import Table

    from kdx.data.registry import all_datasets

    table = Table(title="kdx datasets")
    for col in ("name", "classes", "input", "description"):
        table.add_column(col)
    for spec in all_datasets().values():
        shape = "x".join(map(str, spec.input_shape)) if spec.input_shape else "from the files"
        table.add_row(spec.label, str(spec.num_classes or "from the files"), shape, spec.description)
    table_console().print(table)


def _escape_help_texts() -> None:
    """Help texts show ``[defaults]`` literally: escape them once for rich markup (which the option
    panels need), for every command, whoever wrote it."""
    from rich.markup import escape
    from typer.models import ParameterInfo

    for info in app.registered_commands:
        for p in inspect.signature(info.callback).parameters.values():
            d = p.default
            if isinstance(d, ParameterInfo) and d.help and not getattr(d, "_kdx_escaped", False):
                d.help = escape(d.help)
                d._kdx_escaped = True


_escape_help_texts()


def _plain_argument_metavars() -> None:
    """typer shows a positional argument as ``{runs}... <list[Path]>`` (its Python name and type);
    an argument declared with a ``metavar`` is shown as click would: ``RUN...`` in the usage line
    and in the Arguments panel, with no Python type. Arguments without a metavar are unchanged."""
    from typer.core import TyperArgument

    if getattr(TyperArgument, "_kdx_plain", False):
        return
    usage, shown, type_shown = (TyperArgument._usage_display_name, TyperArgument._rich_display_name,
                                TyperArgument.display_type_rich)

    def plain(self) -> str:
        return self.metavar + ("..." if self.nargs != 1 else "")

    TyperArgument._usage_display_name = lambda self: plain(self) if self.metavar else usage(self)
    TyperArgument._rich_display_name = lambda self: plain(self) if self.metavar else shown(self)
    TyperArgument.display_type_rich = lambda self, ctx: None if self.metavar else type_shown(self, ctx=ctx)
    TyperArgument._kdx_plain = True


_plain_argument_metavars()


def main(argv: list[str] | None = None):  # console-script entry point
    """Run the CLI; a usage error (unknown option, bad value, missing argument) is one line and exit 2."""
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    command = typer.main.get_command(app)
    args = argv if argv is not None else sys.argv[1:]
    if "--no-vam" in args:  # kdx 0.1's flag: refused with its replacement, never reinterpreted
        typer.echo("kdx: error: --no-vam is gone: use --vam off (no VAM), or --vam tree with --hierarchy "
                   "(the authors' cluster heads, which --no-vam --hierarchy trained)", err=True)
        sys.exit(2)
    try:
        code = command.main(args=args, prog_name="kdx", standalone_mode=False)
    except usage_error as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "kdx"
        message = " ".join(exc.format_message().split())
        if not message:  # `kdx` (or a group) without arguments: its help was printed, nothing went wrong
            sys.exit(0)
        typer.echo(f"kdx: error: {message} (see {path} --help)", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("kdx: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
