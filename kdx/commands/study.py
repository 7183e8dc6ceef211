"""What `kdx pipeline` and its report share: the study presets, the study config, its layout on
disk, and the description of a resolved study.

A study is a dict: global keys (dataset, device, ...), ``seeds``, ``methods`` (the explainers'
training methods) and one table per step (``teacher``, ``explainer``, ``analysis``,
``student``). The keys a step table may hold are the option declarations of that step's
command (:func:`step_options`), less the few the pipeline sets itself (:data:`PIPELINE_SETS`).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import platform
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from kdx.commandconfig import PLOT_FORMATS, AnalyzeConflictsOptions, CommandOptions
from kdx.config import RunConfig, options_of
from kdx.errors import KdxError
from kdx.options import option
from kdx.version import __version__

GLOBAL_KEYS = ("dataset", "data_root", "download", "device", "precision", "channels_last", "quiet", "val_fraction",
               "max_train_samples", "num_workers", "deterministic", "threads")
SECTIONS = ("teacher", "explainer", "analysis", "student")
STUDY_KEYS = ("seeds", "methods", "notes", "preset", "teacher_run", "students")
STEP_COMMANDS = {"teacher": "train-teacher", "explainer": "distill-explainer", "analysis": "analyze-conflicts",
                 "student": "train-vam-student"}
# options of each step that the pipeline sets itself (a study table may not)
PIPELINE_SETS = {
    "teacher": {"out", "resume", "overwrite", "seed"},
    "explainer": {"out", "resume", "overwrite", "seed", "method", "teacher", "stage", "from_run"},
    "analysis": {"runs", "out", "label", "dataset", "device", "data_root", "plot_format"},
    "student": {"out", "resume", "overwrite", "seed", "teacher", "compare", "hierarchy"},
}
FIRST_METHODS = ("ce", "ls", "kd")  # the paper's three first, then every other method the explainer offers
BASE_SEED = 1029  # the official seed; study seed s trains with BASE_SEED + s
DEFAULT_PRESET = "demo"

PIPELINE_PRESETS: dict[str, dict] = {
    # the whole study on the embedded data set in about 5 minutes on 2 CPU cores: narrower and
    # shorter than the paper everywhere (see the report's notes)
    "demo": {
        "dataset": "fashion-mnist-mini", "seeds": [0], "methods": ["ce", "ls", "kd"],
        "notes": "demo preset: fashion-mnist-mini on CPU; teacher resnet20 for 8 epochs, explainers with 16-channel "
                 "experts and 5 + 5 epochs (the quick explainer recipe otherwise), 512 analysed images, resnet8 "
                 "students for 6 epochs on one seed: far shorter and narrower than the paper, for a look at the "
                 "whole study, not for its numbers.",
        "teacher": {"arch": "resnet20", "preset": "quick", "epochs": 8},
        "explainer": {"preset": "quick", "widths": "16:16,16:16,16:16", "stage1_epochs": 5, "stage2_epochs": 5},
        "analysis": {"images": 512, "split": "val", "conflict_images": 256},
        "student": {"arch": "resnet8", "preset": "quick", "epochs": 6, "seeds": [0]},
    },
    # the explainer-side findings with error bars on 2 CPU cores (docs/reproducing.md: runtime)
    "evidence": {
        "dataset": "fashion-mnist-mini", "seeds": [0, 1, 2], "methods": ["ce", "ls", "kd"],
        "notes": "evidence preset: fashion-mnist-mini on CPU; teacher resnet20 for 15 epochs (quick); quick "
                 "explainers (32-channel experts) with stage 1 for 30 epochs at tau0 10 (final tau 0.33) and "
                 "stage 2 for 8 epochs, 3 seeds each; all 600 validation images analysed per seed; resnet8 students "
                 "for 4 epochs on one seed. About 2.5 hours on 2 CPU cores (docs/reproducing.md): for the "
                 "explainers' entropy and conflict findings with their seed spread, not for the paper's accuracies.",
        "teacher": {"arch": "resnet20", "preset": "quick", "epochs": 15},
        "explainer": {"preset": "quick", "tau0": 10.0, "stage1_epochs": 30, "stage2_epochs": 8},
        "analysis": {"images": 600, "split": "val", "conflict_images": 256},
        "student": {"arch": "resnet8", "preset": "quick", "epochs": 4, "seeds": [0]},
    },
    # issue 20: every method the explainer offers, each distilled from one teacher, 3 seeds; one
    # analysis over all of them compares the methods side by side (no student step)
    "explain-methods": {
        "dataset": "fashion-mnist-mini", "seeds": [0, 1, 2], "methods": ["all"], "students": False,
        "notes": "explain-methods preset: fashion-mnist-mini on CPU; teacher resnet20 for 15 quick epochs; one "
                 "explainer per registered explainer method (the quick recipe, 8 + 10 epochs), 3 seeds; every "
                 "explainer of every seed analysed together on 600 validation images, the methods compared side "
                 "by side (methods.csv, paired differences against kd and ce). Several hours of a 2-core CPU; "
                 "rerun the same command to continue.",
        "teacher": {"arch": "resnet20", "preset": "quick", "epochs": 15},
        "explainer": {"preset": "quick"},
        "analysis": {"images": 600, "split": "val", "conflict_images": 256},
        "student": {"arch": "resnet8", "preset": "quick", "epochs": 4, "seeds": [0]},
    },
    "fashion-mnist": {
        "dataset": "fashion-mnist", "seeds": [0], "methods": ["ce", "ls", "kd"],
        "notes": "full Fashion-MNIST; CPU-friendly budgets (tens of epochs), not the paper's 240/300.",
        "teacher": {"arch": "resnet56", "epochs": 30, "schedule": "cosine", "lr": 0.1, "batch_size": 128},
        "explainer": {"stage1_epochs": 20, "stage2_epochs": 30, "stage1_lr": 0.01, "halve_every": 8,
                      "widths": "32:32,32:32,32:32", "tau0": 10.0},
        "analysis": {"images": 1024, "split": "val"},
        "student": {"arch": "resnet8", "epochs": 30, "schedule": "cosine", "lr": 0.1, "batch_size": 128,
                    "seeds": [0, 1, 2]},
    },
    "cifar10-paper": {
        "dataset": "cifar10", "seeds": [0], "methods": ["ce", "ls", "kd"],
        "notes": "spec sections 3-4: official CIFAR-10 set-up (ResNet50 teacher; explainer 300 + 300 epochs; "
                 "240-epoch students).",
        "teacher": {"arch": "ResNet50", "preset": "paper"},
        "explainer": {"preset": "paper"},
        "analysis": {"images": 2048, "split": "val"},
        "student": {"arch": "ResNet18", "preset": "paper", "seeds": [0, 1, 2]},
    },
    "cifar100-paper": {
        "dataset": "cifar100", "seeds": [0], "methods": ["ce", "ls", "kd"],
        "notes": "spec sections 3-4 on CIFAR-100: ResNet50 teacher as the official CIFAR-100 explainer configs; "
                 "student wrn_16_2 is a kdx choice (the official code has no CIFAR-100 student config).",
        "teacher": {"arch": "ResNet50", "preset": "paper"},
        "explainer": {"preset": "paper"},
        "analysis": {"images": 2048, "split": "val"},
        "student": {"arch": "wrn_16_2", "preset": "paper", "seeds": [0, 1, 2]},
    },
    "tiny-imagenet": {
        "dataset": "tiny-imagenet", "seeds": [0], "methods": ["ce", "ls", "kd"],
        "notes": "Tiny-ImageNet (64 px: the explainer adds the stem and a 4th expert layer of 16 experts).",
        "teacher": {"arch": "ResNet34", "preset": "paper"},
        "explainer": {"preset": "paper"},
        "analysis": {"images": 2048, "split": "val"},
        "student": {"arch": "ResNet18", "preset": "paper", "seeds": [0]},
    },
}


# ------------------------------------------------------------------ the command's options


_RUN_OPTIONS = options_of(RunConfig)  # the training steps' own declarations of --device and --threads


@dataclass
class PipelineOptions(CommandOptions):
    """``kdx pipeline``: a flag left unset keeps the study's value (its file's, else its preset's)."""

    command: ClassVar[str] = "pipeline"
    out: Optional[str] = option(None, "Study folder [runs/study-<preset>].", flags=("-o",), metavar="DIR")
    config: Optional[str] = option(None, "Study TOML/JSON with [teacher], [explainer], [analysis], [student] tables "
                                   "(or a study folder).", metavar="FILE")
    preset: Optional[str] = option(None, f"Study preset: {' | '.join(PIPELINE_PRESETS)} [the file's, else "
                                   f"{DEFAULT_PRESET}].", metavar="NAME")
    print_config: bool = option(False, "Print the effective study config and exit.")
    teacher: Optional[str] = option(None, "Use this teacher run instead of training one.", flags=("-t",),
                                    metavar="RUN")
    seeds: Optional[list[int]] = option(None, "Train the explainers (and analyse them) for each of these seeds, "
                                        "e.g. 0,1,2 (comma-separated or repeated).", low=0, metavar="INTS")
    methods: Optional[list[str]] = option(None, "Explainer methods, e.g. ce,ls,kd (comma-separated or repeated) "
                                          "[the preset's].", metavar="NAMES")
    set: Optional[list[str]] = option(None, "STEP.KEY=VALUE: any option of a step's command, e.g. "
                                      "explainer.stage1_epochs=30 or teacher.arch=resnet32 (repeatable; steps: "
                                      "teacher, explainer, analysis, student).", comma=False,
                                      metavar="STEP.KEY=VALUE")
    dataset: Optional[str] = option(None, "Override the preset's dataset.", flags=("-d",), metavar="NAME")
    data_root: Optional[str] = option(None, "Dataset folder.", metavar="DIR")
    download: Optional[bool] = option(None, "Download the dataset if it is missing [the study's; off].")
    device: Optional[str] = option(None, _RUN_OPTIONS["device"].help + " [the study's; auto]", metavar="DEVICE")
    threads: Optional[int] = option(None, _RUN_OPTIONS["threads"].help + " [the study's]", low=1)
    overwrite: bool = option(False, "Replace the study in --out (deletes its runs).")
    quiet: Optional[bool] = option(None, "One line per epoch instead of progress bars [the study's; off].",
                                   flags=("-q",))
    plot_format: str = option("png", "Figure format (pdf/svg are written beside the PNGs the report embeds).",
                              choices=PLOT_FORMATS)


