"""Start-up of the ``kdx`` command line: the lazy CLI against the eager one, measured in one run.

    python benchmarks/cli_startup.py [--repeat 5] [--baseline-rev 1077165] [--csv FILE]

Each case is a fresh ``python`` process (as a shell runs ``kdx``), timed wall-clock, median of
``--repeat`` runs, all cases interleaved so that the machine's load falls on each alike:

* ``kdx --version``, ``kdx --help``, completion of a command name (``kdx tr<TAB>``) and of a
  flag of ``train-teacher`` (``kdx train-teacher --sch<TAB>``), with this tree's CLI;
* the same with the eager CLI of ``--baseline-rev`` (the last commit before the lazy one: every
  command built at import, torch imported through the method registry and ``kdx.models``),
  extracted with ``git archive`` into a temporary folder; without git, the eager start-up is
  emulated in this tree (``import kdx.cli`` then every command built, which imports torch).

It prints one row per case with both medians and their ratio (eager / lazy): a ratio, not a
time, is what carries over to another machine. A warm file cache is assumed (the first round is
a discarded warm-up); a cold cache makes the eager start-up far slower still (13-15 s seen).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from common import write_csv  # benchmarks/common.py

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "1077165"  # kdx before the lazy CLI (issue 21): every command built at import

RUN = "import sys\nfrom kdx.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
EMULATED_EAGER = ("import sys\nimport kdx.cli as c\n[e.get() for e in c.COMMANDS.values()]\n" + RUN.split("\n", 1)[1])
CASES = {  # name -> (argv, extra environment)
    "kdx --version": (["--version"], {}),
    "kdx --help": (["--help"], {}),
    "complete 'kdx tr'": ([], {"_KDX_COMPLETE": "complete_bash", "COMP_WORDS": "kdx tr", "COMP_CWORD": "1"}),
    "complete 'kdx train-teacher --sch'": ([], {"_KDX_COMPLETE": "complete_bash",
                                               "COMP_WORDS": "kdx train-teacher --sch", "COMP_CWORD": "2"}),
}


def baseline_tree(rev: str, into: Path) -> Path | None:
    """``kdx/`` of ``rev`` extracted under ``into`` (None without git or that commit)."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "kdx"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def time_once(code: str, argv: list[str], env_extra: dict, pythonpath: Path) -> float:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(pythonpath), "COLUMNS": "100"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=str(pythonpath), capture_output=True, check=False)
    return time.perf_counter() - t0


def measure(repeat: int, rev: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_tree(rev, Path(tmp))
        eager = (RUN, old, f"eager ({rev})") if old else (EMULATED_EAGER, ROOT, "eager (emulated)")
        times: dict[tuple[str, str], list[float]] = {}
        for round_ in range(repeat + 1):  # round 0 warms the file cache and is dropped
            for name, (argv, env) in CASES.items():
                for side, (code, path) in (("lazy", (RUN, ROOT)), ("eager", eager[:2])):
                    t = time_once(code, argv, env, path)
                    if round_:
                        times.setdefault((name, side), []).append(t)
    rows = []
    for name in CASES:
        lazy, old_t = statistics.median(times[(name, "lazy")]), statistics.median(times[(name, "eager")])
        rows.append({"case": name, "lazy_s": round(lazy, 3), "eager_s": round(old_t, 3),
                     "ratio_eager_over_lazy": round(old_t / lazy, 1), "baseline": eager[2], "repeat": repeat})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    rows = measure(args.repeat, args.baseline_rev)
    print(f"{'case':38s} {'lazy s':>8s} {'eager s':>8s} {'ratio':>6s}   baseline: {rows[0]['baseline']}, "
          f"median of {args.repeat}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for r in rows:
        print(f"{r['case']:38s} {r['lazy_s']:8.2f} {r['eager_s']:8.2f} {r['ratio_eager_over_lazy']:5.1f}x")
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
