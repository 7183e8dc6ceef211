"""Roofline of kdx's CPU training steps: counted FLOP, achieved FLOP/s, % of the in-process peak.

Issue 22, Deliver item 1: the fraction is of peaks measured in the same process.

    python benchmarks/roofline.py [--threads 1] [--steps 3] [--warmup 1] [--batch 64]
                                  [--precision fp32|bf16|both] [--only ROW,ROW,...] [--csv FILE]
                                  [--paths after|before|both] [--conflicts-batch 8] [--list]

Rows (``--list`` prints them; ``--only`` takes names or prefixes such as ``explainer``):

* ``explainer-c{10,100}[-quick]``: one stage-1 training step of ``kdx.models.routed.KDExplainer``
  (official widths 64:64,64:64,64:32 or the quick 32:32,32:32,32:32; experts 2, 4, 8), soft
  routing at tau 4, cross-entropy, Adam with the explainer's two groups (experts 0.01, routing
  0.05) as in benchmarks/explainer_method_step.py, synthetic 3x32x32 images;
* ``authors-explainer-c{10,100}``: the same step for the authors' explainer (official widths, their
  module-per-expert code transcribed in reference/authors_explainer.py), fp32 NCHW with per-tensor
  Adam over all parameters at 0.01: the baseline kdx's explainer is compared with;
* ``teacher-resnet56``, ``teacher-ResNet18``: one training step of a zoo teacher (C = 100, 32 px),
  SGD with momentum and weight decay;
* ``student-kd[+tree|+head|+tree+head]``: one KD step of resnet8 from a frozen resnet56 (C = 100),
  built as ``train-vam-student`` builds it (``method_names``, ``build_methods``, ``StudentTask``,
  every option at its default): ``--vam tree`` adds the ``hierarchy`` method on a hand-made
  two-layer cluster list (2 and 4 clusters of the 100 classes, the authors' stage mapping),
  ``--vam head`` adds the ``vam_head`` auxiliary head; the teacher's forward is part of the step;
* ``conflicts-c{10,100}``: the gradient part of ``analyze-conflicts``
  (``kdx.analysis.conflicts.subtask_components``) on a quick-width explainer with hard routing
  (the stage-2 state analyses see), 2 batches of ``--conflicts-batch`` images (default 8: at
  C = 100 one image costs about 13 GFLOP here), 2 signals (ce, ls); one "step" is the whole call,
  its images the batches' images. The analysis runs in fp32 only, so these rows have no bf16 line.

For every row: FLOP per image counted by ``torch.utils.flop_counter.FlopCounterMode`` over one
whole step (forward + backward; the optimizer's element-wise update, BN, ReLU, pooling and other
element-wise work are not counted: FlopCounterMode counts matmuls and convolutions; that counted
step is also the row's first, untimed step), then ``--warmup`` untimed steps and ``--steps``
timed ones; the time per step is the median of ``time.perf_counter`` differences. Achieved
GFLOP/s = counted FLOP per step / median wall time.

The peaks are measured in the same process, same intra-op threads and precision, timed the same
way (median of ``--steps`` after ``--warmup``, at least 3): a 2048x2048 @ 2048x2048 matmul and a
3x3 convolution, batch 64, 64 -> 64 channels, 32x32, padding 1 (its forward + backward with the
input's and the weight's gradients, the shape of a training step; its forward alone is printed
too). bf16 peaks use bf16 operands; bf16 rows run the step under ``torch.autocast("cpu",
torch.bfloat16)``. ``--paths after`` (the default) runs every row as kdx's trainer does today on a
CPU: channels_last in both precisions and torch's fused optimizer; ``--paths before`` as it did
before issue 22: fp32 in NCHW, bf16 in channels_last, the per-tensor optimizer; ``--paths both``
measures each row both ways, one right after the other (the conflicts rows, which have neither,
once). The peaks are measured before and after
the rows; the percentages use the larger of the two medians. bf16 is offered only where
``lscpu`` shows avx512_bf16 or amx_bf16 (otherwise autocast emulates it and there is nothing to
measure against).

Columns: images/step, GFLOP/image, ms/step (median wall), images/s, GFLOP/s, % of the matmul and
of the conv peak (all by wall time), cpu/wall (median CPU time of this process per step over the
median wall time: near ``--threads`` on an idle machine, lower when other processes take the
cores) and the % of the conv peak with both sides taken on CPU time (``time.process_time``
medians), the steadier figure on a shared machine. The peaks are printed by wall and CPU time.

On a loaded machine the numbers are noisy: every time here is wall time, and other processes
stretch the rows and the peaks alike only if the load stays the same through the run; the
load average is printed at the start and the end, and cpu/wall shows how much of the cores a
row got. Repeat on an idle machine before drawing fine conclusions.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run from a checkout

NUM_SAMPLES = 50_000  # CIFAR's training split: the memory banks' size, as in method_step_time.py
OFFICIAL = [(64, 64), (64, 64), (64, 32)]
QUICK = [(32, 32)] * 3


# ---------------------------------------------------------------- machine facts
def cpu_facts() -> dict:
    text = ""
    with contextlib.suppress(Exception):
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    model, flags = platform.processor() or "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "Flags":
            flags = set(value.split())
    if not flags and Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile") if f in flags]
    return {"model": model, "flags": shown, "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "cores": os.cpu_count()}


# ---------------------------------------------------------------- timing
def timed(step, warmup: int, steps: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) per step."""
    for _ in range(warmup):
        step()
    walls, cpus = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: totals only. The tracker's backward hooks
    refuse ``torch.autograd.grad`` on a graph holding leaves (analyze-conflicts' components), and
    the per-module attribution is not needed here; the counted total is the same."""
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def counted_flops(step) -> int:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        step()
    return int(counter.get_total_flops())


def amp(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def measure_peaks(bf16: bool, warmup: int, steps: int) -> dict:
    """The matmul and 3x3-conv rates of this process; the conv in NCHW and in channels_last (NHWC),
    the faster of the two counting as the peak (oneDNN's fp32 and bf16 kernels both prefer NHWC on
    the CPUs measured so far; ``conv_layout`` says which won)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 2048, generator=g).to(dtype)
    b = torch.randn(2048, 2048, generator=g).to(dtype)
    x0 = torch.randn(64, 64, 32, 32, generator=g).to(dtype)
    w0 = (torch.randn(64, 64, 3, 3, generator=g) * 0.05).to(dtype)

    def rate(fn):
        flops = counted_flops(fn)
        wall, cpu = timed(fn, max(1, warmup), max(3, steps))
        return flops / wall, flops / max(cpu, 1e-9)

    out = {}
    out["matmul"], out["matmul_cpu"] = rate(lambda: torch.mm(a, b))
    for layout in ("NCHW", "NHWC"):
        fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
        x = x0.contiguous(memory_format=fmt).requires_grad_(True)
        w = w0.contiguous(memory_format=fmt).requires_grad_(True)

        def conv_fwd():
            with torch.no_grad():
                F.conv2d(x, w, padding=1)

        def conv_step():
            x.grad = w.grad = None
            F.conv2d(x, w, padding=1).sum().backward()

        fwd, step = rate(conv_fwd), rate(conv_step)
        if step[0] > out.get("conv", 0.0):
            out["conv_fwd"], out["conv_fwd_cpu"] = fwd
            out["conv"], out["conv_cpu"] = step
            out["conv_layout"] = layout
    return out


