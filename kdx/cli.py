"""The ``kdx`` command line (Typer + rich).

Each command only parses its options into a config and calls ``run()`` of its module
in :mod:`kdx.commands`. Options shared by every training command are declared once
(``RUN_OPTIONS``) and added to each command's signature by :func:`training_command`.
"""

import functools
import inspect
import sys
from pathlib import Path
from typing import List, Optional

import typer

import kdx
from kdx.engine.progress import table_console
from kdx.errors import KdxError

app = typer.Typer(
    name="kdx",
    help="Explainable knowledge distillation: train a teacher, distill it into KDExplainer, "
    "analyse subtask attention and conflicts, and train students with a virtual attention module.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts show defaults as [value]: no rich markup parsing
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
        from kdx.engine.trainer import TrainingInterrupted

        try:
            return fn(*args, **kwargs)
        except KdxError as exc:
            _fail(str(exc))
        except TrainingInterrupted as exc:
            if exc.signum == 0:
                typer.echo(f"kdx: stopped after --max-steps; resume with --resume {exc.run_dir}", err=True)
                raise typer.Exit(0)
            typer.echo(f"kdx: interrupted ({exc}); resume with --resume {exc.run_dir}", err=True)
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("kdx: interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


# ------------------------------------------------------------------ shared training options

def _opt(name, annotation, help, panel, *flags):
    decls = flags or ("--" + name.replace("_", "-"),)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(None, *decls, help=help, rich_help_panel=panel, show_default=False))


D, O, R = "Data", "Optimisation", "Runtime"
RUN_OPTIONS = [
    _opt("out", Optional[Path], "Run directory to write (required unless --resume).", "Run", "--out", "-o"),
    _opt("config", Optional[Path], "JSON or TOML file (or a run directory) with options; flags override it.", "Run"),
    _opt("preset", Optional[str], "Named recipe (see the command's help); flags override it.", "Run"),
    _opt("resume", Optional[Path], "Continue the run in this directory exactly where it stopped.", "Run"),
    _opt("overwrite", Optional[bool], "Replace a run already in --out.", "Run", "--overwrite/--no-overwrite"),
    _opt("dataset", Optional[str], "Dataset: cifar10, cifar100, fashion-mnist, mnist, tiny-imagenet, folder:PATH, "
         "fashion-mnist-mini (default, embedded).", D, "--dataset", "-d"),
    _opt("data_root", Optional[Path], "Folder holding the dataset files (default $KDX_DATA or ~/.cache/kdx/data).", D),
    _opt("download", Optional[bool], "Download the dataset if missing (opt-in).", D, "--download/--no-download"),
    _opt("val_fraction", Optional[float], "Share of train held out for validation and best-epoch selection [0.1].", D),
    _opt("batch_size", Optional[int], "Training batch size per process [64; quick: 128].", D, "--batch-size", "-b"),
    _opt("eval_batch_size", Optional[int], "Evaluation batch size [256].", D),
    _opt("num_workers", Optional[int], "DataLoader workers for image-folder datasets [2].", D),
    _opt("max_train_samples", Optional[int], "Train on a seeded, stratified subset of this size.", D),
    _opt("augment", Optional[bool], "Random crop + flip on training batches [on].", D, "--augment/--no-augment"),
    _opt("epochs", Optional[int], "Training epochs [240; quick: 15 for a teacher, 8 for a student].", O, "--epochs", "-e"),
    _opt("optimizer", Optional[str], "sgd | adam | adamw [sgd].", O),
    _opt("lr", Optional[float], "Base learning rate [0.05; quick: 0.1].", O),
    _opt("momentum", Optional[float], "SGD momentum [0.9].", O),
    _opt("weight_decay", Optional[float], "Weight decay [5e-4].", O),
    _opt("schedule", Optional[str], "multistep | cosine | constant | halving [multistep; quick: cosine].", O),
    _opt("milestones", Optional[str], "Comma-separated epochs for multistep decay [150,180,210].", O),
    _opt("gamma", Optional[float], "Multistep decay factor [0.1].", O),
    _opt("warmup_epochs", Optional[int], "Linear warm-up epochs [0; quick: 1].", O),
    _opt("label_smoothing", Optional[float], "Label smoothing of the cross-entropy [0].", O),
    _opt("device", Optional[str], "auto | cpu | cuda | cuda:N | mps [auto].", R),
    _opt("precision", Optional[str], "auto | fp32 | bf16 | fp16 autocast [auto: bf16 where the hardware has it].", R),
    _opt("channels_last", Optional[str], "auto | on | off [auto: on for CUDA and CPU bf16].", R),
    _opt("seed", Optional[int], "Random seed [1029].", R),
    _opt("deterministic", Optional[bool], "Deterministic algorithms (bit-exact resume).", R, "--deterministic/--no-deterministic"),
    _opt("quiet", Optional[bool], "One line per epoch instead of progress bars.", R, "--quiet/--no-quiet", "-q"),
    _opt("max_steps", Optional[int], "Stop (resumably) after this many optimizer steps.", R),
]


def training_command(fn=None, *, exclude: tuple = ()):
    """Append RUN_OPTIONS (less ``exclude``) to ``fn``'s signature; ``fn`` receives them in ``**run``."""
    if fn is None:
        return functools.partial(training_command, exclude=exclude)
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in own} | set(exclude)
    params = own + [p for p in RUN_OPTIONS if p.name not in names]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        return fn(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    return handle_errors(wrapper)


def make_config(cls, presets, recipe, options: dict):
    """Options of a training command -> a validated config of dataclass ``cls``."""
    from kdx.config import build_config
    from kdx.engine.rundir import config_for_resume

    options = dict(options)
    config_file = options.pop("config", None)
    cli = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items() if v is not None}
    if cli.get("resume"):
        cfg = config_for_resume(cls, cli["resume"], cli)
    else:
        cfg = build_config(cls, presets=presets, config_file=str(config_file) if config_file else None, cli=cli,
                           recipe_for_dataset=recipe)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------ commands

