"""`kdx pipeline`: the whole study in one command.

teacher -> explainers (the study's methods: any registered explainer method, ``all`` of them, or
combinations such as ``kd+at``; a teacher for every method that needs one) for every study seed ->
analyze-conflicts per seed (and, with several seeds and methods, one analysis of all of them that
compares the methods side by side) -> train-vam-student --compare (with the hierarchy from the
first seed's analysis; skipped when the study sets ``students = false``). Every step is
an ordinary run directory under the study folder (layout: :func:`kdx.commands.study.layout`).
Every input of every step is checked before the first step runs; a rerun skips finished steps
(the run directory says so: :func:`kdx.engine.rundir.finished`) and resumes an interrupted one;
``study_summary.csv`` / ``study_report.md`` aggregate it.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from rich.markup import escape as esc

from kdx.commands import study as study_mod
from kdx.commandconfig import AnalyzeConflictsOptions
from kdx.commands.study import (BASE_SEED, GLOBAL_KEYS, PIPELINE_PRESETS, STEP_COMMANDS,  # noqa: F401 (re-exported)
                                layout, merge_study, parse_sets, step_options)
from kdx.io import atomic_write_text
from kdx.engine.progress import console
from kdx.engine.rundir import KIND_GROUP, claim_group_dir, finished, holds_run, write_marker
from kdx.distill.methods import all_methods
from kdx.errors import KdxError

# ------------------------------------------------------------------ the steps' configs


def build_step(step: str, values: dict):
    """The validated config of one step, from its values as the command line would give them."""
    from kdx.config import build_config, config_class

    cfg = build_config(config_class(STEP_COMMANDS[step]), cli=values)
    cfg.validate()
    return cfg


def _global(study: dict) -> dict:
    return {k: study[k] for k in GLOBAL_KEYS if study.get(k) is not None}


def step_values(study: dict, places: dict) -> dict:
    """Every training step's values: ``{"teacher": {...}, ("explainer", seed, m): {...}, "student": {...}}``."""
    g, seeds = _global(study), [int(s) for s in study["seeds"]]
    teacher = str(places["teacher"])
    steps: dict = {}
    if not study.get("teacher_run"):
        steps["teacher"] = dict(g, **study.get("teacher") or {}, seed=BASE_SEED + seeds[0], out=teacher)
    for s in seeds:
        for m in study["methods"]:
            v = dict(g, **study.get("explainer") or {}, seed=BASE_SEED + s, out=str(places["seeds"][s][f"explainer-{m}"]))
            v["method"] = m.split("+")
            if any(all_methods()[n].needs_teacher for n in v["method"]):  # a teacher wherever a method needs one
                v["teacher"] = teacher
            steps[("explainer", s, m)] = v
    if study.get("students", True):
        hierarchy = places["seeds"][seeds[0]]["analysis"]
        steps["student"] = dict(g, **study.get("student") or {}, seed=BASE_SEED + seeds[0], teacher=teacher,
                                compare=True, hierarchy=[str(hierarchy)], out=str(places["students"]))
    return steps


def method_analysis_runs(study: dict, places: dict) -> tuple[list[Path], list[str]]:
    """The runs and labels of the study-wide analysis: every explainer of every seed (``kd-s0``, ...)."""
    runs, labels = [], []
    for s, paths in places["seeds"].items():
        for m in study["methods"]:
            runs.append(paths[f"explainer-{m}"])
            labels.append(f"{m}-s{s}")
    return runs, labels


def analysis_options(study: dict, runs: list[Path], analysis: Path, labels: list[str] | None = None):
    """The analyze-conflicts options of one seed's analysis: the study's ``[analysis]`` table, each
    value checked against its declaration (:class:`kdx.commandconfig.AnalyzeConflictsOptions`),
    and what the pipeline sets (the runs, their labels, the folder, the study's data and device)."""
    from kdx.config import build_config
    from kdx.options import coerce

    params = step_options("analysis")
    table = dict(study.get("analysis") or {})
    for key, value in table.items():
        try:
            coerce(params[key], value)
        except KdxError as exc:
            raise KdxError(f"study table [analysis] {key} = {value!r} is not valid: {exc}") from None
    values = dict(table, runs=[str(r) for r in runs], label=list(labels or study["methods"]), out=str(analysis),
                  dataset=study.get("dataset"), device=study.get("device"), data_root=study.get("data_root"))
    opts = build_config(AnalyzeConflictsOptions, cli=values)
    opts.validate()
    return opts


