"""`kdx pipeline`: the whole study in one command.

teacher -> explainers (ce, ls, kd) -> analyze-conflicts -> train-vam-student --compare (with the
hierarchy from that analysis). Every step is an ordinary run directory under the study folder;
a rerun skips finished steps and resumes an interrupted one; ``seeds`` repeats the study and
``study_summary.csv`` / ``study_report.md`` aggregate it.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import platform
import shlex
import subprocess
import time
from pathlib import Path

from rich.markup import escape as esc

import kdx
from kdx.config import build_config, config_class, load_table_file
from kdx.engine.io import atomic_write_text
from kdx.engine.progress import console
from kdx.errors import KdxError

GLOBAL_KEYS = ("dataset", "data_root", "download", "device", "precision", "channels_last", "quiet", "val_fraction",
               "max_train_samples", "num_workers", "deterministic")
SECTIONS = ("teacher", "explainer", "analysis", "student")

PIPELINE_PRESETS: dict[str, dict] = {
    # the whole study on the embedded data set in about 5 minutes on 2 CPU cores: narrower and
    # shorter than the paper everywhere (see the report's notes)
    "demo": {
        "dataset": "fashion-mnist-mini", "seeds": [0], "objectives": ["ce", "ls", "kd"],
        "notes": "demo preset: fashion-mnist-mini on CPU; teacher resnet20 for 8 epochs, explainers with 16-channel "
                 "experts and 5 + 5 epochs (the quick explainer recipe otherwise), 512 analysed images, resnet8 "
                 "students for 6 epochs on one seed: far shorter and narrower than the paper, for a look at the "
                 "whole study, not for its numbers.",
        "teacher": {"arch": "resnet20", "preset": "quick", "epochs": 8},
        "explainer": {"preset": "quick", "widths": "16:16,16:16,16:16", "stage1_epochs": 5, "stage2_epochs": 5},
        "analysis": {"images": 512, "split": "val", "conflict_images": 256},
        "student": {"arch": "resnet8", "preset": "quick", "epochs": 6, "seeds": [0]},
    },
    "fashion-mnist": {
        "dataset": "fashion-mnist", "seeds": [0], "objectives": ["ce", "ls", "kd"],
        "notes": "full Fashion-MNIST; CPU-friendly budgets (tens of epochs), not the paper's 240/300.",
        "teacher": {"arch": "resnet56", "epochs": 30, "schedule": "cosine", "lr": 0.1, "batch_size": 128},
        "explainer": {"stage1_epochs": 20, "stage2_epochs": 30, "stage1_lr": 0.01, "halve_every": 8,
                      "widths": "32:32,32:32,32:32", "tau0": 10.0},
        "analysis": {"images": 1024, "split": "val"},
        "student": {"arch": "resnet8", "epochs": 30, "schedule": "cosine", "lr": 0.1, "batch_size": 128,
                    "seeds": [0, 1, 2]},
    },
    "cifar10-paper": {
        "dataset": "cifar10", "seeds": [0], "objectives": ["ce", "ls", "kd"],
        "notes": "spec sections 3-4: official CIFAR-10 set-up (ResNet50 teacher; explainer 300 + 300 epochs; "
                 "240-epoch students).",
        "teacher": {"arch": "ResNet50", "preset": "paper"},
        "explainer": {"preset": "paper"},
        "analysis": {"images": 2048, "split": "val"},
        "student": {"arch": "ResNet18", "preset": "paper", "seeds": [0, 1, 2]},
    },
    "cifar100-paper": {
        "dataset": "cifar100", "seeds": [0], "objectives": ["ce", "ls", "kd"],
        "notes": "spec sections 3-4 on CIFAR-100: ResNet50 teacher as the official CIFAR-100 explainer configs; "
                 "student wrn_16_2 is a kdx choice (the official code has no CIFAR-100 student config).",
        "teacher": {"arch": "ResNet50", "preset": "paper"},
        "explainer": {"preset": "paper"},
        "analysis": {"images": 2048, "split": "val"},
        "student": {"arch": "wrn_16_2", "preset": "paper", "seeds": [0, 1, 2]},
    },
    "tiny-imagenet": {
        "dataset": "tiny-imagenet", "seeds": [0], "objectives": ["ce", "ls", "kd"],
        "notes": "Tiny-ImageNet (64 px: the explainer adds the stem and a 4th expert layer of 16 experts).",
        "teacher": {"arch": "ResNet34", "preset": "paper"},
        "explainer": {"preset": "paper"},
        "analysis": {"images": 2048, "split": "val"},
        "student": {"arch": "ResNet18", "preset": "paper", "seeds": [0]},
    },
}


# ------------------------------------------------------------------ study config


def merge_study(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_study_file(path: str | Path) -> dict:
    """A study TOML/JSON keeps its tables ([teacher], [explainer], [analysis], [student])."""
    data = load_table_file(path, default_name="study.json")
    unknown = sorted(set(data) - set(SECTIONS) - set(GLOBAL_KEYS) - {"seeds", "objectives", "notes", "preset", "teacher_run", "out"})
    if unknown:
        raise KdxError(f"unknown key(s) in study config {path}: {', '.join(unknown)}")
    return data


def build_study(preset: str | None, config_file: str | None, flags: dict) -> dict:
    preset = preset or (read_study_file(config_file).get("preset") if config_file else None) or "demo"
    if preset not in PIPELINE_PRESETS:
        raise KdxError(f"unknown preset '{preset}'; valid presets: {', '.join(PIPELINE_PRESETS)}")
    study = merge_study(PIPELINE_PRESETS[preset], {"preset": preset})
    if config_file:
        study = merge_study(study, read_study_file(config_file))
    study = merge_study(study, {k: v for k, v in flags.items() if v is not None})
    bad = [o for o in study.get("objectives", []) if o not in ("ce", "ls", "kd")]
    if bad or not study.get("objectives"):
        raise KdxError(f"objectives must be among ce, ls, kd; got {study.get('objectives')}")
    if not study.get("seeds"):
        raise KdxError("seeds must be a non-empty list of integers")
    check_step_tables(study)
    return study


ANALYSIS_KEYS = ("images", "split", "batch_size", "conflict_images")


def check_step_tables(study: dict) -> None:
    """Refuse a key no step knows (a typo would otherwise be dropped without a word)."""
    import difflib

    owners = {"teacher": config_class("train-teacher"), "explainer": config_class("distill-explainer"),
              "student": config_class("train-vam-student")}
    for section in SECTIONS:
        table = study.get(section) or {}
        if not isinstance(table, dict):
            raise KdxError(f"[{section}] must be a table of options")
        valid = set(ANALYSIS_KEYS) if section == "analysis" else \
            {f.name for f in dataclasses.fields(owners[section])} - {"out", "resume", "overwrite"}
        for key in table:
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise KdxError(f"unknown key '{key}' in the study's [{section}] table{hint}")


def _global(study: dict) -> dict:
    return {k: study[k] for k in GLOBAL_KEYS if study.get(k) is not None}


# ------------------------------------------------------------------ steps


def _status(run_dir: Path, done_file: str = "results.json") -> str:
    if (run_dir / done_file).is_file():
        return "done"
    if (run_dir / "config.json").is_file():
        return "resume"
    return "new"


def _run_training(cls, run_fn, options: dict, run_dir: Path, name: str, log: list) -> None:
    state = _status(run_dir)
    if state == "done":
        console.print(f"[green]{esc(name)}: finished earlier, skipped[/] ({esc(str(run_dir))})")
        log.append({"step": name, "status": "skipped (done)", "seconds": 0.0})
        return
    t0 = time.perf_counter()
    if state == "resume":
        console.print(f"[yellow]{esc(name)}: resuming the interrupted run[/] ({esc(str(run_dir))})")
        from kdx.engine.rundir import config_for_resume

        cfg = config_for_resume(cls, str(run_dir), {"quiet": options.get("quiet"), "device": options.get("device")})
    else:
        console.print(f"[bold]{esc(name)}[/] -> {esc(str(run_dir))}")
        cfg = build_config(cls, cli=dict(options, out=str(run_dir)))
    cfg.validate()
    run_fn(cfg)
    log.append({"step": name, "status": "resumed" if state == "resume" else "trained",
                "seconds": time.perf_counter() - t0})


def run_seed(study: dict, root: Path, seed: int, log: list) -> dict:
    from kdx.commands import analyze_conflicts, distill_explainer, train_teacher, train_vam_student

    g = _global(study)
    paths = {"teacher": Path(study["teacher_run"]) if study.get("teacher_run") else root / "teacher"}
    if not study.get("teacher_run"):
        opts = dict(g, seed=1029 + seed, **study["teacher"])
        _run_training(config_class("train-teacher"), train_teacher.run, opts, paths["teacher"],
                      f"[seed {seed}] teacher", log)
    for obj in study["objectives"]:
        run_dir = root / f"explainer-{obj}"
        paths[f"explainer-{obj}"] = run_dir
        opts = dict(g, seed=1029 + seed, method=obj, **study["explainer"])
        if obj == "kd":
            opts["teacher"] = str(paths["teacher"])
        _run_training(config_class("distill-explainer"), distill_explainer.run, opts, run_dir,
                      f"[seed {seed}] explainer {obj}", log)
    analysis = root / "analysis"
    paths["analysis"] = analysis
    if (analysis / "summary.csv").is_file() and (analysis / "report.md").is_file():
        console.print(f"[green]{esc(f'[seed {seed}]')} analysis: finished earlier, skipped[/]")
        log.append({"step": f"[seed {seed}] analysis", "status": "skipped (done)", "seconds": 0.0})
    else:
        t0 = time.perf_counter()
        a = study.get("analysis", {})
        console.print(f"[bold]{esc(f'[seed {seed}]')} analyze-conflicts[/] -> {esc(str(analysis))}")
        analyze_conflicts.run([paths[f"explainer-{o}"] for o in study["objectives"]], dataset=study.get("dataset"),
                              split=a.get("split", "val"), images=int(a.get("images", 1024)),
                              device=study.get("device") or "auto", out=analysis, data_root=study.get("data_root"),
                              **{k: v for k, v in a.items() if k in ANALYSIS_KEYS and k not in ("images", "split")})
        log.append({"step": f"[seed {seed}] analysis", "status": "ran", "seconds": time.perf_counter() - t0})
    students = root / "students"
    paths["students"] = students
    s = dict(study["student"])
    opts = dict(g, seed=1029 + seed, teacher=str(paths["teacher"]), compare=True,
                hierarchy=[str(analysis)], **s)
    if (students / "comparison_summary.csv").is_file():
        console.print(f"[green]{esc(f'[seed {seed}]')} students: finished earlier, skipped[/]")
        log.append({"step": f"[seed {seed}] students", "status": "skipped (done)", "seconds": 0.0})
    else:
        t0 = time.perf_counter()
        console.print(f"[bold]{esc(f'[seed {seed}]')} train-vam-student --compare[/] -> {esc(str(students))}")
        cfg = build_config(config_class("train-vam-student"), cli=dict(opts, out=str(students)))
        cfg.validate()
        train_vam_student.run(cfg)  # skips finished methods and resumes an interrupted one by itself
        log.append({"step": f"[seed {seed}] students", "status": "ran", "seconds": time.perf_counter() - t0})
    return paths


def run(study: dict, out: Path) -> dict:
    from kdx.engine.rundir import register_root

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    register_root(out, f"kdx pipeline --config {out / 'study.json'} --out {out}")  # an interrupted study reruns
    saved = out / "study.json"
    if saved.is_file():
        previous = json.loads(saved.read_text())
        changed = sorted(k for k in set(previous) | set(study) if previous.get(k) != study.get(k) and k != "out")
        if changed:
            raise KdxError(f"{out} holds a study with another config (differs in: {', '.join(changed)}); "
                           f"rerun with --config {saved} or choose another --out")
    atomic_write_text(saved, json.dumps(study, indent=2) + "\n")
    log: list[dict] = []
    t0 = time.perf_counter()
    seeds = [int(s) for s in study["seeds"]]
    per_seed = {}
    for seed in seeds:
        root = out if len(seeds) == 1 else out / f"seed{seed}"
        per_seed[seed] = run_seed(study, root, seed, log)
    from kdx.commands.study_report import write_report

    summary = write_report(study, out, per_seed, log, time.perf_counter() - t0)
    return summary


def print_config(study: dict) -> str:
    return json.dumps(study, indent=2)


def environment() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"kdx": kdx.__version__, "torch": torch.__version__, "python": platform.python_version(), "device": device,
            "git_commit": commit, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def reproduce_commands(study: dict, out: Path) -> list[str]:
    return [f"kdx pipeline --config {shlex.quote(str(out / 'study.json'))} --out {shlex.quote(str(out))}"]