# ------------------------------------------------------------------ the steps' declarations


def step_options(step: str) -> dict:
    """Option name -> its declaration (kdx.options.Option), for the command that runs ``step``."""
    from kdx.config import config_class

    if step == "analysis":
        return options_of(AnalyzeConflictsOptions)
    return options_of(config_class(STEP_COMMANDS[step]))


def table_keys(step: str) -> set[str]:
    """The keys a study's ``[step]`` table may hold."""
    return set(step_options(step)) - PIPELINE_SETS[step]


def parse_value(text: str):
    """A ``--set`` value: JSON where it parses (3, 0.1, true, [0, 1]), else the string; the step's
    own config then checks it against the option's declaration."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(items: list[str]) -> dict:
    """``["explainer.stage1_epochs=30", "dataset=x"]`` -> ``{"explainer": {"stage1_epochs": 30}, "dataset": "x"}``."""
    out: dict = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise KdxError(f"--set takes STEP.KEY=VALUE (e.g. explainer.stage1_epochs=30); got '{item}'")
        section, dot, name = key.partition(".")
        if not dot:
            out[key] = parse_value(value)
            continue
        if section not in SECTIONS:
            raise KdxError(f"--set {item}: unknown step '{section}'; steps: {', '.join(SECTIONS)}")
        out.setdefault(section, {})[name] = parse_value(value)
    return out


# ------------------------------------------------------------------ the study config


def merge_study(base: dict, override: dict) -> dict:
    """``override`` over ``base``; step tables merge key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _alias_methods(table: dict, where: str) -> dict:
    """The deprecated study key ``objectives`` is read as ``methods`` (with a note)."""
    if "objectives" not in table:
        return table
    from kdx.engine.progress import console

    console.print(f"note: {where}: the study key 'objectives' is deprecated; call it 'methods'")
    table = dict(table)
    value = table.pop("objectives")
    table.setdefault("methods", value)
    return table


