"""Step time of an explainer distilled with each feature method, relative to a kd explainer, same process.

    python benchmarks/explainer_method_step.py [--steps 3] [--warmup 1] [--batch 64] [--threads 1]
                                               [--methods at,fitnet,...] [--csv FILE]

The quick explainer (widths 32:32,32:32,32:32, experts 2, 4, 8, C = 10, stage 1: soft routing at
tau 4), a frozen resnet20 teacher, batch 64 of synthetic 3x32x32 images, Adam as stage 1 (two
groups: experts at 0.01, routing at 0.05), fp32 on the CPU. Each method is built as
``distill-explainer --method kd,NAME`` builds it (every option at its declared default,
connectors from a probe forward); ``kd`` alone is the baseline. A step is forward (teacher and
explainer) + loss + backward + optimizer step; methods are timed in interleaved rounds, the first
``--warmup`` dropped, each method's time the median CPU time (``time.process_time``, one intra-op
thread) of ``--steps`` rounds, divided by kd's of the same run. Initialisation phases (ft) are
not part of a step and are not timed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from types import SimpleNamespace

import torch

from kdx.distill.explainer_task import ExplainerTask
from kdx.distill.methods import method_options, methods_for
from kdx.distill.methods.base import MethodContext
from kdx.distill.task import build_methods, method_names
from kdx.models import create_model
from kdx.models.routed import KDExplainer
from common import write_csv  # benchmarks/common.py

CFG = SimpleNamespace(routing="soft", tau0=4.0, lr=0.01, routing_lr=0.05)
NUM_SAMPLES = 50_000


def build(methods: list[str], teacher, classes: int):
    params = {o.name: o.default for o in method_options("explainer")}
    names, ce_weight = method_names(methods, "explainer", None)
    params.update(ce_weight=ce_weight, seed=0)
    torch.manual_seed(0)
    model = KDExplainer(classes, widths=[(32, 32)] * 3, tau=4.0)
    teacher = copy.deepcopy(teacher)
    ctx = MethodContext(params=params, student=model, teacher=teacher, num_classes=classes, num_samples=NUM_SAMPLES,
                        in_shape=(3, 32, 32), train_labels=torch.arange(NUM_SAMPLES) % classes)
    task = ExplainerTask(model, build_methods(names, ctx), CFG, stage=1, teacher=teacher, probe_shape=(3, 32, 32))
    task.on_epoch_start(1)
    task.train()
    return task, torch.optim.Adam(task.param_groups(CFG))


def step(task, opt, x, y, index) -> float:
    c0 = time.process_time()
    _, losses = task(x, y, index)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()
    return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every feature method of the explainer)")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.methods.split(",") if args.methods else sorted(n for n, c in methods_for("explainer").items()
                                                                 if c.uses_features)
    torch.manual_seed(0)
    teacher = create_model("resnet20", num_classes=10).eval().requires_grad_(False)
    arms = {"kd": ["kd"], **{n: ["kd", n] for n in names}}
    tasks = {a: build(m, teacher, 10) for a, m in arms.items()}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    index = torch.randint(0, NUM_SAMPLES, (args.batch,), generator=g)
    times: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.warmup + args.steps):
        for a in arms:
            t = step(*tasks[a], x, y, index)
            if r >= args.warmup:
                times[a].append(t)
    kd = statistics.median(times["kd"])
    rows = [{"explainer": "+".join(arms[a]), "cpu_s": statistics.median(times[a]),
             "ratio_vs_kd": statistics.median(times[a]) / kd} for a in arms]
    print(f"batch {args.batch}, {torch.get_num_threads()} thread(s), medians of {args.steps} rounds")
    for row in rows:
        print(f"{row['explainer']:<10} {row['cpu_s']:7.3f} s  {row['ratio_vs_kd']:5.2f} x kd")
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