def _version(value: bool):
    if value:
        typer.echo(f"kdx {kdx.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                                   help="Print the kdx version and exit.")):
    """kdx: explainable knowledge distillation."""


@app.command("train-teacher")
@training_command
def train_teacher(arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Zoo architecture [resnet56]; "
                                                      "`kdx models` lists them."), **run):
    """Train a teacher (any zoo architecture) with cross-entropy.

    The CIFAR recipe of the paper is the default (SGD 0.05, 240 epochs, x0.1 at 150/180/210,
    batch 64). Presets: paper (the same), quick (15 epochs, cosine, batch 128: a CPU-sized run).
    """
    from kdx.commands import train_teacher as cmd
    from kdx.config import TEACHER_PRESETS, TeacherConfig, teacher_recipe

    cfg = make_config(TeacherConfig, TEACHER_PRESETS, teacher_recipe, dict(run, arch=arch))
    cmd.run(cfg)


def _o(default, *flags, help, panel="Explainer"):
    return typer.Option(default, *flags, help=help, rich_help_panel=panel, show_default=False)


@app.command("distill-explainer")
@training_command(exclude=("epochs", "optimizer", "lr", "schedule", "milestones", "gamma", "warmup_epochs",
                           "label_smoothing"))
def distill_explainer(
    objective: Optional[str] = _o(None, "--objective", help="ce | ls | kd [kd].", panel="Objective"),
    teacher: Optional[Path] = _o(None, "--teacher", "-t", help="Teacher run or checkpoint (for kd).", panel="Objective"),
    smoothing: Optional[float] = _o(None, "--smoothing", help="Label smoothing of ls [0.1].", panel="Objective"),
    kd_temperature: Optional[float] = _o(None, "--kd-temperature", help="KD temperature T [4].", panel="Objective"),
    kd_weight: Optional[float] = _o(None, "--kd-weight", help="Weight of KL * T^2 [0.9].", panel="Objective"),
    ce_weight: Optional[float] = _o(None, "--ce-weight", help="Weight of CE under kd [0.1].", panel="Objective"),
    stage: Optional[str] = _o(None, "--stage", help="1 | 2 | both [both]."),
    from_run: Optional[Path] = _o(None, "--from", help="Stage-1 run (or checkpoint) that --stage 2 starts from."),
    experts: Optional[str] = _o(None, "--experts", help="Experts per layer [2,4,8; 2,4,8,16 above 32 px]."),
    widths: Optional[str] = _o(None, "--widths", help="mid:out channels per expert layer [64:64,64:64,64:32]."),
    head: Optional[str] = _o(None, "--head", help="Leaf head: ce (1 output) | nce (2 outputs, max) [ce]."),
    routing: Optional[str] = _o(None, "--routing", help="Stage-1 routing: soft (official) | gumbel [soft]."),
    tau0: Optional[float] = _o(None, "--tau0", help="Stage-1 temperature tau = tau0 / epoch [10; quick: 4]."),
    stage1_epochs: Optional[int] = _o(None, "--stage1-epochs", help="Stage-1 epochs [300; quick: 8]."),
    stage1_lr: Optional[float] = _o(None, "--stage1-lr", help="Stage-1 Adam lr of experts and heads [0.05; quick: 0.01]."),
    routing_lr: Optional[float] = _o(None, "--routing-lr", help="Stage-1 Adam lr of the routing [0.01; quick: 0.05]."),
    stage2_epochs: Optional[int] = _o(None, "--stage2-epochs", help="Stage-2 epochs [300; quick: 10]."),
    stage2_lr: Optional[float] = _o(None, "--stage2-lr", help="Stage-2 lr [0.05; quick: 0.005 with adam]."),
    stage2_optimizer: Optional[str] = _o(None, "--stage2-optimizer", help="Stage-2 optimizer: sgd (official) | adam [sgd; quick: adam]."),
    halve_every: Optional[int] = _o(None, "--halve-every", help="Stage-2 lr halving period in epochs [30; quick: 3]."),
    **run,
):
    """Distill a teacher into KDExplainer (a hierarchical mixture of experts, one binary subtask per class).

    Stage 1 learns the tree with soft routing (tau = tau0/epoch, Adam, official warm-up/decay);
    stage 2 keeps the tree (hard routing, frozen), re-initialises the rest and trains with SGD.
    Official values are the defaults; --preset quick is a CPU-sized run (narrower tree, few epochs).
    """
    from kdx.commands import distill_explainer as cmd
    from kdx.config import EXPLAINER_PRESETS, ExplainerConfig, explainer_recipe

    options = dict(run, objective=objective, teacher=teacher, smoothing=smoothing, kd_temperature=kd_temperature,
                   kd_weight=kd_weight, ce_weight=ce_weight, stage=stage, from_run=from_run, experts=experts,
                   widths=widths, head=head, routing=routing, tau0=tau0, stage1_epochs=stage1_epochs,
                   stage1_lr=stage1_lr, routing_lr=routing_lr, stage2_epochs=stage2_epochs, stage2_lr=stage2_lr,
                   stage2_optimizer=stage2_optimizer, halve_every=halve_every)
    cfg = make_config(ExplainerConfig, EXPLAINER_PRESETS, explainer_recipe, options)
    cmd.run(cfg)


