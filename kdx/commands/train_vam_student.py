"""`kdx train-vam-student`: a zoo student with KD methods and a VAM variant (``--vam``: the
authors' tree-guided cluster heads, kdx's virtual-attention head, both, or none); ``--compare``
trains a grid of arms side by side.

A single run is an ordinary engine run directory plus ``cost.csv`` and, with a head,
``vam_attention.csv``. ``--seeds`` puts one run per seed under ``RUN/seed{s}``; ``--compare``
puts one run per arm under ``RUN/seed{s}/{arm}``: for every method M of ``--compare-methods``
one arm per variant of ``--compare-vam`` (M, M+tree, M+head, M+tree+head; the tree ones with
``--hierarchy``, one per ``--compare-weights``), plus ce once, all
from the same seeds, initialisation and batch order, and writes ``comparison.csv`` (one row
per arm and seed), ``comparison_summary.csv`` (mean, std and the paired per-seed difference of
each arm against its method alone) and a plot. A rerun skips finished runs (``results.json``)
and resumes interrupted ones (``resume/``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from kdx.commands.common import format_delta, load_bundle, paired_delta
from kdx.config import read_config_file, save_config
from kdx.distill.methods import MethodContext
from kdx.distill.student import StudentTask
from kdx.distill.task import TeacherCache, build_methods, load_teacher, method_names
from kdx.models.routed.vam import VAMStudent, vam_cost_rows
from kdx.engine import checkpoint as ckpt
from kdx.engine.device import seed_everything
from kdx.engine.distributed import barrier
from kdx.io import atomic_write_csv, atomic_write_text
from kdx.engine.progress import table_console
from kdx.engine.rundir import RESULTS_FILE, claim_group_dir, finished, holds_run, mark_finished, prepare_run_dir
from kdx.engine.trainer import Runtime, Trainer
from kdx.errors import KdxError, did_you_mean


def compare_arms(cfg) -> list[tuple[str, str, dict]]:
    """``[(arm label, base method, config changes)]`` of ``--compare``: ce once, then for every
    method M of --compare-methods one arm per variant of --compare-vam: M (off), M+tree, M+head,
    M+tree+head; tree arms only with --hierarchy, one per weight of --compare-weights (labelled
    ``M+tree@w`` when --compare-weights is given, so that grids run into one folder at different
    times name an arm the same way); ce is left out with --no-compare-ce."""
    arms = [("ce", "ce", dict(method=["ce"], vam="off", hierarchy=None))] if cfg.compare_ce else []
    weights = list(cfg.compare_weights or [cfg.hierarchy_weight])
    for m in cfg.compare_methods:
        parts = [p for p in m.split("+") if p]
        label = "+".join(parts)
        for variant in cfg.compare_vam:
            if variant == "off":
                arms.append((label, label, dict(method=parts, vam="off", hierarchy=None)))
            elif "tree" not in variant:
                arms.append((f"{label}+{variant}", label, dict(method=parts, vam=variant, hierarchy=None)))
            elif cfg.hierarchy:
                for w in weights:
                    suffix = f"@{w:g}" if cfg.compare_weights else ""
                    arms.append((f"{label}+{variant}{suffix}", label,
                                 dict(method=parts, vam=variant, hierarchy=cfg.hierarchy, hierarchy_weight=float(w))))
    return arms


def arm_config(cfg, changes: dict, seed: int, out: Path):
    return dataclasses.replace(cfg, **changes, seed=int(seed), out=str(out), compare=False, seeds=None, resume=None,
                               overwrite=False)


def method_name(cfg) -> str:
    """``kd``, ``kd+tree``, ``kd+head``, ``kd+tree+head``: the methods and the VAM variant."""
    variant = cfg.vam_variant()[0]
    name = "+".join(cfg.method)
    return name if variant == "off" else f"{name}+{variant}"


def replaces_classifier(cfg) -> bool:
    return cfg.trains_head() and cfg.vam_head == "replace"


class StudentShared:
    """What the runs of one command share: runtime, datasets per seed, the teacher, cluster files."""

    def __init__(self, cfg):
        self.rt = Runtime.from_config(cfg)
        self.bundles: dict = {}
        self.teacher = self.teacher_meta = None
        self.caches: dict = {}

    def bundle(self, cfg):
        key = (cfg.seed, cfg.dataset, cfg.max_train_samples, cfg.val_fraction)
        if key not in self.bundles:
            self.bundles[key] = load_bundle(cfg)
        return self.bundles[key]

    def load_teacher(self, cfg, bundle):
        if self.teacher is None:
            self.teacher, self.teacher_meta = load_teacher(cfg.teacher, bundle)
            self.teacher_meta["_path"] = cfg.teacher
        return self.teacher, self.teacher_meta


def _log(cfg, text: str) -> None:
    table_console().print(text, highlight=False)


def _method_list(cfg) -> tuple[list[str], dict]:
    """The methods of this run (ce first, then --method, then the VAM variant's: vam_entropy for
    the replacing head, vam_head for the auxiliary one, hierarchy for the tree) and the config values
    they read (with the CE weight resolved)."""
    names, ce_weight = method_names(list(cfg.method), "student", cfg.ce_weight)
    if cfg.trains_head():
        if cfg.vam_head == "aux":
            names.append("vam_head")
        elif cfg.vam_entropy > 0:
            names.append("vam_entropy")
    if cfg.trains_tree():
        names.append("hierarchy")
    params = dataclasses.asdict(cfg)
    params["ce_weight"] = ce_weight
    return names, params


def resolve_hierarchy(cfg, folder: Path, class_names):
    """``--hierarchy`` sources that are explainer runs or checkpoints -> their class tree (hard
    routing) written as ``folder/clusters/layer{L}.json``; analysis folders and cluster files stay."""
    if not cfg.hierarchy:
        return cfg
    from kdx.analysis.clusters import cluster_json, explainer_tree
    from kdx.engine.checkpoint import load_model

    sources = []
    for src in cfg.hierarchy:
        p = Path(src)
        is_clusters = p.is_file() and p.suffix == ".json" or p.is_dir() and (
            (p / "clusters").is_dir() or any(p.glob("layer*.json")))
        if is_clusters or not p.exists():
            sources.append(src)  # load_hierarchy reads (or refuses) it
            continue
        model, meta = load_model(p)
        if meta.get("kind") != "explainer":
            raise KdxError(f"--hierarchy {src}: a {meta.get('kind')} checkpoint, not an explainer run, analysis "
                           f"folder or cluster file")
        if int(meta.get("num_classes", -1)) != len(class_names):
            raise KdxError(f"--hierarchy {src}: the explainer has {meta.get('num_classes')} classes, the data "
                           f"{len(class_names)}")
        out = folder / "clusters"
        out.mkdir(parents=True, exist_ok=True)
        for layer, merged in enumerate(explainer_tree(model), start=1):
            groups = list(enumerate(merged))
            atomic_write_text(out / f"layer{layer}.json",
                              json.dumps(cluster_json(groups, layer, list(class_names), str(src))) + "\n")
        _log(cfg, f"class tree of explainer {src} (hard routing) written to {out}")
        sources.append(str(out))
    from kdx.distill.hierarchy import check_class_names, load_hierarchy

    check_class_names(load_hierarchy(sources, len(class_names)), class_names)
    return dataclasses.replace(cfg, hierarchy=sources)


def build_task(cfg, bundle, shared: StudentShared, cache: TeacherCache | None = None, arm: str = "") -> StudentTask:
    """``arm``: the prefix of its lines in a group (``seed 0 kd+tree: ``), so repeated lines say whose they are."""
    from kdx.models import create_model, list_models

    if cfg.arch not in list_models():
        raise did_you_mean("arch", cfg.arch, list_models())
    seed_everything(cfg.seed, cfg.deterministic)  # same initial backbone for every arm of a seed
    student = create_model(cfg.arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    model = VAMStudent(student, cfg.vam_blocks, tau=cfg.vam_tau0,
                       routing="hard" if cfg.vam_hard_eval else "soft") if replaces_classifier(cfg) else student
    names, params = _method_list(cfg)
    from kdx.distill.methods import all_methods

    teacher = teacher_meta = None
    if any(all_methods()[n].needs_teacher for n in names):
        teacher, teacher_meta = shared.load_teacher(cfg, bundle)
    ctx = MethodContext(params=params, student=student, teacher=teacher, num_classes=bundle.num_classes,
                        num_samples=len(bundle.train), train_labels=bundle.train.labels, in_shape=(bundle.in_channels, bundle.image_size,
                                                                 bundle.image_size))
    methods = build_methods(names, ctx)
    variant = cfg.vam_variant()[0]
    metadata: dict = {"method": list(cfg.method), "hierarchy": None,
                      "vam_variant": {"variant": variant, "head": cfg.vam_head if cfg.trains_head() else None}}
    if replaces_classifier(cfg):
        metadata["vam"] = {"tau0": cfg.vam_tau0, "tau_rule": "tau0 / epoch", "train_routing": "soft",
                           "hard_eval": bool(cfg.vam_hard_eval), "entropy_weight": cfg.vam_entropy}
    for m in methods:
        if m.name == "hierarchy":
            metadata["hierarchy"] = m.describe()
            text = ", ".join(f"{s} <-> layer {layer} ({len(m.clusters[layer]['clusters'])} clusters)"
                             for s, layer in m.mapping)
            _log(cfg, f"{arm}hierarchy guidance: student stage <-> explainer layer: {text}")
    return StudentTask(model, methods, teacher=teacher, teacher_meta=teacher_meta, class_names=bundle.class_names,
                       tau0=cfg.vam_tau0, teacher_cache=cache, metadata=metadata, probe_shape=ctx.in_shape)


def write_cost(cfg, bundle, run_dir: Path) -> pd.DataFrame:
    shape = [bundle.in_channels, bundle.image_size, bundle.image_size]
    rows = vam_cost_rows(cfg.arch, bundle.num_classes, shape, cfg.vam_blocks)
    frame = pd.DataFrame(rows)
    atomic_write_csv(run_dir / "cost.csv", frame)
    return frame


def train_one(cfg, shared: StudentShared, label: str, cache: TeacherCache | None = None,
              group: bool = False) -> dict:
    """Train the run in ``cfg.out``; returns its summary row. ``group`` (runs of --compare/--seeds):
    a finished run is skipped, an interrupted one resumed, one without resume state restarted."""
    run_dir = Path(cfg.resume or cfg.out)
    if not group:
        variant, why = cfg.vam_variant()
        _log(cfg, f"VAM variant: {variant} ({why})")
        cfg = dataclasses.replace(cfg, vam=variant)  # config.json records the variant, not "auto"
    rt = shared.rt
    bundle = shared.bundle(cfg)
    if not (group and finished(run_dir)):
        if group and not cfg.resume and ckpt.has_resume(run_dir):
            cfg = dataclasses.replace(cfg, resume=str(run_dir))
        elif group and not cfg.resume and holds_run(run_dir) and not ckpt.has_resume(run_dir):
            cfg = dataclasses.replace(cfg, overwrite=True)  # started but nothing to resume: start again
        prepare_run_dir(cfg, rt.dist.is_main)
        barrier(rt.dist)
        if not group:
            cfg = resolve_hierarchy(cfg, run_dir, bundle.class_names)
        arm = f"{label}: " if group else ""
        task = build_task(cfg, bundle, shared, cache, arm=arm)
        cost = write_cost(cfg, bundle, run_dir) if rt.dist.is_main else None
        if cost is not None and replaces_classifier(cfg):
            o = cost.iloc[2]
            _log(cfg, f"{arm}VAM on {cfg.arch} (D={int(o['D'])}, K={int(o['K'])}): params {int(cost.iloc[0]['params']):,} -> "
                      f"{int(cost.iloc[1]['params']):,} ({o['params_pct']:+.3f}%), MACs {int(cost.iloc[0]['macs']):,} -> "
                      f"{int(cost.iloc[1]['macs']):,} ({o['macs_pct']:+.4f}%)")
        t0 = time.perf_counter()
        try:
            Trainer(cfg, task, bundle, run_dir, runtime=rt, label=label).fit()
        finally:  # interrupted sessions count too: the wall time adds up over resumes
            wall = time.perf_counter() - t0
            task.remove_hooks()
            if rt.dist.is_main:
                prev = _read_json(run_dir / "timing.json").get("wall_seconds", 0.0)
                atomic_write_text(run_dir / "timing.json", json.dumps({"wall_seconds": prev + wall}) + "\n")
    return summary_row(run_dir, method_name(cfg), cfg.seed, replaces_classifier(cfg))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary_row(run_dir: Path, method: str, seed: int, vam_replaces: bool = False) -> dict:
    """The run's comparison row; params/MACs are those of the deployed model (the auxiliary and
    tree heads are dropped at inference; the replacing head is not)."""
    res = _read_json(run_dir / "results.json")
    cost = pd.read_csv(run_dir / "cost.csv") if (run_dir / "cost.csv").is_file() else None
    variant = "student+vam" if vam_replaces else "student"
    params = macs = None
    if cost is not None:
        row = cost[cost["variant"] == variant].iloc[0]
        params, macs = int(row["params"]), int(row["macs"])
    metrics = pd.read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else None
    train_s = float(metrics["seconds"].sum()) if metrics is not None else None
    return {"method": method, "seed": seed, "test_top1_best": res.get("test_top1_best"),
            "test_top1_last": res.get("test_top1_last"), "best_epoch": res.get("best_epoch"),
            "val_top1_best": res.get("val_top1_best"), "params": params, "macs": macs,
            "seconds": _read_json(run_dir / "timing.json").get("wall_seconds"), "train_seconds": train_s,
            "run_dir": str(run_dir)}


# ---------------------------------------------------------------- entry point


def _seeds(cfg) -> list[int]:
    return [int(s) for s in cfg.seeds] if cfg.seeds else [int(cfg.seed)]


def _prepare_group_dir(cfg) -> Path:
    """RUN of --compare / --seeds: created, reused by a rerun (skip/resume), wiped by --overwrite."""

    def wipe(out: Path) -> bool:
        if (out / "config.json").is_file():
            saved = read_config_file(out / "config.json")
            if not (cfg.overwrite or saved.get("compare") or saved.get("seeds")):
                raise KdxError(f"--out {out} already holds a single run; use --overwrite to replace it")
            return cfg.overwrite
        if holds_run(out) and not cfg.overwrite:
            raise KdxError(f"--out {out} already holds a run; use --overwrite to replace it")
        return False

    out = claim_group_dir(Path(cfg.resume or cfg.out), wipe)
    save_config(dataclasses.replace(cfg, resume=None, overwrite=False, out=str(out)), out / "config.json")
    return out


def run(cfg) -> dict:
    cfg.validate()
    shared = StudentShared(cfg)
    is_main = shared.rt.dist.is_main
    if not cfg.compare and not cfg.seeds:
        row = train_one(cfg, shared, label=f"student {cfg.arch} ({method_name(cfg)})")
        if is_main:
            _print_single(Path(cfg.resume or cfg.out), row)
        return row
    out = _prepare_group_dir(cfg) if is_main else Path(cfg.resume or cfg.out)
    class_names = shared.bundle(dataclasses.replace(cfg, seed=_seeds(cfg)[0])).class_names
    if is_main:
        (out / RESULTS_FILE).unlink(missing_ok=True)  # written last, when every run of the group finished
        cfg = resolve_hierarchy(cfg, out, class_names)  # the main process writes an explainer's tree once
    barrier(shared.rt.dist)
    if not is_main:
        cfg = resolve_hierarchy(cfg, out, class_names)
    if cfg.compare:
        _log(cfg, "arms: " + ", ".join(label for label, _, _ in compare_arms(cfg)))
    else:
        variant, why = cfg.vam_variant()
        _log(cfg, f"VAM variant: {variant} ({why}), every seed")
        cfg = dataclasses.replace(cfg, vam=variant)
    arms = compare_arms(cfg) if cfg.compare else [(None, None, {})]
    rows = []
    for seed in _seeds(cfg):
        cache = TeacherCache(cfg.teacher_cache_mb << 20) if cfg.compare and cfg.teacher_cache_mb > 0 else None
        for label, base, changes in arms:
            if label is None:  # --seeds without --compare: the configured run once per seed
                sub = arm_config(cfg, {}, seed, out / f"seed{seed}")
            else:
                sub = arm_config(cfg, changes, seed, out / f"seed{seed}" / label)
            sub.validate()
            row = train_one(sub, shared, label=f"seed {seed} {method_name(sub)}", cache=cache, group=True)
            rows.append(dict(row, method=label or row["method"], base=base or row["method"]))
    if not is_main:
        return {}
    frame = pd.DataFrame(rows)
    atomic_write_csv(out / "comparison.csv", frame.drop(columns=["run_dir"]))
    summary = summarize(frame)
    atomic_write_csv(out / "comparison_summary.csv", summary)
    plot_comparison(summary, out / "comparison.png", title=f"{cfg.arch} on {cfg.dataset} ({len(_seeds(cfg))} seed(s))",
                    fmt=getattr(cfg, "plot_format", None))
    mark_finished(out, ["comparison.csv", "comparison_summary.csv"], kind="comparison")
    _print_comparison(summary, out, cfg)
    return {"comparison": rows}


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per arm, and the paired per-seed difference against the arm's method
    alone (``base``; same seed = same initialisation and batch order)."""
    out = []
    for method, g in frame.groupby("method", sort=False):
        base = str(g["base"].iloc[0]) if "base" in g else method
        row = {"method": method, "base": base, "seeds": len(g)}
        for col in ("test_top1_best", "test_top1_last", "best_epoch", "seconds", "train_seconds"):
            vals = pd.to_numeric(g[col], errors="coerce")
            row[f"{col}_mean"] = float(vals.mean())
            row[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals.dropna()) > 1 else float("nan")
        row["params"], row["macs"] = g["params"].iloc[0], g["macs"].iloc[0]
        for col in ("test_top1_best", "test_top1_last"):
            d = paired_delta(frame, method, base, col) if method != base else pd.Series(dtype=float)
            row[f"{col}_delta_vs_base_mean"] = float(d.mean()) if len(d) else float("nan")
            row[f"{col}_delta_vs_base_std"] = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def plot_comparison(summary: pd.DataFrame, path: Path, title: str = "", fmt: str | None = None) -> Path:
    """comparison.png (and .pdf/.svg with --plot-format): accuracy from 0 and each arm's paired difference
    against its method alone (kdx.analysis.plots.comparison_figure)."""
    from kdx.analysis.plots import comparison_plot

    return comparison_plot(summary, path, title=title, baseline="kd", fmt=fmt)


