"""The issue-20 tables of docs/reproducing.md and README.md, from an analysis' methods CSVs.

    python scripts/explain_methods_tables.py studies/explain-methods/analysis-methods

prints two Markdown tables: the per-method table of docs/reproducing.md (test top-1, attention
entropy at tau 1 per layer, the paired layer-3 entropy difference against ce, conflict rate,
tree ARI to kd per layer and between the method's own seeds) and the README's transposed
headline table, then the count of claimed paired differences. Only reads `methods.csv` and
`methods_paired.csv` (`kdx analyze-conflicts` over explainers of several methods writes them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from kdx.commands.study_report import md_table

README_ORDER = ["ce", "kd", "ls", "dkd", "at", "ft", "nst", "crd", "fitnet", "vid", "rkd", "pkt", "cc", "sp"]


def _layers(table: pd.DataFrame, stem: str) -> list[int]:
    return sorted(int(c[len(stem):].split("_")[0]) for c in table.columns if c.startswith(stem) and c.endswith("_mean"))


def _per_layer(row: pd.Series, stem: str, layers: list[int], fmt: str) -> str:
    vals = [row.get(f"{stem}{layer}_mean") for layer in layers]
    return "/".join("-" if v is None or pd.isna(v) else format(v, fmt) for v in vals) or "-"


def _paired(paired: pd.DataFrame, method: str, ref: str, quantity: str, digits: int = 3) -> str:
    hit = paired[(paired.method == method) & (paired.reference == ref) & (paired.quantity == quantity)]
    if hit.empty:
        return "-"
    r = hit.iloc[0]
    return f"{r['mean']:+.{digits}f}" + (" *" if bool(r["claimed"]) else "")


def tables(ana: Path) -> str:
    table = pd.read_csv(ana / "methods.csv")
    paired = pd.read_csv(ana / "methods_paired.csv")
    ent = _layers(table, "attention_entropy_tau1_l")
    top = ent[-1]
    ari = _layers(table, "tree_ari_kd_l")
    seeds = _layers(table, "tree_ari_seeds_l")
    lay = "/".join(f"L{layer}" for layer in ent)
    rows = []
    for _, r in table.iterrows():
        row = {"method": r["method"], "seeds": str(r["seeds"]),
               "test top-1 %": f"{100 * r['test_top1_mean']:.1f} +- {100 * r['test_top1_std']:.1f}",
               f"entropy at tau 1, {lay}": _per_layer(r, "attention_entropy_tau1_l", ent, ".2f"),
               f"L{top} vs ce (paired)": "-" if r["method"] == "ce" else
               _paired(paired, r["method"], "ce", f"attention_entropy_tau1_l{top}"),
               "conflict rate": f"{r['conflict_rate_objective_mean']:.2f}",
               f"tree ARI to kd, {lay}": "1 (itself)" if r["method"] == "kd" else
               _per_layer(r, "tree_ari_kd_l", ari, "+.2f")}
        if seeds:
            row[f"tree ARI between own seeds, {lay}"] = _per_layer(r, "tree_ari_seeds_l", seeds, "+.2f")
        rows.append(row)
    by = table.set_index("method")
    order = [m for m in README_ORDER if m in by.index] + [m for m in by.index if m not in README_ORDER]
    readme = pd.DataFrame([
        {"method": f"entropy L{top} vs ce",
         **{m: "0" if m == "ce" else _paired(paired, m, "ce", f"attention_entropy_tau1_l{top}", 2) for m in order}},
        {"method": "conflict rate", **{m: f"{by.at[m, 'conflict_rate_objective_mean']:.2f}" for m in order}},
        {"method": "test top-1 %", **{m: f"{100 * by.at[m, 'test_top1_mean']:.1f}" for m in order}}])
    n_claimed = int(paired["claimed"].sum())
    return (f"docs/reproducing.md:\n\n{md_table(pd.DataFrame(rows))}\nREADME.md:\n\n{md_table(readme)}\n"
            f"claimed paired differences: {n_claimed} of {len(paired)}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "methods.csv").is_file():
        sys.exit("usage: python scripts/explain_methods_tables.py ANALYSIS_FOLDER (with methods.csv, methods_paired.csv)")
    sys.stdout.write(tables(Path(sys.argv[1])))