def check_keys(table: dict, where: str) -> None:
    """Refuse a key no step knows (a typo would otherwise be dropped without a word)."""
    import difflib

    unknown = sorted(set(table) - set(SECTIONS) - set(GLOBAL_KEYS) - set(STUDY_KEYS) - {"out"})
    if unknown:
        raise KdxError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    for section in SECTIONS:
        sub = table.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise KdxError(f"[{section}] must be a table of options")
        valid = table_keys(section)
        for key in sub:
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                owned = " (the pipeline sets it)" if key in PIPELINE_SETS[section] else ""
                raise KdxError(f"unknown key '{key}' in the study's [{section}] table{owned}{hint}")


def read_study_file(path: str | Path) -> dict:
    """A study TOML/JSON keeps its tables ([teacher], [explainer], [analysis], [student])."""
    from kdx.config import load_table_file

    data = _alias_methods(load_table_file(path, default_name="study.json"), f"study config {path}")
    check_keys(data, f"study config {path}")
    return data


def explainer_methods(methods) -> list[str]:
    """The study's explainer methods: registered names offered to the explainer, or ``name+name``
    combinations of them, or ``all`` (every one offered, the paper's ce, ls, kd first)."""
    from kdx.distill.methods import methods_for

    offered = methods_for("explainer")
    if isinstance(methods, str):
        methods = [methods]
    if not methods or not isinstance(methods, list) or not all(isinstance(m, str) and m for m in methods):
        raise KdxError(f"methods must be a non-empty list of method names; got {methods!r}")
    out: list[str] = []
    for m in methods:
        names = [n for n in FIRST_METHODS if n in offered] + sorted(set(offered) - set(FIRST_METHODS)) \
            if m == "all" else [m]
        for name in names:
            bad = [n for n in name.split("+") if n not in offered]
            if bad:
                raise KdxError(f"unknown explainer method '{bad[0]}' in methods; valid: all, {', '.join(offered)} "
                               f"(or a combination such as kd+at)")
            if name not in out:
                out.append(name)
    return out