# ---------------------------------------------------------------- rows
def _data(batch: int, classes: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, classes, (batch,), generator=g),
            torch.randint(0, NUM_SAMPLES, (batch,), generator=g))


def _to_cl(module, x, on: bool):
    if not on:
        return module, x
    from kdx.engine.trainer import to_channels_last

    return to_channels_last(module), x.contiguous(memory_format=torch.channels_last)


def train_step(loss_fn, opt, bf16: bool):
    """One training step as a closure: ``loss_fn()`` under the precision's autocast, backward, update."""
    def step():
        with amp(bf16):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def explainer_row(classes: int, widths):
    def build(batch: int, bf16: bool, cl: bool, fused: bool):
        from kdx.models.routed import KDExplainer

        torch.manual_seed(0)
        model = KDExplainer(classes, widths=widths, routing="soft", tau=4.0).train()
        x, y, _ = _data(batch, classes)
        model, x = _to_cl(model, x, cl)
        opt = torch.optim.Adam([{"params": model.non_routing_parameters(), "lr": 0.01},
                                {"params": model.routing_logits(), "lr": 0.05}], fused=fused)

        return train_step(lambda: F.cross_entropy(model(x).float(), y), opt, bf16), batch
    return build


def authors_explainer_row(classes: int):
    """The authors' explainer (reference/authors_explainer.py, their LEARNTOBRANCH_Deep: official
    widths, one module per expert and class) in their form: fp32, NCHW, per-tensor Adam. The same
    in both ``--paths`` (it is the fixed baseline that kdx's explainer is measured against)."""
    def build(batch: int, bf16: bool, cl: bool, fused: bool):
        from reference.authors_explainer import AuthorsExplainer

        torch.manual_seed(0)
        model = AuthorsExplainer(classes).train()
        x, y, _ = _data(batch, classes)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        return train_step(lambda: F.cross_entropy(model(x).float(), y), opt, False), batch
    build.fp32_only = build.fixed = True
    return build


