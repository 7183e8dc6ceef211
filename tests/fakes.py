"""Fake run folders for tests: an explainer run (stage 2, hard tree) written without training."""

from __future__ import annotations

import json

import torch

from kdx.models.routed.explainer import KDExplainer


def fake_explainer_run(tmp_path, objective, seed):
    from kdx.data import load_dataset
    from kdx.engine.checkpoint import save_checkpoint
    from kdx.models.routed.tree import hard_tree as ht

    b = load_dataset("fashion-mnist-mini", val_fraction=0.1, seed=5)
    torch.manual_seed(seed)
    m = KDExplainer(10, in_channels=1, image_size=28, widths=[(8, 8), (8, 8), (8, 8)], hidden=16, routing="hard",
                    tau=1.0)
    with torch.no_grad():
        for r in m.branches:
            r.mul_(6)
    run = tmp_path / objective
    (run / "stage2").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 5, "val_fraction": 0.1}))
    meta = {"kind": "explainer", "arch": "kdexplainer", "explainer": m.config_dict(), "stage": 2,
            "objective": objective, "objective_params": {"smoothing": 0.1, "kd_temperature": 4.0, "kd_weight": 0.9,
                                                         "ce_weight": 0.1},
            "teacher": {"path": str(tmp_path / "missing-teacher")} if objective == "kd" else None,
            "tau_schedule": {"tau0": 4.0, "rule": "tau0 / epoch", "routing": "hard", "final_tau": 1.0},
            "tree": ht(m, b.class_names), "seed": 5, **b.meta()}
    save_checkpoint(run / "stage2" / "model.safetensors", m.state_dict(), meta)
    return run
