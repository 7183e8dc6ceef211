"""`kdx train-vam-student`: a zoo student with KD, the virtual attention module (VAM) and
hierarchy guidance; ``--compare`` trains CE / KD / KD+VAM / KD+VAM+hierarchy side by side.

A single run is an ordinary engine run directory plus ``cost.csv`` and, with the VAM,
``vam_attention.csv``. ``--seeds`` puts one run per seed under ``RUN/seed{s}``; ``--compare``
puts one run per method under ``RUN/seed{s}/{method}`` and writes ``comparison.csv``,
``comparison_summary.csv`` and ``comparison.png`` in RUN. A rerun skips finished runs
(``results.json``) and resumes interrupted ones (``resume/``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from kdx.commands.common import format_delta, load_bundle, paired_delta
from kdx.config import VamConfig, read_config_file, save_config
from kdx.distill.hierarchy import HierarchyHeads, load_hierarchy, map_stages
from kdx.distill.pieces import StudentTask, TeacherCache
from kdx.distill.task import load_teacher
from kdx.distill.vam import VAMStudent, vam_cost_rows
from kdx.engine import checkpoint as ckpt
from kdx.engine.device import seed_everything
from kdx.engine.distributed import barrier
from kdx.engine.io import atomic_write_csv, atomic_write_text
from kdx.engine.progress import table_console
from kdx.engine.rundir import holds_run, prepare_run_dir
from kdx.engine.trainer import Runtime, Trainer
from kdx.errors import KdxError, did_you_mean

METHODS = {  # method -> (objective, vam, hierarchy)
    "ce": ("ce", False, False),
    "kd": ("kd", False, False),
    "kd+vam": ("kd", True, False),
    "kd+vam+hier": ("kd", True, True),
}


def _dir_name(method: str) -> str:
    return method.replace("+", "_")


def method_config(cfg: VamConfig, method: str, seed: int, out: Path) -> VamConfig:
    objective, vam, hier = METHODS[method]
    return dataclasses.replace(cfg, objective=objective, vam=vam, hierarchy=cfg.hierarchy if hier else None,
                               seed=int(seed), out=str(out), compare=False, seeds=None, resume=None, overwrite=False)


def method_name(cfg: VamConfig) -> str:
    name = cfg.objective
    if cfg.vam:
        name += "+vam"
    if cfg.hierarchy:
        name += "+hier"
    return name


class _Shared:
    """What the runs of one command share: runtime, datasets per seed, the teacher, cluster files."""

    def __init__(self, cfg: VamConfig):
        self.rt = Runtime.from_config(cfg)
        self.bundles: dict = {}
        self.teacher = self.teacher_meta = None
        self.caches: dict = {}

    def bundle(self, cfg: VamConfig):
        key = (cfg.seed, cfg.dataset, cfg.max_train_samples, cfg.val_fraction)
        if key not in self.bundles:
            self.bundles[key] = load_bundle(cfg)
        return self.bundles[key]

    def load_teacher(self, cfg: VamConfig, bundle):
        if self.teacher is None:
            self.teacher, self.teacher_meta = load_teacher(cfg.teacher, bundle)
            self.teacher_meta["_path"] = cfg.teacher
        return self.teacher, self.teacher_meta


def _log(cfg, text: str) -> None:
    table_console().print(text, highlight=False)


def build_task(cfg: VamConfig, bundle, shared: _Shared, cache: TeacherCache | None = None) -> StudentTask:
    from kdx.models import create_model, list_models

    if cfg.arch not in list_models():
        raise did_you_mean("arch", cfg.arch, list_models())
    seed_everything(cfg.seed, cfg.deterministic)  # same initial backbone for every method of a seed
    student = create_model(cfg.arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    stage_names, stage_channels = list(student.stage_names), dict(zip(student.stage_names, student.stage_channels))
    model = VAMStudent(student, cfg.vam_blocks, tau=cfg.vam_tau0,
                       routing="hard" if cfg.vam_hard_eval else "soft") if cfg.vam else student
    pieces = ["ce"]
    weights = {"ce": 1.0}
    teacher = teacher_meta = None
    if cfg.objective == "kd":
        teacher, teacher_meta = shared.load_teacher(cfg, bundle)
        pieces.append("kd")
        weights.update(ce=cfg.ce_weight, kd=cfg.kd_weight, kd_temperature=cfg.kd_temperature)
    metadata: dict = {"objective": cfg.objective, "hierarchy": None}
    if cfg.vam:
        metadata["vam"] = {"tau0": cfg.vam_tau0, "tau_rule": "tau0 / epoch", "train_routing": "soft",
                           "hard_eval": bool(cfg.vam_hard_eval), "entropy_weight": cfg.vam_entropy}
        if cfg.vam_entropy > 0:
            pieces.append("vam_entropy")
            weights["vam_entropy"] = cfg.vam_entropy
    heads = None
    hook_stages = None
    if cfg.hierarchy:
        hierarchy = load_hierarchy(cfg.hierarchy, bundle.num_classes)
        mapping = map_stages(stage_names, list(hierarchy), cfg.hierarchy_stages)
        torch.manual_seed(cfg.seed + 7)  # the heads' init does not shift anything else
        heads = HierarchyHeads(mapping, stage_channels, hierarchy, bundle.num_classes)
        hook_stages = sorted({s for s, _ in mapping}, key=stage_names.index)
        pieces.append("hierarchy")
        weights["hierarchy"] = cfg.hierarchy_weight
        metadata["hierarchy"] = {"files": {str(k): v["file"] for k, v in hierarchy.items()},
                                 "clusters": {str(k): v["clusters"] for k, v in hierarchy.items()},
                                 "weight": cfg.hierarchy_weight,
                                 "stage_mapping": [{"stage": s, "layer": layer} for s, layer in mapping],
                                 "loss": "sum over heads of W * CE(cluster, weight 1/|cluster|)",
                                 "aux_heads_saved": False}
        text = ", ".join(f"{s} <-> layer {layer} ({len(hierarchy[layer]['clusters'])} clusters)" for s, layer in mapping)
        _log(cfg, f"hierarchy guidance: student stage <-> explainer layer: {text}")
    return StudentTask(model, pieces, weights, cfg, teacher=teacher, teacher_meta=teacher_meta,
                       hierarchy_heads=heads, hook_stages=hook_stages, class_names=bundle.class_names,
                       tau0=cfg.vam_tau0, teacher_cache=cache, metadata=metadata)


def write_cost(cfg: VamConfig, bundle, run_dir: Path) -> pd.DataFrame:
    shape = [bundle.in_channels, bundle.image_size, bundle.image_size]
    rows = vam_cost_rows(cfg.arch, bundle.num_classes, shape, cfg.vam_blocks)
    frame = pd.DataFrame(rows)
    atomic_write_csv(run_dir / "cost.csv", frame)
    return frame


def _run_done(run_dir: Path) -> bool:
    return (run_dir / "results.json").is_file() and (run_dir / ckpt.MODEL_FILE).is_file()


def train_one(cfg: VamConfig, shared: _Shared, label: str, cache: TeacherCache | None = None,
              group: bool = False) -> dict:
    """Train the run in ``cfg.out``; returns its summary row. ``group`` (runs of --compare/--seeds):
    a finished run is skipped, an interrupted one resumed, one without resume state restarted."""
    run_dir = Path(cfg.resume or cfg.out)
    rt = shared.rt
    bundle = shared.bundle(cfg)
    if not (group and _run_done(run_dir)):
        if group and not cfg.resume and ckpt.has_resume(run_dir):
            cfg = dataclasses.replace(cfg, resume=str(run_dir))
        elif group and not cfg.resume and holds_run(run_dir) and not ckpt.has_resume(run_dir):
            cfg = dataclasses.replace(cfg, overwrite=True)  # started but nothing to resume: start again
        prepare_run_dir(cfg, rt.dist.is_main)
        barrier(rt.dist)
        task = build_task(cfg, bundle, shared, cache)
        cost = write_cost(cfg, bundle, run_dir) if rt.dist.is_main else None
        if cost is not None and cfg.vam:
            o = cost.iloc[2]
            _log(cfg, f"VAM on {cfg.arch} (D={int(o['D'])}, K={int(o['K'])}): params {int(cost.iloc[0]['params']):,} -> "
                      f"{int(cost.iloc[1]['params']):,} ({o['params_pct']:+.3f}%), MACs {int(cost.iloc[0]['macs']):,} -> "
                      f"{int(cost.iloc[1]['macs']):,} ({o['macs_pct']:+.4f}%)")
        t0 = time.perf_counter()
        try:
            Trainer(cfg, task, bundle, run_dir, runtime=rt, label=label).fit()
        finally:  # interrupted sessions count too: the wall time adds up over resumes
            wall = time.perf_counter() - t0
            if task.hooks is not None:
                task.hooks.remove()
            if rt.dist.is_main:
                prev = _read_json(run_dir / "timing.json").get("wall_seconds", 0.0)
                atomic_write_text(run_dir / "timing.json", json.dumps({"wall_seconds": prev + wall}) + "\n")
    return summary_row(run_dir, method_name(cfg), cfg.seed)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary_row(run_dir: Path, method: str, seed: int) -> dict:
    res = _read_json(run_dir / "results.json")
    cost = pd.read_csv(run_dir / "cost.csv") if (run_dir / "cost.csv").is_file() else None
    variant = "student+vam" if "vam" in method else "student"
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


def _seeds(cfg: VamConfig) -> list[int]:
    return [int(s) for s in cfg.seeds] if cfg.seeds else [int(cfg.seed)]


def _prepare_group_dir(cfg: VamConfig) -> Path:
    """RUN of --compare / --seeds: created, reused by a rerun (skip/resume), wiped by --overwrite."""
    out = Path(cfg.resume or cfg.out)
    if out.exists() and not out.is_dir():
        raise KdxError(f"--out {out} exists and is not a directory")
    if out.is_dir() and (out / "config.json").is_file():
        saved = read_config_file(out / "config.json")
        if cfg.overwrite:
            shutil.rmtree(out)
        elif not (saved.get("compare") or saved.get("seeds")):
            raise KdxError(f"--out {out} already holds a single run; use --overwrite to replace it")
    elif out.is_dir() and holds_run(out) and not cfg.overwrite:
        raise KdxError(f"--out {out} already holds a run; use --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, resume=None, overwrite=False, out=str(out)), out / "config.json")
    return out


def run(cfg: VamConfig) -> dict:
    cfg.validate()
    shared = _Shared(cfg)
    is_main = shared.rt.dist.is_main
    if not cfg.compare and not cfg.seeds:
        row = train_one(cfg, shared, label=f"student {cfg.arch} ({method_name(cfg)})")
        if is_main:
            _print_single(Path(cfg.resume or cfg.out), row)
        return row
    out = _prepare_group_dir(cfg) if is_main else Path(cfg.resume or cfg.out)
    barrier(shared.rt.dist)
    methods = [m for m in METHODS if cfg.hierarchy or not METHODS[m][2]] if cfg.compare else [None]
    rows = []
    for seed in _seeds(cfg):
        cache = TeacherCache(cfg.teacher_cache_mb << 20) if cfg.compare and cfg.teacher_cache_mb > 0 else None
        for method in methods:
            if method is None:  # --seeds without --compare: the configured method once per seed
                sub = dataclasses.replace(cfg, seed=int(seed), out=str(out / f"seed{seed}"), compare=False, seeds=None,
                                          resume=None, overwrite=False)
            else:
                sub = method_config(cfg, method, seed, out / f"seed{seed}" / _dir_name(method))
            sub.validate()
            rows.append(train_one(sub, shared, label=f"seed {seed} {method_name(sub)}", cache=cache,
                                  group=True))
    if not is_main:
        return {}
    frame = pd.DataFrame(rows)
    atomic_write_csv(out / "comparison.csv", frame.drop(columns=["run_dir"]))
    summary = summarize(frame)
    atomic_write_csv(out / "comparison_summary.csv", summary)
    plot_comparison(summary, out / "comparison.png", title=f"{cfg.arch} on {cfg.dataset} ({len(_seeds(cfg))} seed(s))")
    _print_comparison(summary, out, cfg)
    return {"comparison": rows}


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    out = []
    for method, g in frame.groupby("method", sort=False):
        row = {"method": method, "seeds": len(g)}
        for col in ("test_top1_best", "test_top1_last", "best_epoch", "seconds", "train_seconds"):
            vals = pd.to_numeric(g[col], errors="coerce")
            row[f"{col}_mean"] = float(vals.mean())
            row[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals.dropna()) > 1 else 0.0
        row["params"], row["macs"] = g["params"].iloc[0], g["macs"].iloc[0]
        for col in ("test_top1_best", "test_top1_last"):
            d = paired_delta(frame, method, "kd", col)
            row[f"{col}_delta_vs_kd_mean"] = float(d.mean()) if len(d) else float("nan")
            row[f"{col}_delta_vs_kd_std"] = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def plot_comparison(summary: pd.DataFrame, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["method"])
    x = range(len(methods))
    width = 0.38
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2.5, 4.2))
    for off, col, label in ((-width / 2, "test_top1_best", "best-val epoch"), (width / 2, "test_top1_last", "last epoch")):
        means = 100 * summary[f"{col}_mean"]
        stds = 100 * summary[f"{col}_std"]
        bars = ax.bar([i + off for i in x], means, width, yerr=stds, capsize=4, label=label)
        for b, m, s in zip(bars, means, stds):
            ax.annotate(f"{m:.2f}\n±{s:.2f}", (b.get_x() + b.get_width() / 2, m + s), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    lo = float((100 * (summary["test_top1_best_mean"] - summary["test_top1_best_std"])).min())
    ax.set_ylim(max(0.0, lo - 10), min(100.0, float((100 * summary["test_top1_best_mean"]).max()) + 8))
    ax.set_xticks(list(x), methods)
    ax.set_ylabel("test top-1 (%), mean ± std over seeds")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _pct(v, s=None) -> str:
    if v is None or v != v:
        return "-"
    return f"{100 * v:.2f}%" + ("" if s is None else f" ± {100 * s:.2f}")


def _delta(r) -> str:
    """Paired best-val-epoch difference against kd, in points: mean (± std over seeds)."""
    if r["method"] == "kd":
        return "-"
    return format_delta(r.get("test_top1_best_delta_vs_kd_mean"), r.get("test_top1_best_delta_vs_kd_std"))


def _print_comparison(summary: pd.DataFrame, out: Path, cfg: VamConfig) -> None:
    from rich.table import Table

    table = Table(title=f"student {cfg.arch} on {cfg.dataset}: test top-1, mean ± std over seeds")
    for col in ("method", "seeds", "best-val epoch", "last epoch", "vs kd (paired)", "best epoch", "params", "MACs",
                "s / run"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for _, r in summary.iterrows():
        table.add_row(r["method"], str(r["seeds"]), _pct(r["test_top1_best_mean"], r["test_top1_best_std"]),
                      _pct(r["test_top1_last_mean"], r["test_top1_last_std"]), _delta(r), f"{r['best_epoch_mean']:.1f}",
                      f"{int(r['params']):,}" if r["params"] == r["params"] else "-",
                      f"{int(r['macs']):,}" if r["macs"] == r["macs"] else "-",
                      f"{r['seconds_mean']:.0f}" if r["seconds_mean"] == r["seconds_mean"] else "-")
    console = table_console()
    console.print(table)
    console.print(f"comparison: {out / 'comparison.csv'}, {out / 'comparison_summary.csv'}, {out / 'comparison.png'}")


def _print_single(run_dir: Path, row: dict) -> None:
    from kdx.commands.common import print_results

    print_results(f"student ({row['method']})", run_dir, _read_json(run_dir / "results.json"))