def build_study(preset: str | None, config_file: str | None, flags: dict) -> dict:
    """preset < study file < flags (``--set`` included); every key checked, nothing run."""
    file_values = read_study_file(config_file) if config_file else {}
    preset = preset or file_values.get("preset") or DEFAULT_PRESET
    if preset not in PIPELINE_PRESETS:
        raise KdxError(f"unknown preset '{preset}'; valid presets: {', '.join(PIPELINE_PRESETS)}")
    flags = _alias_methods({k: v for k, v in flags.items() if v is not None}, "--set")
    check_keys(flags, "the command line")
    study = merge_study(merge_study(merge_study(PIPELINE_PRESETS[preset], {"preset": preset}), file_values), flags)
    study["methods"] = explainer_methods(study.get("methods"))
    if not isinstance(study.get("students", True), bool):
        raise KdxError(f"students must be true or false; got {study.get('students')!r}")
    seeds = study.get("seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise KdxError(f"seeds must be a non-empty list of distinct integers >= 0; got {seeds}")
    return study


# ------------------------------------------------------------------ layout on disk


def layout(study: dict, out: Path) -> dict:
    """Where each step of a study lives: the teacher and the students once, the explainers and
    their analysis once per study seed (``seed{s}/`` when there are several seeds)."""
    out = Path(out)
    seeds = [int(s) for s in study["seeds"]]
    per_seed = {}
    for s in seeds:
        root = out if len(seeds) == 1 else out / f"seed{s}"
        per_seed[s] = {**{f"explainer-{m}": root / f"explainer-{m}" for m in study["methods"]},
                       "analysis": root / "analysis"}
    teacher = Path(study["teacher_run"]) if study.get("teacher_run") else out / "teacher"
    # several seeds and methods: one more analysis of every explainer of every seed, the methods side by side
    methods = out / "analysis-methods" if len(seeds) > 1 and len(study["methods"]) > 1 else None
    return {"teacher": teacher, "seeds": per_seed, "students": out / "students", "methods": methods}


# ------------------------------------------------------------------ description of a run


def environment() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"kdx": __version__, "torch": torch.__version__, "python": platform.python_version(), "device": device,
            "git_commit": commit, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def reproduce_commands(study: dict, out: Path) -> list[str]:
    return [f"kdx pipeline --config {shlex.quote(str(out / 'study.json'))} --out {shlex.quote(str(out))}"]


def overridden(study: dict) -> list[str]:
    """The keys in which ``study`` departs from its preset (where the preset's notes stop being true)."""
    base = PIPELINE_PRESETS.get(study.get("preset") or "", {})
    keys = []
    for key in ("dataset", "methods", "teacher_run", *SECTIONS):
        a, b = base.get(key), study.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            keys += [f"{key}.{k}" for k in sorted(set(a or {}) | set(b or {})) if (a or {}).get(k) != (b or {}).get(k)]
        elif a != b:
            keys.append(key)
    return keys
