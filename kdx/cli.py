"""The ``kdx`` command line (Typer + rich).

Each command only parses its options into a config and calls a function of its module in
:mod:`kdx.commands` with it. Every command's arguments, flags, help texts (defaults computed),
``--config FILE``, ``--print-config`` and value checks derive from one dataclass of declared
options (:func:`declared_command`): the training commands' configs of :mod:`kdx.config` (with the
methods' own options), the other commands' of :mod:`kdx.commandconfig`, the pipeline's
:class:`kdx.commands.study.PipelineOptions`. Nothing about an option is typed here.
"""

import dataclasses
import enum
import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from kdx import commandconfig as cc
from kdx.commands.study import PipelineOptions
from kdx.errors import KdxError
from kdx.version import __version__


@dataclasses.dataclass
class LazyCommand:
    """A registered command: its help text now, its click command built on first use (the training
    commands' options come from the method registry, which imports torch)."""

    help: str
    build: typing.Callable[[], typing.Any]
    command: typing.Any = None

    def get(self):
        if self.command is None:
            self.command = self.build()
        return self.command

    def stub(self, name: str):
        """What the command list of ``kdx --help`` and completion of command names show: name and help."""
        return self.command or TyperCommand(name=name, help=self.help, rich_markup_mode=app.rich_markup_mode)


COMMANDS: dict[str, LazyCommand] = {}  # name -> command, in the order of registration


class LazyCommands(dict):
    """``group.commands``: looking a command up builds it; listing names (``in``, iteration, keys) does not."""

    def __getitem__(self, name):
        return COMMANDS[name].get()

    def get(self, name, default=None):
        return COMMANDS[name].get() if name in COMMANDS else default

    def __contains__(self, name):
        return name in COMMANDS

    def __iter__(self):
        return iter(COMMANDS)

    def __len__(self):
        return len(COMMANDS)

    def keys(self):
        return COMMANDS.keys()

    def items(self):
        return [(n, c.get()) for n, c in COMMANDS.items()]

    def values(self):
        return [c.get() for c in COMMANDS.values()]


class LazyGroup(TyperGroup):
    """The ``kdx`` group: ``kdx --help``, ``--version`` and completion of command names build no
    command (nor import torch); running a command, its ``--help`` or completing its options builds it."""

    listing = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, cmd in dict(self.commands).items():  # registered on ``app`` directly: built already
            COMMANDS[name] = LazyCommand(cmd.help or "", lambda cmd=cmd: cmd, cmd)
        self.commands = LazyCommands()

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        plain_flags(params)  # --version, --help: no <bool> beside them
        return params

    def get_command(self, ctx, cmd_name: str):
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        return entry.stub(cmd_name) if self.listing else entry.get()

    def _listing(self, method, *args):
        self.listing = True
        try:
            return method(*args)
        finally:
            self.listing = False

    def format_help(self, ctx, formatter):
        return self._listing(super().format_help, ctx, formatter)

    def shell_complete(self, ctx, incomplete: str):
        return self._listing(super().shell_complete, ctx, incomplete)


app = typer.Typer(
    name="kdx",
    help="Explainable knowledge distillation: train a teacher, distill it into KDExplainer, "
    "analyse subtask attention and conflicts, and train students with a virtual attention module.",
    cls=LazyGroup,
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
            rundir.rollback()
            typer.echo("kdx: interrupted", err=True)
            raise typer.Exit(130)
        except (typer.Exit, typer.Abort) + click_exceptions():
            raise
        except Exception as exc:  # the last line of defence: a bug or an unforeseen fault, never a traceback
            rundir.rollback()  # what the command created is undone as for a KdxError
            unexpected_error(exc)

    return wrapper


def click_exceptions() -> tuple:
    """click's own exceptions (usage errors), which click reports itself."""
    return tuple(c for c in typer.BadParameter.__mro__ if c.__name__ in ("UsageError", "ClickException"))


def unexpected_error(exc: BaseException, code: int = 1):
    """One line naming the error and the file holding the full traceback, exit ``code`` (1: not a
    user error but a fault kdx did not foresee). ``KDX_DEBUG=1`` prints the traceback too."""
    import os
    import tempfile
    import time
    import traceback

    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = f"kdx-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    where = Path(tempfile.gettempdir()) / name
    try:
        with open(where, "x") as fh:
            fh.write(f"kdx {__version__}: {' '.join(sys.argv)}\n{trace}")
        told = f"full traceback in {where}"
    except OSError as err:
        told = f"the traceback could not be written ({err.strerror or err})"
    if os.environ.get("KDX_DEBUG") == "1":
        typer.echo(trace, err=True, nl=False)
    detail = " ".join(str(exc).split())[:300]
    typer.echo(f"kdx: error: unexpected {type(exc).__name__}{': ' + detail if detail else ''} ({told}; "
               f"KDX_DEBUG=1 shows it; please report it)", err=True)
    raise typer.Exit(code)


def _version(value: bool):
    if value:
        typer.echo(f"kdx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the kdx version and exit.")):
    """kdx: explainable knowledge distillation."""


