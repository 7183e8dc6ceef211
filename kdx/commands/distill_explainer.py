"""`kdx distill-explainer`: train KDExplainer in two stages with registered methods (ce, ls, kd, ...).

Run directory: ``config.json``; ``stage1/`` and ``stage2/`` (each an ordinary engine run:
model.safetensors, best.safetensors, metrics.csv, routing.csv, resume/, results.json);
at the top ``metrics.csv`` and ``routing.csv`` of both stages (with a ``stage`` column),
``tree.json`` (the hard tree) and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from kdx.commands.common import load_bundle
from kdx.config import parse_widths
from kdx.distill.methods import MethodContext
from kdx.distill.task import build_methods, load_teacher, method_names
from kdx.engine import checkpoint as ckpt
from kdx.engine.distributed import barrier
from kdx.io import atomic_write_csv, atomic_write_text, json_dumps, with_reasons
from kdx.engine.progress import table_console
from kdx.engine.rundir import finished, prepare_run_dir
from kdx.engine.runs import stage_dir, stage_start
from kdx.engine.trainer import Runtime, Trainer
from kdx.errors import KdxError
from kdx.seeding import forked_rng
from kdx.models.routed.explainer import KDExplainer
from kdx.distill.explainer_task import ExplainerTask
from kdx.models.routed.tree import hard_tree


def _stage_done(sdir: Path) -> bool:
    return finished(sdir)


STAGE2_FROM = {"best": "best", "last": "model"}
"""``stage2_from`` -> the stage-1 checkpoint (``--which``) that stage 2 starts from."""


def _check_stage2_from(value: str) -> None:
    if value not in STAGE2_FROM:
        raise KdxError(f"--stage2-from must be one of {', '.join(STAGE2_FROM)}; got '{value}'")


def stage1_source(path: str, stage2_from: str = "best") -> Path:
    """The stage-1 checkpoint stage 2 starts from: ``stage2_from`` (best on validation | last epoch)
    of the run (or stage folder) ``path``; a checkpoint file is taken as it is."""
    _check_stage2_from(stage2_from)
    return stage_start(path, 1, STAGE2_FROM[stage2_from])


def _stage_config(cfg, stage: int) -> SimpleNamespace:
    """The engine's view of one stage: the explainer's options plus that stage's optimiser and schedule."""
    values = dataclasses.asdict(cfg)
    values.update(warmup_epochs=0, nesterov=False, milestones=[], gamma=1.0)
    if stage == 1:
        values.update(epochs=cfg.stage1_epochs, lr=cfg.stage1_lr, optimizer="adam", schedule="explainer-stage1")
    else:
        values.update(epochs=cfg.stage2_epochs, lr=cfg.stage2_lr, optimizer=cfg.stage2_optimizer, schedule="halving")
    return SimpleNamespace(**values)


def _methods(cfg, bundle, teacher, model):
    """The stage's methods, built on its explainer (feature methods read its declared taps)."""
    names, ce_weight = method_names(list(cfg.method), "explainer", cfg.ce_weight)
    params = dict(dataclasses.asdict(cfg), ce_weight=ce_weight)
    return build_methods(names, MethodContext(params=params, student=model, teacher=teacher,
                                              num_classes=bundle.num_classes, num_samples=len(bundle.train),
                                              train_labels=bundle.train.labels,
                                              in_shape=(bundle.in_channels, bundle.image_size, bundle.image_size)))


def _merge(run_dir: Path, stages: list[int], name: str) -> pd.DataFrame | None:
    frames = []
    for s in stages:
        f = run_dir / f"stage{s}" / f"{name}.csv"
        if f.is_file():
            frame = pd.read_csv(f)
            if "stage" not in frame.columns:
                frame.insert(0, "stage", s)
            frames.append(frame)
    if not frames:
        return None
    merged = pd.concat(frames, ignore_index=True)
    cols = ["stage", "epoch"] + [c for c in merged.columns if c not in ("stage", "epoch")]
    merged = merged[cols]
    atomic_write_csv(run_dir / f"{name}.csv", merged)
    return merged


def run(cfg) -> dict:
    cfg.validate()
    rt = Runtime.from_config(cfg)
    run_dir = prepare_run_dir(cfg, rt.dist.is_main)
    barrier(rt.dist)
    job = _ExplainerRun(cfg, rt, run_dir, load_bundle(cfg))
    stages = [1, 2] if cfg.stage == "both" else [int(cfg.stage)]
    final = job.train_stage(1, job.new_explainer) if 1 in stages else None
    if 2 in stages:
        source = stage1_source(str(run_dir) if 1 in stages else cfg.from_run, cfg.stage2_from)
        job.record_stage2_source(source)
        final = job.train_stage(2, lambda: job.stage2_explainer(source))
    if rt.dist.is_main:
        job.finish(stages, final)
    barrier(rt.dist)
    return job.results