def teacher_row(arch: str, classes: int = 100):
    def build(batch: int, bf16: bool, cl: bool, fused: bool):
        from kdx.models import create_model

        torch.manual_seed(0)
        model = create_model(arch, num_classes=classes).train()
        x, y, _ = _data(batch, classes)
        model, x = _to_cl(model, x, cl)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, fused=fused)

        return train_step(lambda: F.cross_entropy(model(x).float(), y), opt, bf16), batch
    return build


def _cluster_dir(classes: int) -> str:
    """A hand-made two-layer class hierarchy (2 and 4 contiguous clusters), as analyze-conflicts writes it."""
    root = Path(tempfile.mkdtemp(prefix="kdx-roofline-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / "clusters").mkdir()
    for layer, k in ((1, 2), (2, 4)):
        size = -(-classes // k)
        merged = [list(range(i, min(i + size, classes))) for i in range(0, classes, size)]
        (root / "clusters" / f"layer{layer}.json").write_text(json.dumps({"merged_classes": merged}))
    return str(root)


def student_row(variant: str, classes: int = 100, student: str = "resnet8", teacher: str = "resnet56"):
    def build(batch: int, bf16: bool, cl: bool, fused: bool):
        from kdx.config import StudentConfig
        from kdx.distill.methods import method_options
        from kdx.distill.methods.base import MethodContext
        from kdx.distill.student import StudentTask
        from kdx.distill.task import build_methods, method_names
        from kdx.models import create_model

        params = {f.name: f.default for f in dataclasses.fields(StudentConfig)
                  if f.default is not dataclasses.MISSING}  # the run values vam_head reads (vam_tau0, ...)
        params.update({o.name: o.default for o in method_options("student")})
        names, ce_weight = method_names(["kd"], "student", None)
        if "head" in variant:
            names.append("vam_head")  # --vam head (--vam-head aux, the default)
        if "tree" in variant:
            names.append("hierarchy")  # --vam tree --hierarchy DIR
            params["hierarchy"] = [_cluster_dir(classes)]
        params.update(ce_weight=ce_weight, seed=0)
        torch.manual_seed(0)
        t = create_model(teacher, num_classes=classes).eval().requires_grad_(False)
        s = create_model(student, num_classes=classes)
        x, y, index = _data(batch, classes)
        s, _ = _to_cl(s, x, cl)
        t, x = _to_cl(t, x, cl)
        ctx = MethodContext(params=params, student=s, teacher=t, num_classes=classes, num_samples=NUM_SAMPLES,
                            in_shape=(3, 32, 32), train_labels=torch.arange(NUM_SAMPLES) % classes)
        task = StudentTask(s, build_methods(names, ctx), teacher=t, probe_shape=(3, 32, 32))
        task.on_epoch_start(1)
        task.train()
        opt = torch.optim.SGD(task.param_groups(SimpleNamespace(lr=0.05)), lr=0.05, momentum=0.9,
                              weight_decay=5e-4, fused=fused)

        return train_step(lambda: sum(task(x, y, index)[1].values()), opt, bf16), batch
    return build


def conflicts_row(classes: int, batches: int = 2):
    def build(batch: int, bf16: bool, cl: bool, fused: bool):
        from kdx.analysis import conflicts as cf
        from kdx.models.routed import KDExplainer

        torch.manual_seed(0)
        model = KDExplainer(classes, widths=QUICK, routing="hard", tau=1.0).eval()
        x, y, _ = _data(batch * batches, classes)
        parts = [(x[i:i + batch], y[i:i + batch], None) for i in range(0, batch * batches, batch)]
        losses = {"ce": cf.loss_for("ce", None), "ls": cf.loss_for("ls", None)}

        def step():
            cf.subtask_components(model, parts, losses, batch * batches)
        return step, batch * batches
    build.fp32_only = build.fixed = True  # no optimizer, NCHW: the same in both --paths
    return build


ROWS = {
    "explainer-c10": explainer_row(10, OFFICIAL),
    "explainer-c10-quick": explainer_row(10, QUICK),
    "explainer-c100": explainer_row(100, OFFICIAL),
    "explainer-c100-quick": explainer_row(100, QUICK),
    "authors-explainer-c10": authors_explainer_row(10),
    "authors-explainer-c100": authors_explainer_row(100),
    "teacher-resnet56": teacher_row("resnet56"),
    "teacher-ResNet18": teacher_row("ResNet18"),
    "student-kd": student_row("off"),
    "student-kd+tree": student_row("tree"),
    "student-kd+head": student_row("head"),
    "student-kd+tree+head": student_row("tree+head"),
    "conflicts-c10": conflicts_row(10),
    "conflicts-c100": conflicts_row(100),
}


def select(only: str | None) -> list[str]:
    if not only:
        return list(ROWS)
    chosen = []
    for item in (s.strip() for s in only.split(",") if s.strip()):
        hits = [r for r in ROWS if r == item] or [r for r in ROWS if r.startswith(item)]
        if not hits:
            raise SystemExit(f"roofline: no row '{item}'; rows: {', '.join(ROWS)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def run_row(name: str, build, p: str, path: str, args) -> dict:
    """One row measured: counted FLOP, then the timed steps. ``path`` after = channels_last and a fused
    optimizer (kdx's trainer today, every precision on CPU); before = NCHW in fp32 (channels_last in
    bf16) with the per-tensor optimizer, the trainer's CPU defaults before issue 22."""
    bf16 = p == "bf16"
    cl, fused = (True, True) if path == "after" else (bf16, False)
    step, images = build(args.conflicts_batch if name.startswith("conflicts") else args.batch, bf16, cl, fused)
    flops = counted_flops(step)  # also the first step: lazy connectors, allocations
    wall, cpu = timed(step, args.warmup, args.steps)
    label = p if getattr(build, "fixed", False) else p + (" CL" if cl else "") + (" fused" if fused else "")
    r = {"row": name, "precision": label, "paths": path, "images": images,
         "gflop_per_image": flops / images / 1e9, "ms_per_step": 1e3 * wall,
         "images_per_s": images / wall, "gflop_per_s": flops / wall / 1e9,
         "cpu_ms_per_step": 1e3 * cpu, "gflop_per_cpu_s": flops / max(cpu, 1e-9) / 1e9, "_p": p}
    print(f"  {name} {r['precision']}: {r['gflop_per_image']:.3f} GFLOP/image, {r['ms_per_step']:.0f} ms/step "
          f"(CPU {r['cpu_ms_per_step']:.0f} ms), {r['gflop_per_s']:.1f} GFLOP/s", flush=True)
    return r


# ---------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per row before the timed ones")
    ap.add_argument("--batch", type=int, default=64, help="images per training step")
    ap.add_argument("--conflicts-batch", type=int, default=8, help="images per batch of the conflicts rows (2 batches)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both",
                    help="both = fp32, and bf16 where the CPU has native bf16")
    ap.add_argument("--paths", choices=("after", "before", "both"), default="after",
                    help="after: kdx's trainer today (channels_last in every precision, fused optimizer); "
                         "before: as before issue 22 (fp32 NCHW, bf16 channels_last, per-tensor optimizer); "
                         "both: every row both ways, one after the other")
    ap.add_argument("--only", default=None, help="comma-separated rows or prefixes (default: all)")
    ap.add_argument("--csv", default=None, help="also write the table as CSV")
    ap.add_argument("--list", action="store_true", help="print the row names and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(ROWS))
        return
    rows = select(args.only)
    torch.set_num_threads(args.threads)
    facts = cpu_facts()
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    if "bf16" in precisions and not facts["bf16"]:
        print("roofline: this CPU has no native bf16 (no avx512_bf16 / amx_bf16): bf16 skipped")
        precisions.remove("bf16")
    print(f"CPU {facts['model']}, {facts['cores']} logical CPUs, flags {' '.join(facts['flags']) or '-'}; "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} intra-op thread(s); batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps; load average {os.getloadavg()[0]:.2f}", flush=True)
    t_start = time.perf_counter()
    peaks = {p: measure_peaks(p == "bf16", args.warmup, args.steps) for p in precisions}
    results = []
    paths = ["before", "after"] if args.paths == "both" else [args.paths]
    for p in precisions:
        bf16 = p == "bf16"
        for name in rows:
            build = ROWS[name]
            if bf16 and getattr(build, "fp32_only", False):
                continue
            for path in paths:
                if getattr(build, "fixed", False) and path == "before" and len(paths) > 1:
                    continue  # the analysis and the authors' code are the same both ways: measured once
                results.append(run_row(name, build, p, path, args))
    after = {p: measure_peaks(p == "bf16", args.warmup, args.steps) for p in precisions}
    print("\npeaks, GFLOP/s by wall time (before the rows / after them), [by CPU time]:")
    for p in precisions:
        print(f"  {p}: " + ", ".join(
            f"{label} {peaks[p][k] / 1e9:.1f} / {after[p][k] / 1e9:.1f} "
            f"[{peaks[p][k + '_cpu'] / 1e9:.1f} / {after[p][k + '_cpu'] / 1e9:.1f}]"
            for k, label in (("matmul", "matmul 2048^3"), ("conv", "conv 3x3 64->64 32px b64 fwd+bwd"),
                             ("conv_fwd", "its fwd only"))))
    for p in precisions:
        print(f"  {p}: the faster conv layout {peaks[p]['conv_layout']} before the rows, {after[p]['conv_layout']} after")
    best = {p: {k: max(peaks[p][k], after[p][k]) for k in peaks[p] if k != "conv_layout"} for p in precisions}
    for r in results:
        pk = best[r["_p"]]
        r["pct_matmul_peak"] = 100 * r["gflop_per_s"] * 1e9 / pk["matmul"]
        r["pct_conv_peak"] = 100 * r["gflop_per_s"] * 1e9 / pk["conv"]
        r["pct_conv_peak_cpu"] = 100 * r["gflop_per_cpu_s"] * 1e9 / pk["conv_cpu"]
        r["cpu_wall"] = r["cpu_ms_per_step"] / r["ms_per_step"]
    print("\n| row | precision | images/step | GFLOP/image | ms/step | images/s | GFLOP/s | % matmul peak | "
          "% conv peak | cpu/wall | % conv peak, CPU time |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['precision']} | {r['images']} | {r['gflop_per_image']:.3f} | {r['ms_per_step']:.0f} | "
              f"{r['images_per_s']:.1f} | {r['gflop_per_s']:.1f} | {r['pct_matmul_peak']:.1f} | "
              f"{r['pct_conv_peak']:.1f} | {r['cpu_wall']:.2f} | {r['pct_conv_peak_cpu']:.1f} |")
    print(f"\n(medians of {args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} thread(s); "
          f"load average at the end {os.getloadavg()[0]:.2f}; {time.perf_counter() - t_start:.0f} s in all)")
    if args.csv:
        import csv

        fields = [k for k in results[0] if not k.startswith("_")] if results else []
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(results)


if __name__ == "__main__":
    main()
