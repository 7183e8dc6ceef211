"""Training-time cost of the VAM variants: the heads' parameters and multiply-adds against the
student, and the KD step time of each variant as a ratio to kd alone, measured in one process.

    python benchmarks/vam_variant_cost.py [--arch resnet8] [--teacher resnet20] [--repeats 5] [--threads 1]

The student is trained on the embedded fashion-mnist-mini batches (1 x 28 x 28, 10 classes) with
the authors' mapping (tree heads on stages 1 and 2) and a fixed two-layer tree (2 and 4 clusters,
as a 2/4/8 explainer's first layers give at most). Heads' MACs per image = their Linear layers
(in x out), the pooling not counted. The tree and auxiliary heads are dropped at inference:
there the deployed student costs exactly what the plain one does. Step times: the variants are
timed round-robin, ``--repeats`` rounds of 10 steps each, after 3 warm-up steps; the median per
variant divided by kd's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdx.commands.common import load_bundle
from kdx.commands.train_vam_student import StudentShared, build_task
from kdx.config import StudentConfig, build_config
from kdx.models import create_model

VARIANTS = ("off", "tree", "head", "tree+head")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "clusters").mkdir()
    (tmp / "clusters" / "layer1.json").write_text(json.dumps({"merged_classes": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]}))
    (tmp / "clusters" / "layer2.json").write_text(json.dumps(
        {"merged_classes": [[0, 2, 4], [1, 3], [5, 7, 9], [6, 8]]}))
    tasks, rows = {}, []
    shared = bundle = None
    for v in VARIANTS:
        cfg = build_config(StudentConfig, cli={"out": str(tmp / v), "arch": args.arch, "teacher": "t", "vam": v,
                                              "hierarchy": [str(tmp)] if "tree" in v else None,
                                              "precision": "fp32", "device": "cpu"})
        if shared is None:
            shared, bundle = StudentShared(cfg), load_bundle(cfg)
            teacher = create_model(args.teacher, bundle.num_classes, bundle.in_channels).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            shared.teacher, shared.teacher_meta = teacher, {"arch": args.teacher}
        task = build_task(cfg, bundle, shared)
        student = task.zoo_model
        extra = [m for m in task.methods if m.name in ("hierarchy", "vam_head")]
        head_params = sum(p.numel() for m in extra for p in m.parameters())
        head_macs = sum(l.in_features * l.out_features for m in extra for l in m.modules()
                        if isinstance(l, torch.nn.Linear))
        rows.append({"variant": v, "student_params": sum(p.numel() for p in student.parameters()),
                     "head_params": head_params, "head_macs_per_image": head_macs})
        opt = torch.optim.SGD([p for g in task.param_groups(cfg) for p in g["params"]], lr=0.01)
        tasks[v] = (task, opt)
    images, labels = bundle.train.to_device(torch.device("cpu"))
    mean = torch.tensor(bundle.train.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.train.std).view(1, -1, 1, 1)
    x, y = (images[:128].float() / 255 - mean) / std, labels[:128]

    def steps(v, n):
        task, opt = tasks[v]
        task.train()
        t0 = time.perf_counter()
        for _ in range(n):
            _, losses = task(x, y)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        return (time.perf_counter() - t0) / n

    for v in VARIANTS:
        steps(v, 3)
    times = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for v in VARIANTS:
            times[v].append(steps(v, 10))
    base = statistics.median(times["off"])
    print(f"| variant | student params | heads' params (% of student) | heads' MACs/image | step time vs kd |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = statistics.median(times[r["variant"]]) / base
        pct = 100 * r["head_params"] / r["student_params"]
        print(f"| kd{'' if r['variant'] == 'off' else '+' + r['variant']} | {r['student_params']:,} | "
              f"{r['head_params']:,} ({pct:.2f} %) | {r['head_macs_per_image']:,} | {ratio:.3f} |")
    print(f"(kd step {1000 * base:.1f} ms, batch {x.shape[0]}, {args.threads} thread(s), fp32, {args.arch} from "
          f"{args.teacher}, median of {args.repeats} rounds of 10 steps)")


if __name__ == "__main__":
    main()
