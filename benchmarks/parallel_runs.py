"""Two runs at a time with one thread each, or one after the other with two threads: which is faster in total?

    python benchmarks/parallel_runs.py [--runs 2] [--epochs 2] [--arch resnet8] [--repeat 1]

Trains ``--runs`` identical students (``kdx train-teacher --arch ARCH`` on the embedded
fashion-mnist-mini, seeds 0, 1, ...) twice in this process's machine: (a) one after the other,
each with ``--threads`` = the CPU count, (b) all at once, each with ``--threads 1``; prints the
wall time of each way and the ratio (b) / (a). Run it on an otherwise idle machine: other load
changes both ways differently. Output folders go to a temporary directory and are removed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(out: Path, seed: int, threads: int, args) -> list[str]:
    return [sys.executable, "-m", "kdx", "train-teacher", "--arch", args.arch, "--epochs", str(args.epochs),
            "--seed", str(seed), "--threads", str(threads), "--quiet", "--out", str(out)]


def sequential(tmp: Path, args, threads: int) -> float:
    t0 = time.perf_counter()
    for s in range(args.runs):
        subprocess.run(command(tmp / f"seq{s}", s, threads, args), check=True, capture_output=True)
    return time.perf_counter() - t0


def concurrent(tmp: Path, args) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(command(tmp / f"par{s}", s, 1, args), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for s in range(args.runs)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a concurrent run failed")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two ways this many times")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    seq, par = [], []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            seq.append(sequential(Path(d), args, cpus))
        with tempfile.TemporaryDirectory() as d:
            par.append(concurrent(Path(d), args))
    s, p = min(seq), min(par)
    print(f"{args.runs} x train-teacher --arch {args.arch} --epochs {args.epochs} (fashion-mnist-mini), {cpus} CPUs, "
          f"load before {os.getloadavg()[0]:.1f}")
    print(f"one after the other, {cpus} threads each: {s:.1f} s")
    print(f"all at once, 1 thread each:           {p:.1f} s   ratio {p / s:.2f} (below 1: at once is faster)")


if __name__ == "__main__":
    main()
