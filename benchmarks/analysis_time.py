"""Wall time of `kdx analyze-conflicts` on a random-weight explainer, C=10 and C=100.

    python benchmarks/analysis_time.py [--classes 10 100] [--images 1024] [--widths 32] [--budgets 25 22]

For every class count: a KDExplainer with random weights and its random hard tree (the stage-2
state that real runs are analysed in), a folder data set of random 32x32 RGB images, then

1. the whole command (``kdx.commands.analyze_conflicts.run``: attention, entropy, sharing,
   gradient components and conflicts, clusters, every plot and the report), timed;
2. the gradient components alone under each ``--budgets`` value (``kdx.analysis.conflicts.BUDGET``
   = 2^b float elements per temporary), printed as ratios against the first one, in this process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdx.analysis import conflicts as cf
from kdx.commands import analyze_conflicts
from kdx.engine.checkpoint import save_checkpoint
from kdx.models.routed.explainer import KDExplainer
from kdx.models.routed.tree import hard_tree


def make_case(root: Path, classes: int, images: int, width: int) -> tuple[Path, Path, KDExplainer]:
    torch.manual_seed(0)
    model = KDExplainer(classes, 3, 32, widths=[(width, width)] * 3, routing="hard", tau=1.0)
    names = [f"c{i:03d}" for i in range(classes)]
    meta = {"kind": "explainer", "arch": "kdexplainer", "explainer": model.config_dict(), "stage": 2,
            "objective": "ce", "objective_params": {}, "teacher": None, "tau_schedule": {"final_tau": 1.0},
            "tree": hard_tree(model, names), "dataset": f"folder:{root / 'data'}", "num_classes": classes,
            "class_names": names, "input_shape": [3, 32, 32], "seed": 0}
    run = root / "run"
    save_checkpoint(run / "model.safetensors", model.state_dict(), meta)
    rng = np.random.default_rng(0)
    per_class = -(-images // classes)
    for split, n in (("train", 2), ("val", per_class)):  # folder layout: val/ is the test split
        for c in range(classes):
            d = root / "data" / split / names[c]
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return run, root / "data", model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--widths", type=int, default=32, help="channels per expert (mid = out)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[25, 22],
                    help="log2 of the temporaries' size for the components-only comparison")
    ap.add_argument("--components-images", type=int, default=256)
    args = ap.parse_args()
    default_budget = cf.BUDGET
    for classes in args.classes:
        with tempfile.TemporaryDirectory() as tmp:
            run, data, model = make_case(Path(tmp), classes, args.images, args.widths)
            t0 = time.perf_counter()
            analyze_conflicts.run([run], dataset=f"folder:{data}", split="test", images=args.images,
                                  out=Path(tmp) / "out")
            whole = time.perf_counter() - t0
            print(f"C={classes}: analyze-conflicts on {args.images} images (widths {args.widths}, "
                  f"{torch.get_num_threads()} threads): {whole:.1f} s", flush=True)
            g = torch.Generator().manual_seed(1)
            n = args.components_images
            x = torch.randn(n, 3, 32, 32, generator=g)
            y = torch.randint(0, classes, (n,), generator=g)
            batches = [(x[i:i + 256], y[i:i + 256], None) for i in range(0, n, 256)]
            losses = {"ce": cf.loss_for("ce", None), "ls": cf.loss_for("ls", None)}
            base = None
            for b in args.budgets:
                cf.BUDGET = 1 << b
                t0 = time.perf_counter()
                cf.subtask_components(model.eval(), batches, losses, n)
                dt = time.perf_counter() - t0
                base = base or dt
                print(f"  components only, {n} images, 2 signals, BUDGET 2^{b}: {dt:.1f} s "
                      f"(speed-up {base / dt:.2f}x against 2^{args.budgets[0]})", flush=True)
            cf.BUDGET = default_budget


if __name__ == "__main__":
    main()