# ------------------------------------------------------------------ commands from declarations

TRAINING_CONFIG_HELP = "JSON, TOML or YAML file (or a run directory) with options; flags override it."
CONFIG_HELP = "JSON, TOML or YAML file with this command's options (as --print-config prints them); flags override it."


def _default_text(opt, presets: dict) -> str:
    """``[default: 240; quick: 15]``: the declared default and where the command's presets differ;
    ``[required]`` for an option that must be given."""
    from kdx.options import coerce, show_default

    if opt.required:
        return "[required]"
    parts = [f"default: {show_default(opt)}"]
    for name, values in presets.items():
        if opt.name in values and values[opt.name] != opt.default:
            parts.append(f"{name}: {show_default(opt.replace(default=coerce(opt, values[opt.name])))}")
    return "[" + "; ".join(parts) + "]"


def _completer(choices: tuple):
    """Shell completion of a choice that the parser takes as a string (and :func:`coerce` checks)."""
    def complete(incomplete: str) -> list[str]:
        return [str(c) for c in choices if str(c).startswith(incomplete)]

    return complete


def _argument(opt) -> inspect.Parameter:
    """A positional argument: ``RUN...`` for a list, required unless declared otherwise."""
    is_list = typing.get_origin(opt.type) is list
    annotation = List[str] if is_list else (str if opt.required else Optional[str])
    info = typer.Argument(... if opt.required else None, help=opt.help, metavar=opt.metavar or opt.name.upper(),
                          show_default=False)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=info)


def _param(opt, presets: dict, typed_choices: bool) -> inspect.Parameter:
    """The typer parameter of one declared option. Every value arrives as a string (or a list of
    strings) and is checked by :func:`kdx.options.coerce`; ``typed_choices`` lets the parser refuse
    an invalid choice itself (the training commands' flags)."""
    from kdx.options import type_name

    if opt.argument:
        return _argument(opt)
    is_list = typing.get_origin(opt.type) is list
    decls = [opt.flag, *opt.flags]
    kw: dict = {}
    if opt.type is bool:
        decls = [f"{opt.flag}/--no-{opt.flag[2:]}", *opt.flags]
        annotation = Optional[bool]
    elif is_list:
        annotation = Optional[List[str]]
        kw["metavar"] = opt.metavar or type_name(opt).upper().replace(" ", "_")
    elif opt.choices and typed_choices:  # an Enum: the parser refuses other values and lists the valid ones
        annotation = Optional[enum.Enum(f"{opt.name}_choice", {str(c): str(c) for c in opt.choices}, type=str)]
    else:
        annotation = Optional[str]
        shown = f"<{'|'.join(map(str, opt.choices))}>" if opt.choices else type_name(opt).upper()
        kw["metavar"] = opt.metavar or shown
        if opt.choices:
            kw["autocompletion"] = _completer(opt.choices)
    text = opt.help
    if is_list and "comma" not in text.lower() and "repeat" not in text.lower():
        text += " Comma-separated or repeated." if opt.comma else " Repeatable."
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(None, *decls, help=f"{text} {_default_text(opt, presets)}",
                                                  rich_help_panel=opt.panel, show_default=False, **kw))


