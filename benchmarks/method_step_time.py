"""Time of one training step of every registered KD method relative to plain KD, same process.

    python benchmarks/method_step_time.py [--steps 3] [--warmup 1] [--batch 64] [--classes 100]
                                          [--threads 1] [--methods kd,at,...] [--csv FILE]

resnet32x4 teacher (frozen), resnet8x4 student, C = 100, batch 64 of synthetic 3x32x32
images, SGD (lr 0.05, momentum 0.9, weight decay 5e-4), fp32 on the CPU. Each method is
built as ``train-vam-student --method NAME`` builds it (``build_methods``/``method_names``: CE
added with the CE-weight rule, every option at its declared default, connectors from a probe
forward). A step is forward (teacher and student) + loss + backward + optimizer step. Methods
are timed in interleaved rounds (one step of each method per round, so load changes on a
shared machine hit all alike); the first ``--warmup`` rounds are dropped and each method's
time is the median of ``--steps`` rounds; the ratio divides by kd's median of the same run.
The ratio is taken on the process's CPU time (``time.process_time``) with ``--threads 1``
intra-op thread: on a shared, oversubscribed machine wall time mostly measures the other
processes, CPU time the step's own work. Wall-clock medians are printed too.
Initialisation phases (ft, fsp) are not part of a step and are not timed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from types import SimpleNamespace

import torch

from kdx.distill.methods import method_options, methods_for
from kdx.distill.methods.base import MethodContext
from kdx.distill.student import StudentTask
from kdx.distill.task import build_methods, method_names
from kdx.models import create_model
from common import write_csv  # benchmarks/common.py

NUM_SAMPLES = 50_000  # CIFAR-100's training split: the size of CRD's memory bank


def build_task(name: str, teacher, classes: int, seed: int = 0) -> tuple[StudentTask, torch.optim.Optimizer]:
    """The task and optimizer ``--method name`` trains (every option at its default)."""
    params = {o.name: o.default for o in method_options("student")}
    names, ce_weight = method_names([name], "student", None)
    params.update(ce_weight=ce_weight, seed=seed)
    torch.manual_seed(seed)
    student = create_model("resnet8x4", num_classes=classes)
    teacher = copy.deepcopy(teacher)  # each task hooks its own copy
    ctx = MethodContext(params=params, student=student, teacher=teacher, num_classes=classes,
                        num_samples=NUM_SAMPLES, in_shape=(3, 32, 32),
                        train_labels=torch.arange(NUM_SAMPLES) % classes)  # balanced, as CIFAR's
    task = StudentTask(student, build_methods(names, ctx), teacher=teacher, probe_shape=(3, 32, 32))
    task.train()
    opt = torch.optim.SGD(task.param_groups(SimpleNamespace(lr=0.05)), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return task, opt


def step(task, opt, x, y, index) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one training step."""
    c0, t0 = time.process_time(), time.perf_counter()
    _, losses = task(x, y, index)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()
    return time.process_time() - c0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="measured rounds (median)")
    ap.add_argument("--warmup", type=int, default=1, help="rounds dropped first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method + ce)")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.methods.split(",") if args.methods else sorted(methods_for("student"))
    if "kd" not in names:
        names.insert(0, "kd")
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=args.classes).eval().requires_grad_(False)
    tasks = {n: build_task(n, teacher, args.classes) for n in names}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    index = torch.randint(0, NUM_SAMPLES, (args.batch,), generator=g)
    times: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    print(f"{len(names)} methods, batch {args.batch}, C={args.classes}, {torch.get_num_threads()} threads; "
          f"{args.warmup} + {args.steps} rounds", flush=True)
    for r in range(args.warmup + args.steps):
        for n in names:
            cpu, wall = step(*tasks[n], x, y, index)
            if r >= args.warmup:
                times[n].append(cpu)
                walls[n].append(wall)
            print(f"round {r + 1} {n}: cpu {cpu:.2f}s wall {wall:.2f}s", flush=True)
    kd, kd_wall = statistics.median(times["kd"]), statistics.median(walls["kd"])
    rows = [{"method": n, "cpu_s": statistics.median(times[n]), "ratio_vs_kd": statistics.median(times[n]) / kd,
             "wall_s": statistics.median(walls[n]), "wall_ratio_vs_kd": statistics.median(walls[n]) / kd_wall}
            for n in names]
    print(f"\n{'method':<8} {'CPU s':>7} {'x kd':>6} {'wall s':>7} {'x kd':>6}  (medians of {args.steps})")
    for row in rows:
        print(f"{row['method']:<8} {row['cpu_s']:7.2f} {row['ratio_vs_kd']:6.2f} {row['wall_s']:7.2f} "
              f"{row['wall_ratio_vs_kd']:6.2f}")
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