@app.command("analyze-conflicts")
@handle_errors
def analyze_conflicts(
    runs: List[Path] = typer.Argument(..., help="Explainer runs (or VAM student runs / checkpoints) to compare."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the analysis to."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset [the runs' own]."),
    split: str = typer.Option("val", "--split", help="val (seeded like the run) | test."),
    images: int = typer.Option(1024, "--images", "-n", help="Seeded subset of the split, the same for every run."),
    label: Optional[List[str]] = typer.Option(None, "--label", "-l", help="Name of each run, one per run "
                                              "[its objective; duplicates get -2, -3...]."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Images per forward/backward chunk."),
    conflict_images: Optional[int] = typer.Option(None, "--conflict-images", help="Gradient conflicts on the first "
                                                  "N of the images [all]."),
    conflicts: bool = typer.Option(True, "--conflicts/--no-conflicts", help="Compute gradient conflicts."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder [the run's]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps"),
):
    """Subtask attention, entropy, sharing, gradient conflicts and class clusters of explainer runs.

    Typically the same data trained with ce, ls and kd; writes CSVs, clusters/layer{L}.json
    (for the VAM hierarchy guidance), plots and report.md to --out (docs/analyze-conflicts.md).
    """
    from kdx.commands import analyze_conflicts as cmd

    cmd.run(runs, dataset=dataset, split=split, images=images, labels=label, batch_size=batch_size, device=device,
            out=out, data_root=data_root, conflict_images=conflict_images, conflicts=conflicts)


@app.command("train-vam-student")
@training_command
def train_vam_student(
    teacher: Optional[Path] = _o(None, "--teacher", "-t", help="Teacher run or checkpoint (KD, --compare).", panel="Objective"),
    arch: Optional[str] = _o(None, "--arch", "-a", help="Zoo student architecture [resnet8].", panel="Student"),
    objective: Optional[str] = _o(None, "--objective", help="ce | kd [kd].", panel="Objective"),
    kd_temperature: Optional[float] = _o(None, "--kd-temperature", help="KD temperature T [4].", panel="Objective"),
    kd_weight: Optional[float] = _o(None, "--kd-weight", help="Weight of KL * T^2 [0.9].", panel="Objective"),
    ce_weight: Optional[float] = _o(None, "--ce-weight", help="Weight of CE under kd [0.1].", panel="Objective"),
    vam: Optional[bool] = _o(None, "--vam/--no-vam", help="Virtual attention module instead of the linear classifier [on].",
                             panel="VAM"),
    vam_blocks: Optional[int] = _o(None, "--vam-blocks", help="K virtual experts; must divide the feature channels D "
                                   "[8, or the largest divisor of D below 8].", panel="VAM"),
    vam_entropy: Optional[float] = _o(None, "--vam-entropy", help="Weight lambda of the mean attention entropy [0].",
                                      panel="VAM"),
    vam_hard_eval: Optional[bool] = _o(None, "--vam-hard-eval/--no-vam-hard-eval", help="Hard routing at evaluation "
                                       "(always soft while training) [off].", panel="VAM"),
    vam_tau0: Optional[float] = _o(None, "--vam-tau0", help="tau = tau0 / epoch [10; quick: 4].", panel="VAM"),
    hierarchy: Optional[List[Path]] = _o(None, "--hierarchy", help="analyze-conflicts dir or clusters/layer{L}.json "
                                         "file (repeatable).", panel="Hierarchy"),
    hierarchy_weight: Optional[float] = _o(None, "--hierarchy-weight", help="Weight W of the cluster losses [0.1].",
                                           panel="Hierarchy"),
    hierarchy_stages: Optional[str] = _o(None, "--hierarchy-stages", help="Student stages, one per cluster layer "
                                         "(or STAGE=LAYER items) [by depth].", panel="Hierarchy"),
    compare: Optional[bool] = _o(None, "--compare/--no-compare", help="Train CE, KD, KD+VAM (and KD+VAM+hierarchy) "
                                 "and compare them.", panel="Compare"),
    seeds: Optional[str] = _o(None, "--seeds", help="Comma-separated seeds, one run each, e.g. 0,1,2.", panel="Compare"),
    **run,
):
    """Train a zoo student with KD and a virtual attention module (VAM), optionally hierarchy guidance.

    The student recipe of the paper is the default (SGD 0.05, 240 epochs, x0.1 at 150/180/210,
    batch 64). Presets: paper (the same), quick (8 epochs, cosine, batch 128: a CPU-sized run).
    --compare trains CE / KD / KD+VAM / KD+VAM+hierarchy from the same seed into RUN/seed{s}/...
    and writes comparison.csv, comparison_summary.csv and comparison.png.
    """
    from kdx.commands import train_vam_student as cmd
    from kdx.config import VAM_PRESETS, VamConfig, vam_recipe

    options = dict(run, teacher=teacher, arch=arch, objective=objective, kd_temperature=kd_temperature,
                   kd_weight=kd_weight, ce_weight=ce_weight, vam=vam, vam_blocks=vam_blocks, vam_entropy=vam_entropy,
                   vam_hard_eval=vam_hard_eval, vam_tau0=vam_tau0,
                   hierarchy=[str(h) for h in hierarchy] if hierarchy else None, hierarchy_weight=hierarchy_weight,
                   hierarchy_stages=hierarchy_stages, compare=compare, seeds=seeds)
    cfg = make_config(VamConfig, VAM_PRESETS, vam_recipe, options)
    cmd.run(cfg)


@app.command("pipeline")
@handle_errors
def pipeline_cmd(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study folder [runs/study-<preset>]."),
    config: Optional[Path] = typer.Option(None, "--config", help="Study TOML/JSON with [teacher], [explainer], "
                                          "[analysis], [student] tables (or a study folder)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="demo | fashion-mnist | cifar10-paper | "
                                         "cifar100-paper | tiny-imagenet [demo]."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective study config and exit."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", "-t", help="Use this teacher run instead of training one."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Repeat the whole study for these seeds, e.g. 0,1,2."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Override the preset's dataset."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | mps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line per epoch instead of progress bars."),
):
    """Run the whole study: teacher -> explainers (ce, ls, kd) -> analyze-conflicts -> VAM students.

    Every step is an ordinary run directory under the study folder; a rerun skips finished
    steps and resumes an interrupted one. Writes study_report.md and study_summary.csv.
    """
    from kdx.commands import pipeline as cmd

    flags = {"teacher_run": str(teacher) if teacher else None, "dataset": dataset,
             "data_root": str(data_root) if data_root else None, "device": device, "quiet": True if quiet else None}
    if seeds:
        try:
            flags["seeds"] = [int(v) for v in seeds.split(",") if v.strip()]
        except ValueError:
            raise KdxError(f"--seeds must be comma-separated integers, got '{seeds}'") from None
    study = cmd.build_study(preset, str(config) if config else None, flags)
    if print_config:
        typer.echo(cmd.print_config(study))
        return
    cmd.run(study, out or Path("runs") / f"study-{study['preset']}")


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run directory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset [the checkpoint's]."),
    split: str = typer.Option("test", "--split", help="test | val"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder."),
    which: str = typer.Option("model", "--which", help="In a run directory: model (last epoch) or best."),
    routing: Optional[str] = typer.Option(None, "--routing", help="Explainers/VAM: soft | hard | gumbel [from metadata]."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Explainers/VAM: routing temperature [from metadata]."),
    per_class_csv: Optional[Path] = typer.Option(None, "--per-class-csv", help="Where to write per-class accuracy "
                                                 "[RUN/eval_<dataset>_<split>.csv, or beside the file]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps"),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Validation share [the run's, or 0.1]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the validation split [the run's]."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (top1, top5 as fractions) for scripts."),
):
    """Top-1, top-5 and per-class accuracy of a checkpoint on a dataset split."""
    from kdx.commands import evaluate as cmd

    cmd.run(checkpoint, dataset=dataset, split=split, data_root=data_root, which=which, routing=routing, tau=tau,
            per_class_csv=per_class_csv, device=device, batch_size=batch_size, val_fraction=val_fraction, seed=seed,
            json_out=json_out)


@app.command("info")
@handle_errors
def info_cmd(checkpoint: Path = typer.Argument(..., help="A checkpoint file or a run directory."),
             json_out: bool = typer.Option(False, "--json", help="Print the metadata as JSON.")):
    """Show a checkpoint's metadata (kind, arch, dataset, metrics...) as a table."""
    from kdx.commands import info as cmd

    cmd.run(checkpoint, json_out=json_out)


@app.command("import-checkpoint")
@handle_errors
def import_checkpoint_cmd(
    file: Path = typer.Argument(..., help="A .pth/.pt state dict (RepDistiller {'model': ...} or bare)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .safetensors file to write."),
    kind: str = typer.Option("classifier", "--kind", help="classifier (zoo model) | explainer (official KDExplainer)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Zoo architecture (kind classifier)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Number of classes [from the weights]."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="Input channels [from the weights]."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset the weights were trained on "
                                          "(sets input shape and normalisation in the metadata)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
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
    """List the datasets kdx knows."""
    from kdx.data import list_datasets

    for name in list_datasets():
        typer.echo(name)


def main():  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