def pct_pm(v, s=None) -> str:
    if v is None or v != v:
        return "-"
    return f"{100 * v:.2f}%" + ("" if s is None or s != s else f" ± {100 * s:.2f}")  # one seed: no "± nan"


def _delta(r) -> str:
    """Paired best-val-epoch difference against the arm's method alone, in points: mean (± std over seeds)."""
    if r["method"] == r.get("base", r["method"]):
        return "-"
    return format_delta(r.get("test_top1_best_delta_vs_base_mean"), r.get("test_top1_best_delta_vs_base_std"))


def _print_comparison(summary: pd.DataFrame, out: Path, cfg) -> None:
    from rich.table import Table

    table = Table(title=f"student {cfg.arch} on {cfg.dataset}: test top-1, mean ± std over seeds")
    for col in ("method", "seeds", "best-val epoch", "last epoch", "vs method alone (paired)", "best epoch", "params", "MACs",
                "s / run"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for _, r in summary.iterrows():
        table.add_row(r["method"], str(r["seeds"]), pct_pm(r["test_top1_best_mean"], r["test_top1_best_std"]),
                      pct_pm(r["test_top1_last_mean"], r["test_top1_last_std"]), _delta(r), f"{r['best_epoch_mean']:.1f}",
                      f"{int(r['params']):,}" if r["params"] == r["params"] else "-",
                      f"{int(r['macs']):,}" if r["macs"] == r["macs"] else "-",
                      f"{r['seconds_mean']:.0f}" if r["seconds_mean"] == r["seconds_mean"] else "-")
    console = table_console()
    console.print(table)
    console.print(f"comparison: {out / 'comparison.csv'}, {out / 'comparison_summary.csv'}, {out / 'comparison.png'}")


def _print_single(run_dir: Path, row: dict) -> None:
    from kdx.commands.common import print_results

    print_results(f"student ({row['method']})", run_dir, _read_json(run_dir / "results.json"))