def _meta_params(declared: set, panel: str, config_help: str) -> list[inspect.Parameter]:
    """``--config FILE`` and ``--print-config``, unless the command declares options of these names itself."""
    params = []
    if "config" not in declared:
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                        default=typer.Option(None, "--config", help=config_help, rich_help_panel=panel,
                                                             show_default=False, metavar="FILE")))
    if "print_config" not in declared:
        params.append(inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                        default=typer.Option(False, "--print-config", rich_help_panel=panel,
                                                             help="Print the resolved config (defaults, preset, file, "
                                                                  "flags) as JSON and exit.")))
    return params


def make_config(cls, options: dict):
    """The parsed options of a command -> its config of declared options ``cls`` (every value
    checked); ``--print-config`` prints it and exits; then the config's own checks (``validate``)."""
    import json

    from kdx.configfile import build_config, config_to_dict, options_of

    own = options_of(cls)
    options = dict(options)
    config_file = None if "config" in own else options.pop("config", None)
    print_config = False if "print_config" in own else options.pop("print_config", False)
    cli = {k: (v.value if isinstance(v, enum.Enum) else str(v) if isinstance(v, Path) else v)
           for k, v in options.items() if v is not None}
    if cli.get("resume") and "resume" in own:
        from kdx.engine.rundir import config_for_resume

        if config_file:  # the run's own config.json is the config of a resumed run
            raise KdxError(f"--resume takes the run's own config ({cli['resume']}/config.json); drop --config "
                           f"{config_file}, or start a new run with --config and --out")
        cfg = config_for_resume(cls, cli["resume"], cli)
    else:
        cfg = build_config(cls, config_file=str(config_file) if config_file else None, cli=cli)
    if print_config:
        typer.echo(json.dumps(config_to_dict(cfg), indent=2))
        raise typer.Exit(0)
    cfg.validate()
    return cfg


def declared_command(command: str, cls, target: str, help_text: str, *, typed_choices: bool = False,
                     panel: str = "Options", config_help: str = CONFIG_HELP) -> None:
    """Register ``command`` (built on first use, :class:`LazyCommand`): its arguments and flags derive
    from the declarations of ``cls`` (a class, or a function returning it), its body builds the config
    (:func:`make_config`) and calls ``target`` (``module:function`` of :mod:`kdx.commands`) with it."""
    COMMANDS[command] = LazyCommand(help_text, functools.partial(
        _build_command, command, cls, target, help_text, typed_choices, panel, config_help))


def _build_command(command: str, cls, target: str, help_text: str, typed_choices: bool, panel: str,
                   config_help: str):
    """The click command of a :func:`declared_command`."""
    from typer.models import CommandInfo

    from kdx.options import field_options

    cls = cls if isinstance(cls, type) else cls()
    opts = [o for o in field_options(cls) if o.cli]
    presets = getattr(cls, "presets", {})
    module, _, function = target.partition(":")

    def body(**kwargs):
        import importlib

        cfg = make_config(cls, kwargs)
        getattr(importlib.import_module(f"kdx.commands.{module}"), function)(cfg)

    params = [_param(o, presets, typed_choices) for o in opts]
    body.__signature__ = inspect.Signature(params + _meta_params({o.name for o in opts}, panel, config_help))
    body.__doc__ = help_text
    body.__name__ = module if function == "run" else function
    callback = handle_errors(body)
    _escape_help(callback)
    return typer.main.get_command_from_info(CommandInfo(name=command, cls=KdxCommand, callback=callback),
                                            pretty_exceptions_short=app.pretty_exceptions_short,
                                            rich_markup_mode=app.rich_markup_mode)


def training_command(command: str, run_module: str, help_text: str) -> None:
    """A training command: its config class (with the options of the methods it offers, so torch
    comes in with the method registry) from :mod:`kdx.config`, looked up when the command is built."""

    def config():
        from kdx.config import config_class

        return config_class(command)

    declared_command(command, config, f"{run_module}:run", help_text, typed_choices=True, panel="Run",
                     config_help=TRAINING_CONFIG_HELP)