class _ExplainerRun:
    """One ``distill-explainer`` run: its stages' training, the stage-2 start and the run's summary files."""

    def __init__(self, cfg, rt: Runtime, run_dir: Path, bundle):
        self.cfg, self.rt, self.run_dir, self.bundle = cfg, rt, run_dir, bundle
        self.teacher = self.teacher_meta = None
        if cfg.teacher:
            self.teacher, self.teacher_meta = load_teacher(cfg.teacher, bundle)
            self.teacher_meta["_path"] = cfg.teacher
        self.method = "+".join(cfg.method)
        self.results: dict = {"method": self.method, "stages": {}}

    def train_stage(self, stage: int, build_model) -> Path:
        """Train one stage in RUN/stage<N> unless it finished earlier; the engine resumes it if interrupted."""
        cfg, bundle = self.cfg, self.bundle
        sdir = stage_dir(self.run_dir, stage)
        if not _stage_done(sdir):
            sdir.mkdir(parents=True, exist_ok=True)
            model = build_model()
            task = ExplainerTask(model, _methods(cfg, bundle, self.teacher, model), cfg, stage=stage,
                                 teacher=self.teacher, teacher_meta=self.teacher_meta, class_names=bundle.class_names,
                                 probe_shape=(bundle.in_channels, bundle.image_size, bundle.image_size))
            Trainer(_stage_config(cfg, stage), task, bundle, sdir, runtime=self.rt,
                    label=f"explainer stage {stage} ({self.method})").fit()
        self.results["stages"][str(stage)] = json.loads((sdir / "results.json").read_text())
        return sdir / ckpt.MODEL_FILE

    def new_explainer(self) -> KDExplainer:
        cfg, bundle = self.cfg, self.bundle
        return KDExplainer(bundle.num_classes, in_channels=bundle.in_channels, image_size=bundle.image_size,
                           experts=[int(e) for e in cfg.experts] if cfg.experts else None,
                           widths=parse_widths(cfg.widths), head=cfg.head, tau=cfg.tau0)

    def record_stage2_source(self, source: Path) -> None:
        shown = source.relative_to(self.run_dir) if source.is_relative_to(self.run_dir) else source
        self.results["stage2_from"] = {"option": self.cfg.stage2_from, "checkpoint": str(shown),
                                       "epoch": ckpt.read_metadata(source).get("epoch")}

    def stage2_explainer(self, source: Path) -> KDExplainer:
        """The stage-1 explainer at ``source`` with new weights and its learned tree (official stage 2)."""
        model, meta = ckpt.load_model(source)
        if meta.get("kind") != "explainer":
            raise KdxError(f"{source} is a '{meta.get('kind')}' checkpoint, not an explainer")
        bundle = self.bundle
        if int(meta["num_classes"]) != bundle.num_classes:
            raise KdxError(f"{source} has {meta['num_classes']} classes but '{bundle.name}' has {bundle.num_classes}")
        with forked_rng(self.cfg.seed, "stage2"):
            model.reset_parameters(keep_routing=True)  # official stage 2: new weights, the learned tree
        return model

    def finish(self, stages: list[int], final: Path) -> None:
        """The run's merged metrics and routing, ``tree.json``, ``results.json`` and the summary table."""
        run_dir, results = self.run_dir, self.results
        _merge(run_dir, stages, "metrics")
        _merge(run_dir, stages, "routing")
        model, _ = ckpt.load_model(final)
        tree = hard_tree(model, self.bundle.class_names)
        atomic_write_text(run_dir / "tree.json", json.dumps(tree, indent=2) + "\n")
        last = results["stages"][str(stages[-1])]
        results.update({"final_checkpoint": str(final.relative_to(run_dir)), "test_top1_last": last["test_top1_last"],
                        "test_top1_best": last["test_top1_best"], "best_epoch": last["best_epoch"]})
        results.update(_stage1_routing(pd.read_csv(run_dir / "metrics.csv")))
        atomic_write_text(run_dir / "results.json", json_dumps(with_reasons(results), indent=2) + "\n")
        _print_summary(run_dir, self.cfg, results, tree)


def _stage1_routing(metrics: pd.DataFrame) -> dict:
    """The last stage-1 epoch's mean routing entropy per layer and tau ({} without stage-1 rows)."""
    s1rows = metrics[metrics["stage"] == 1]
    if not len(s1rows):
        return {}
    ent = {c: float(s1rows[c].iloc[-1]) for c in s1rows.columns if c.startswith("routing_entropy_l")}
    return {"stage1_final_routing_entropy": ent, "stage1_final_tau": float(s1rows["tau"].iloc[-1])}


def _print_summary(run_dir: Path, cfg, results: dict, tree: dict) -> None:
    from rich.table import Table

    table = Table(title=f"KDExplainer ({'+'.join(cfg.method)}) on {cfg.dataset}")
    for col in ("stage", "best epoch (val)", "val top-1", "test top-1 best", "test top-1 last"):
        table.add_column(col, justify="right")
    for s, r in results["stages"].items():
        table.add_row(s, str(r["best_epoch"]), f"{100 * (r.get('val_top1_best') or 0):.2f}%",
                      f"{100 * r['test_top1_best']:.2f}%", f"{100 * r['test_top1_last']:.2f}%")
    console = table_console()
    console.print(table)
    if "stage1_final_routing_entropy" in results:
        ent = ", ".join(f"{k[len('routing_entropy_'):]} {v:.3f}"
                        for k, v in results["stage1_final_routing_entropy"].items())
        console.print(f"stage-1 mean routing entropy at tau {results['stage1_final_tau']:.3g}: {ent}")
    last = tree["layers"][-1]
    groups = ["{" + ", ".join(g["names"]) + "}" for g in last["groups"] if g["classes"]]
    console.print(f"classes per expert of layer {last['layer']}: " + " ".join(groups))
    console.print(f"run directory: {run_dir}")
