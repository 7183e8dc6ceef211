"""Kill -9 at random points of tiny training runs, then check what is on disk and resume.

For each training command (train-teacher, distill-explainer, train-vam-student) the script
trains one uninterrupted reference run, then ``--trials`` runs that are each killed with SIGKILL
after a random delay (uniform over the reference's wall time) and checks that

* every file on disk loads: ``*.safetensors`` (safetensors), ``*.json`` (strict JSON),
  ``*.csv`` (pandas); temporary files of an interrupted atomic write (``.NAME.*.tmp``) are
  counted, not loaded;
* ``metrics.csv`` has no torn rows (every column filled where the reference has it) and no
  duplicate epochs (per stage);
* resuming (``--resume RUN``, or the original command where the kill came before config.json was
  written) reaches the reference's final weights bit for bit (``--deterministic``).

    python scripts/kill9_trials.py --trials 20 --work /tmp/kill9       # the full check
    python scripts/kill9_trials.py --trials 3 --commands train-teacher  # a quick one

Exit status 0 when every trial passed; a table of outcomes on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--device", "cpu", "--precision", "fp32", "--deterministic", "--quiet", "--max-train-samples", "96",
          "--batch-size", "16", "--eval-batch-size", "500", "--seed", "5"]
COMMANDS = {
    "train-teacher": ["--arch", "resnet8", "--epochs", "2", "--schedule", "constant", "--lr", "0.05"],
    "distill-explainer": ["--method", "ce", "--widths", "8:8,8:8,8:8", "--stage1-epochs", "1", "--stage2-epochs",
                          "1"],
    "train-vam-student": ["--arch", "resnet8", "--epochs", "2", "--method", "kd", "--vam", "--schedule", "constant",
                          "--lr", "0.05"],
}
FINAL = {"train-teacher": "model.safetensors", "distill-explainer": "stage2/model.safetensors",
         "train-vam-student": "model.safetensors"}


def kdx(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "kdx", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def run_to_end(args: list[str]) -> None:
    proc = kdx(args)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"kdx {' '.join(map(str, args))} exited {proc.returncode}: {err.strip()[-500:]}")


def check_files(run: Path, ref_cols: dict[str, list[str]]) -> tuple[list[str], int]:
    """Problems found in ``run`` (empty: every file loads) and the number of leftover temp files."""
    import pandas as pd
    from safetensors.torch import load_file

    problems, temps = [], 0
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            temps += 1
            continue
        try:
            if name.endswith(".safetensors"):
                load_file(str(path))
            elif name.endswith(".json") or name == ".kdx.lock":
                json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            elif name.endswith(".csv"):
                frame = pd.read_csv(path)
                if name == "metrics.csv":
                    problems += check_metrics(path, frame, ref_cols.get(str(path.relative_to(run))))
        except Exception as exc:  # noqa: BLE001 - any failure to load is a finding
            problems.append(f"{path.relative_to(run)}: {type(exc).__name__}: {str(exc)[:120]}")
    return problems, temps


def check_metrics(path: Path, frame, ref) -> list[str]:
    """Duplicate epochs, and torn rows: a row whose empty cells differ from the reference's row
    of the same (stage,) epoch (the explainer's merged metrics.csv has columns of one stage only)."""
    keys = ["stage", "epoch"] if "stage" in frame.columns else ["epoch"]
    out = []
    if frame.duplicated(keys).any():
        out.append(f"{path.name}: duplicate rows for {keys}")
    if ref is None or not len(frame):
        return out
    missing = sorted(set(ref.columns) - set(frame.columns))
    if missing:
        out.append(f"{path.name}: columns missing: {missing}")
    cols = [c for c in ref.columns if c in frame.columns and c not in keys]
    want = ref.set_index(keys)[cols].isna()
    got = frame.set_index(keys)[cols].isna()
    for key in got.index:
        if key not in want.index or not (got.loc[key] == want.loc[key]).all():
            out.append(f"{path.name}: torn row {key}")
    return out


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def trial(command: str, args: list[str], run: Path, delay: float, ref: Path, ref_cols: dict) -> dict:
    proc = kdx([command, *args, "--out", run])
    time.sleep(delay)
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    problems, temps = check_files(run, ref_cols) if run.exists() else ([], 0)
    had_config = (run / "config.json").is_file()
    if had_config:
        run_to_end([command, "--resume", run])
    else:  # killed before config.json: the same command again
        run_to_end([command, *args, "--out", run])
    identical = same_weights(ref / FINAL[command], run / FINAL[command])
    after, _ = check_files(run, ref_cols)
    return {"command": command, "delay_s": round(delay, 2), "killed": not finished_first,
            "resumed": had_config, "load_problems": problems + after, "temp_files": temps, "identical": identical}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--work", type=Path, default=Path("runs/kill9"))
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    if opts.work.exists():
        shutil.rmtree(opts.work)
    opts.work.mkdir(parents=True)
    teacher = opts.work / "teacher"
    rows = []
    for command in opts.commands.split(","):
        args = COMMON + COMMANDS[command]
        if command == "train-vam-student":
            if not teacher.exists():
                run_to_end(["train-teacher", *COMMON, *COMMANDS["train-teacher"], "--out", teacher])
            args = args + ["--teacher", teacher]
        ref = opts.work / command / "ref"
        t0 = time.perf_counter()
        run_to_end([command, *args, "--out", ref])
        wall = time.perf_counter() - t0
        import pandas as pd

        ref_cols = {str(p.relative_to(ref)): pd.read_csv(p) for p in ref.rglob("metrics.csv")}
        print(f"{command}: reference run {wall:.1f}s", flush=True)
        for i in range(opts.trials):
            row = trial(command, args, opts.work / command / f"t{i}", rng.uniform(0.5, wall), ref, ref_cols)
            rows.append(row)
            ok = row["identical"] and not row["load_problems"]
            print(f"  trial {i:>2}: kill at {row['delay_s']:>5.1f}s  killed={row['killed']!s:5}  "
                  f"resumed={row['resumed']!s:5}  temp files {row['temp_files']}  identical={row['identical']!s:5}  "
                  f"{'ok' if ok else 'FAIL ' + '; '.join(row['load_problems'])}", flush=True)
            shutil.rmtree(opts.work / command / f"t{i}", ignore_errors=True)
    failed = [r for r in rows if not r["identical"] or r["load_problems"]]
    for command in opts.commands.split(","):
        mine = [r for r in rows if r["command"] == command]
        print(f"{command}: {len(mine)} trials, {sum(r['killed'] for r in mine)} killed mid-run, "
              f"{sum(r['identical'] and not r['load_problems'] for r in mine)} passed, "
              f"{sum(r['temp_files'] for r in mine)} leftover temp files")
    print("all trials passed" if not failed else f"{len(failed)} trial(s) FAILED")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