# ------------------------------------------------------------------ checks before the first step


def _check_teacher_run(study: dict) -> dict:
    from kdx.data import get_dataset_info
    from kdx.engine.checkpoint import read_metadata

    path = study["teacher_run"]
    try:
        meta = read_metadata(path)
    except KdxError as exc:
        raise KdxError(f"--teacher {path}: {exc}") from None
    want = get_dataset_info(study.get("dataset") or "fashion-mnist-mini")["num_classes"]
    if int(meta.get("num_classes", want)) != want:
        raise KdxError(f"--teacher {path} predicts {meta.get('num_classes')} classes but '{study.get('dataset')}' "
                       f"has {want}")
    return meta


def _check_data(study: dict) -> None:
    from kdx.data import get_dataset_info, load_dataset

    name = study.get("dataset") or "fashion-mnist-mini"
    get_dataset_info(name)  # an unknown name fails here
    if not study.get("download"):
        load_dataset(name, root=study.get("data_root"), download=False)  # missing files fail here, not at step 1


def resolve(study: dict, out: Path) -> dict:
    """Every step's validated config (``configs``) and the layout (``places``); reads and writes nothing."""
    places = layout(study, out)
    configs = {key: build_step(key if isinstance(key, str) else key[0], values)
               for key, values in step_values(study, places).items()}
    for paths in places["seeds"].values():
        analysis_options(study, [paths[f"explainer-{m}"] for m in study["methods"]], paths["analysis"])
    if places["methods"] is not None:
        runs, labels = method_analysis_runs(study, places)
        analysis_options(study, runs, places["methods"], labels)
    return {"configs": configs, "places": places, "teacher_meta": None}


def build_study(preset: str | None, config_file: str | None, flags: dict, out: Path | None = None) -> dict:
    """The study of preset < file < flags, with every key and every value of every step checked."""
    study = study_mod.build_study(preset, config_file, flags)
    resolve(study, Path(out or "runs/study"))
    return study


def check_inputs(study: dict, out: Path) -> dict:
    """Check every input of every step before the first one runs: the values, the supplied teacher
    run, the data. Returns :func:`resolve`'s dict with the teacher's metadata."""
    resolved = resolve(study, out)
    if study.get("teacher_run"):
        resolved["teacher_meta"] = _check_teacher_run(study)
    _check_data(study)
    return resolved


# ------------------------------------------------------------------ the study folder


def claim_folder(study: dict, out: Path, overwrite: bool) -> None:
    """Save study.json in ``out``. Another study there is refused unless ``overwrite`` (which
    empties the folder) or unless none of its steps has started (a failed first try)."""
    saved = out / "study.json"

    def wipe(out: Path) -> bool:
        if not saved.is_file():
            return False
        try:
            previous = json.loads(saved.read_text())
        except ValueError:
            previous = {}
        changed = sorted(k for k in set(previous) | set(study) if previous.get(k) != study.get(k))
        if not overwrite and changed and _any_started(out):
            raise KdxError(f"{out} holds a study with another config (differs in: {', '.join(changed)}); "
                           f"rerun with --config {saved}, add --overwrite to replace it, or choose another --out")
        return overwrite

    claim_group_dir(out, wipe, command="pipeline")
    write_marker(out, "pipeline", KIND_GROUP)  # a study folder says so (issue 23), not only through study.json
    atomic_write_text(saved, json.dumps(study, indent=2) + "\n")


def _any_started(out: Path) -> bool:
    return any(holds_run(d) or finished(d) for d in out.rglob("*") if d.is_dir())


# ------------------------------------------------------------------ running the steps


def _train(step: str, cfg, run_dir: Path, name: str, log: list) -> None:
    """Train one step unless its run directory says it finished; resume it where it holds a run."""
    from kdx.engine.rundir import config_for_resume

    if finished(run_dir):
        console.print(f"[green]{esc(name)}: finished earlier, skipped[/] ({esc(str(run_dir))})")
        log.append({"step": name, "status": "skipped (done)", "seconds": 0.0})
        return
    resume = holds_run(run_dir)
    t0 = time.perf_counter()
    if resume:
        console.print(f"[yellow]{esc(name)}: resuming the interrupted run[/] ({esc(str(run_dir))})")
        cfg = config_for_resume(type(cfg), str(run_dir), {"quiet": cfg.quiet, "device": cfg.device})
    else:
        console.print(f"[bold]{esc(name)}[/] -> {esc(str(run_dir))}")
    _command(step).run(cfg)
    log.append({"step": name, "status": "resumed" if resume else "trained", "seconds": time.perf_counter() - t0})


