#!/usr/bin/env python3
"""Compare two kdx output trees (e.g. `make demo` before and after a refactor) value by value.

    python scripts/compare_run_trees.py runs/demo-before runs/demo-after

Every CSV present in both trees is compared cell by cell (numbers within --rtol), every JSON
file key by key (nested), ignoring what legitimately differs between two runs: timings
(seconds, images/s, wall time, dates), paths (which name the tree itself) and versions. Files
present in one tree only are listed. Exit status 0 when nothing differs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

IGNORED = re.compile(r"(second|_s$|^s$|img_s|images_per|wall|time|date|started|finished|path|run_dir|root|out$|"
                     r"version|host|python|torch|platform|cpu_model|elapsed|eta|resume$|teacher$|hierarchy$|runs$)", re.I)


def ignored(key: str) -> bool:
    return bool(IGNORED.search(str(key)))


def same_value(a, b, rtol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=rtol)
    return a == b


def diff_json(a, b, where: str, rtol: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if ignored(k):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                diff_json(a[k], b[k], f"{where}.{k}", rtol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            diff_json(x, y, f"{where}[{i}]", rtol, out)
    elif isinstance(a, str) and isinstance(b, str) and ("/" in a or "/" in b):
        return  # a path into the tree itself
    elif not same_value(a, b, rtol):
        out.append(f"{where}: {a!r} vs {b!r}")


def diff_csv(pa: Path, pb: Path, name: str, rtol: float, out: list[str]) -> None:
    a, b = pd.read_csv(pa), pd.read_csv(pb)
    cols_a = [c for c in a.columns if not ignored(c)]
    cols_b = [c for c in b.columns if not ignored(c)]
    if cols_a != cols_b:
        out.append(f"{name}: columns differ: {sorted(set(cols_a) ^ set(cols_b))}")
    if len(a) != len(b):
        out.append(f"{name}: {len(a)} vs {len(b)} rows")
        return
    for c in [c for c in cols_a if c in cols_b]:
        for i, (x, y) in enumerate(zip(a[c].tolist(), b[c].tolist())):
            if isinstance(x, str) and isinstance(y, str) and ("/" in x or "/" in y):
                continue
            if not same_value(x, y, rtol) and not (pd.isna(x) and pd.isna(y)):
                out.append(f"{name} row {i} {c}: {x!r} vs {y!r}")


def compare(before: Path, after: Path, rtol: float) -> tuple[list[str], int]:
    files = lambda root: {p.relative_to(root) for p in root.rglob("*") if p.suffix in (".csv", ".json") and p.is_file()}
    fa, fb = files(before), files(after)
    out = [f"{p}: only in {'before' if p in fa else 'after'}" for p in sorted(fa ^ fb)]
    for rel in sorted(fa & fb):
        if rel.suffix == ".csv":
            diff_csv(before / rel, after / rel, str(rel), rtol, out)
        else:
            diff_json(json.loads((before / rel).read_text()), json.loads((after / rel).read_text()), str(rel), rtol, out)
    return out, len(fa & fb)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rtol", type=float, default=0.0, help="relative (and absolute) tolerance of numbers [0: equal]")
    args = ap.parse_args(argv)
    out, n = compare(args.before, args.after, args.rtol)
    print(f"{n} files compared; {len(out)} difference(s)")
    for line in out:
        print("  " + line)
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
