"""`kdx train-teacher`: train a zoo model with cross-entropy (the teacher of later steps)."""

from __future__ import annotations

from kdx.config import TeacherConfig
from kdx.engine.distributed import barrier
from kdx.engine.rundir import prepare_run_dir
from kdx.engine.task import TrainTask
from kdx.engine.trainer import Runtime, Trainer
from kdx.commands.common import load_bundle, print_results


def run(cfg: TeacherConfig) -> dict:
    cfg.validate()
    from kdx.models import create_model, list_models
    from kdx.errors import did_you_mean

    if cfg.arch not in list_models():
        raise did_you_mean("arch", cfg.arch, list_models())
    rt = Runtime.from_config(cfg)
    run_dir = prepare_run_dir(cfg, rt.dist.is_main)
    barrier(rt.dist)
    bundle = load_bundle(cfg)
    model = create_model(cfg.arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    task = TrainTask(model, label_smoothing=cfg.label_smoothing or 0.0)
    results = Trainer(cfg, task, bundle, run_dir, runtime=rt, label=f"teacher {cfg.arch}").fit()
    if rt.dist.is_main:
        print_results(f"teacher {cfg.arch} on {bundle.name}", run_dir, results)
    return results
