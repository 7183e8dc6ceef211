"""The run lock under a race (issue 23): N processes take the lock of one fresh folder at the same
instant, for R rounds; every round must have exactly one owner.

    .venv/bin/python scripts/lock_race.py --rounds 300 --processes 4

Each round: a new folder, a barrier (every process ready), ``acquire_lock``, a second barrier
(every process has tried, so an owner cannot release before the others looked), then the
owner releases. Half of the rounds start with a dead process's lock in the folder (a takeover
race). Prints the rounds with 0 or more than 1 owner and exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(root: str, rounds: int, barrier, results) -> None:
    from kdx.engine import rundir
    from kdx.errors import KdxError

    for r in range(rounds):
        folder = Path(root) / f"round{r}"
        barrier.wait()
        try:
            rundir.acquire_lock(folder)
            got = True
        except KdxError:
            got = False
        results.put((r, os.getpid(), got))
        barrier.wait()
        if got:
            rundir.release_locks()


def dead_pid() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--processes", type=int, default=4)
    args = ap.parse_args()
    import socket

    with tempfile.TemporaryDirectory() as root:
        dead = dead_pid()
        for r in range(args.rounds):
            folder = Path(root) / f"round{r}"
            folder.mkdir()
            if r % 2:  # a lock left by a dead process: the processes race to take it over
                (folder / ".kdx.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
        ctx = mp.get_context("fork")
        barrier, results = ctx.Barrier(args.processes), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(root, args.rounds, barrier, results)) for _ in range(args.processes)]
        for p in procs:
            p.start()
        owners = {r: 0 for r in range(args.rounds)}
        for _ in range(args.rounds * args.processes):
            r, _pid, got = results.get(timeout=600)
            owners[r] += got
        for p in procs:
            p.join()
    bad = {r: n for r, n in owners.items() if n != 1}
    double = sum(1 for n in owners.values() if n > 1)
    print(f"{args.rounds} rounds of {args.processes} processes (half of them taking over a dead lock): "
          f"{double} with two or more owners, {sum(1 for n in owners.values() if n == 0)} with none")
    if bad:
        print("rounds:", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