class PlainArgument(TyperArgument):
    """A positional argument declared with a metavar, shown as click shows one: ``RUN...`` in the
    usage line (typer writes ``{RUN}...``) and no Python type (``<list[str]>``) in the Arguments panel."""

    def get_usage_pieces(self, ctx) -> list[str]:
        if self.metavar is None:
            return super().get_usage_pieces(ctx)
        name = self.metavar + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]

    def display_type_rich(self, ctx):
        return None if self.metavar is not None else super().display_type_rich(ctx)


class PlainFlag(TyperOption):
    """A flag (``--json/--no-json``, ``--help``): it takes no value, so the help shows no ``<bool>``
    type beside it, as options with values show ``INT`` or ``<a|b>`` (issue 21 item 5)."""

    def display_type_rich(self, ctx):
        return None


def plain_flags(params) -> None:
    for p in params:
        if type(p) is TyperOption and p.is_flag:
            p.__class__ = PlainFlag


class KdxCommand(TyperCommand):
    """The command class of every kdx command (``app.command(cls=...)``): its arguments are
    :class:`PlainArgument`, its flags :class:`PlainFlag`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if type(p) is TyperArgument:
                p.__class__ = PlainArgument
        plain_flags(self.params)

    def get_params(self, ctx):
        params = super().get_params(ctx)  # --help is added here
        plain_flags(params)
        return params


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

declared_command("analyze-conflicts", cc.AnalyzeConflictsOptions, "analyze_conflicts:run",
    "Subtask attention, entropy, sharing, gradient conflicts and class clusters of explainer runs.\n\n"
    "Typically the same data trained with ce, ls and kd; writes CSVs, clusters/layer{L}.json "
    "(for the VAM hierarchy guidance), plots and report.md to --out (docs/analyze-conflicts.md).")

declared_command("pipeline", PipelineOptions, "pipeline:from_options",
    "Run the whole study: teacher -> explainers (the study's methods, ce, ls, kd by default) per seed -> "
    "analyze-conflicts -> VAM students.\n\n"
    "Every input is checked before the first step. Every step is an ordinary run directory under "
    "the study folder; a rerun skips finished steps and resumes an interrupted one. Writes "
    "study_report.md, study_summary.csv and explainer_differences.csv.")

declared_command("evaluate", cc.EvaluateOptions, "evaluate:run",
    "Top-1, top-5 and per-class accuracy of a checkpoint on a dataset split.")

declared_command("info", cc.InfoOptions, "info:run",
    "Show a checkpoint's metadata (kind, arch, dataset, metrics...) as a table.")

declared_command("import-checkpoint", cc.ImportCheckpointOptions, "import_checkpoint:run",
    "Convert a foreign PyTorch checkpoint into a kdx safetensors checkpoint (no pickle code runs).")

declared_command("models", cc.ModelsOptions, "listing:models",
    "List the architectures of the model zoo (kdx models 'resnet*': those matching a pattern).")

declared_command("datasets", cc.DatasetsOptions, "listing:datasets",
    "List the datasets kdx knows (--dataset NAME).")

declared_command("methods", cc.MethodsOptions, "listing:methods",
    "List the training methods (--method NAME): paper, what each reads, its options with defaults, the "
    "commands that offer it.")


def _escape_help(callback) -> None:
    """Help texts show ``[defaults]`` literally: escape them once for rich markup (which the option
    panels need)."""
    from rich.markup import escape
    from typer.models import ParameterInfo

    for p in inspect.signature(callback).parameters.values():
        d = p.default
        if isinstance(d, ParameterInfo) and d.help and not getattr(d, "_kdx_escaped", False):
            d.help = escape(d.help)
            d._kdx_escaped = True


def _escape_help_texts() -> None:
    """The same for commands registered on ``app`` directly (``@app.command``), whoever wrote them."""
    for info in app.registered_commands:
        _escape_help(info.callback)


_escape_help_texts()


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
    except Exception as exc:  # outside a command (parsing, a callback): the same last line of defence
        from kdx.engine import rundir

        rundir.rollback()
        try:
            unexpected_error(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
