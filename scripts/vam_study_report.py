#!/usr/bin/env python3
"""The VAM study's tables (docs/reproducing.md, issue 18) from its run folders.

    python scripts/vam_study_report.py resnet8=RUNS/grid resnet8=RUNS/grid2 wrn_16_1=RUNS/grid-wrn
    python scripts/vam_study_report.py "20ep=RUNS/kd-20ep:kd" "20ep=RUNS/kdtree-20ep:kd+tree"   # one-arm folders
    python scripts/vam_study_report.py --choose-w RUNS/grid          # the tree weight w picked on validation

Reads every ``FOLDER/seed<s>/<arm>/results.json`` (finished arms only; a grid may still be
running) and prints, per student, the arms' test top-1 at the best-validation epoch and at the
last epoch (mean +- std over seeds), and each arm's paired per-seed difference against its
method alone (``kd+tree@0.1`` against ``kd``: same seed = same initialisation and batch order).
Claim rule: a difference is claimed when |mean| > 2 std / sqrt(n) over the n paired seeds.
``--choose-w`` prints the w of the ``M+tree@w`` arms with the highest mean *validation* top-1
(the test set is never used for a choice).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

_SEED = re.compile(r"seed(\d+)$")


def collect(folder: Path, arm: str | None = None) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: results}}`` of the finished arms under ``folder`` (``FOLDER/seed<s>/<arm>/results.json``);
    with ``arm``, a one-arm folder (``FOLDER/seed<s>/results.json``, the budget runs) read as that arm."""
    out: dict[str, dict[int, dict]] = {}
    for seed_dir in sorted(folder.glob("seed*")):
        m = _SEED.search(seed_dir.name)
        if not m or not seed_dir.is_dir():
            continue
        arms = [(arm, seed_dir)] if arm else [(p.name, p) for p in sorted(seed_dir.iterdir()) if p.is_dir()]
        for name, d in arms:
            res = d / "results.json"
            if res.is_file():
                out.setdefault(name, {})[int(m.group(1))] = json.loads(res.read_text())
    return out


def base_of(arm: str) -> str:
    return re.split(r"\+(?:tree|head)", arm, maxsplit=1)[0]


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def fmt(mean: float, std: float) -> str:
    return f"{mean:.2f}" + ("" if math.isnan(std) else f" +- {std:.2f}")


def paired(arms: dict, arm: str, key: str) -> list[float]:
    base = arms.get(base_of(arm), {})
    return [100 * (arms[arm][s][key] - base[s][key]) for s in sorted(arms[arm]) if s in base]


def claimed(diffs: list[float]) -> bool:
    if len(diffs) < 2:
        return False
    mean, std = mean_std(diffs)
    return abs(mean) > 2 * std / math.sqrt(len(diffs))


def table(name: str, arms: dict) -> str:
    lines = [f"#### {name}", "",
             "| arm | seeds | test top-1, best-val epoch | last epoch | paired vs method alone (best-val) | per seed | last epoch, paired |",
             "|---|---|---|---|---|---|---|"]
    for arm in sorted(arms, key=lambda a: (a != "ce", base_of(a), a != base_of(a), a)):
        runs = arms[arm]
        best = mean_std([100 * r["test_top1_best"] for r in runs.values()])
        last = mean_std([100 * r["test_top1_last"] for r in runs.values()])
        cells = ["-", "-", "-"]
        if arm != base_of(arm):
            d, dl = paired(arms, arm, "test_top1_best"), paired(arms, arm, "test_top1_last")
            if d:
                cells = [fmt(*mean_std(d)) + (" *" if claimed(d) else ""), ", ".join(f"{v:+.2f}" for v in d),
                         fmt(*mean_std(dl)) + (" *" if claimed(dl) else "")]
        lines.append(f"| {arm} | {len(runs)} | {fmt(*best)} | {fmt(*last)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def choose_w(arms: dict, method: str = "kd") -> float:
    """The tree weight with the highest mean validation top-1 (best-val epoch) among ``method+tree@w``."""
    pat = re.compile(re.escape(method) + r"\+tree@([0-9.e-]+)$")
    scores = {}
    for arm, runs in arms.items():
        m = pat.match(arm)
        if m:
            scores[float(m.group(1))] = statistics.fmean(r["val_top1_best"] for r in runs.values())
    if not scores:
        raise SystemExit(f"no finished {method}+tree@w arms")
    return max(scores, key=lambda w: (scores[w], -w))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="NAME=FOLDER (or FOLDER) of a --compare grid; NAME=FOLDER:ARM "
                    "for a one-arm folder (FOLDER/seed<s>/results.json) read as arm ARM")
    ap.add_argument("--choose-w", action="store_true", help="print the tree weight chosen on validation and exit")
    ap.add_argument("--method", default="kd", help="--choose-w: the method whose tree arms decide [kd]")
    args = ap.parse_args(argv)
    groups: dict[str, dict] = {}
    for item in args.folders:
        name, _, folder = item.rpartition("=")
        folder, _, single = folder.partition(":")  # FOLDER:ARM = a one-arm folder, read as arm ARM
        found = collect(Path(folder), single or None)
        group = groups.setdefault(name or Path(folder).name, {})
        for arm, seeds in found.items():  # one arm may span folders (its seeds in several)
            group.setdefault(arm, {}).update(seeds)
    if args.choose_w:
        merged = {k: v for g in groups.values() for k, v in g.items()}
        print(f"{choose_w(merged, args.method):g}")
        return
    for name, arms in groups.items():
        print(table(name, arms))
        print()
    print("(* claimed: |mean| > 2 std / sqrt(n) over the n paired seeds; differences in points)")


if __name__ == "__main__":
    main()