def _command(step: str):
    from kdx.commands import distill_explainer, train_teacher, train_vam_student

    return {"teacher": train_teacher, "explainer": distill_explainer, "student": train_vam_student}[step]


def _analyse(study: dict, runs: list[Path], analysis: Path, name: str, log: list, labels=None) -> None:
    from kdx.analysis import plots
    from kdx.commands import analyze_conflicts

    if finished(analysis):
        console.print(f"[green]{esc(name)}: finished earlier, skipped[/]")
        log.append({"step": name, "status": "skipped (done)", "seconds": 0.0})
        return
    t0 = time.perf_counter()
    console.print(f"[bold]{esc(name)}[/] -> {esc(str(analysis))}")
    # the figures in the study's format (the module setting the pipeline's --plot-format made)
    analyze_conflicts.run(replace(analysis_options(study, runs, analysis, labels), plot_format=plots.PLOT_FORMAT))
    log.append({"step": name, "status": "ran", "seconds": time.perf_counter() - t0})


def _students(cfg, students: Path, log: list) -> None:
    from kdx.commands import train_vam_student

    if finished(students):
        console.print(f"[green]students: finished earlier, skipped[/] ({esc(str(students))})")
        log.append({"step": "students", "status": "skipped (done)", "seconds": 0.0})
        return
    t0 = time.perf_counter()
    console.print(f"[bold]train-vam-student --compare[/] -> {esc(str(students))}")
    train_vam_student.run(cfg)  # skips finished methods and resumes an interrupted one by itself
    log.append({"step": "students", "status": "ran", "seconds": time.perf_counter() - t0})


def run(study: dict, out: Path, overwrite: bool = False) -> dict:
    """Check, then run every step of ``study`` in ``out``; write the report. Returns the summary frame."""
    from kdx.commands.study_report import write_report

    from kdx.engine.rundir import register_root

    out = Path(out)
    resolved = check_inputs(study, out)  # nothing is written before every input passed
    claim_folder(study, out, overwrite)
    register_root(out, f"kdx pipeline --config {out / 'study.json'} --out {out}")  # an interrupted study reruns
    configs, places = resolved["configs"], resolved["places"]
    log: list[dict] = []
    t0 = time.perf_counter()
    if "teacher" in configs:
        _train("teacher", configs["teacher"], places["teacher"], "teacher", log)
    for s, paths in places["seeds"].items():
        for m in study["methods"]:
            _train("explainer", configs[("explainer", s, m)], paths[f"explainer-{m}"], f"[seed {s}] explainer {m}", log)
        _analyse(study, [paths[f"explainer-{m}"] for m in study["methods"]], paths["analysis"],
                 f"[seed {s}] analysis", log)
    if places["methods"] is not None:
        runs, labels = method_analysis_runs(study, places)
        _analyse(study, runs, places["methods"], "analysis of every method and seed", log, labels)
    if "student" in configs:
        _students(configs["student"], places["students"], log)
    return write_report(study, out, resolved, log, time.perf_counter() - t0)


def print_config(study: dict) -> str:
    return json.dumps(study, indent=2)


def from_options(opts) -> None:
    """``kdx pipeline``: the study of preset < ``--config`` file < flags (``--set`` included);
    ``--print-config`` prints it, else it runs in ``--out`` [runs/study-<preset>]."""
    from kdx.analysis.plots import set_plot_format

    set_plot_format(opts.plot_format)
    flags = {"teacher_run": opts.teacher, "dataset": opts.dataset, "data_root": opts.data_root, "device": opts.device,
             "threads": opts.threads, "quiet": opts.quiet, "download": opts.download, "methods": opts.methods or None,
             "seeds": opts.seeds or None}
    study = build_study(opts.preset, opts.config, merge_study(parse_sets(opts.set or []),
                                                              {k: v for k, v in flags.items() if v is not None}))
    if opts.print_config:
        print(print_config(study))
        return
    run(study, Path(opts.out) if opts.out else Path("runs") / f"study-{study['preset']}", overwrite=opts.overwrite)
