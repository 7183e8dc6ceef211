"""Explainers of several KD methods side by side (issue 20): what each method does to the subtasks.

Input: the per-run rows of ``summary.csv`` (one explainer each, with its method and seed) and
each run's class partition per expert layer (``clusters/<run>/layer<L>.json``: the classes that
share an expert under hard routing). Output:

* ``methods.csv``, one row per method: the number of seeds, and mean and std over seeds of the
  test accuracy, the attention entropy per layer (at the final tau and at tau 1), the shared
  class pairs, the conflict rate and strength, and the tree distance to kd's and to ce's tree
  per layer;
* ``methods_paired.csv``, one row per (method, reference in {kd, ce}, quantity): the paired
  per-seed difference ``method - reference`` (same seed: same data order and initialisation),
  its mean, std, the seeds' values and whether it is claimed.

Tree distance [kdx]: the adjusted Rand index (scikit-learn's ``adjusted_rand_score``) between
two class partitions of one layer, per seed (method's tree of seed s against the reference's
tree of seed s); 1 = the same partition, about 0 = no more alike than chance.

Seed agreement [kdx]: ``tree_ari_seeds_l<L>``, the mean (and std) over every pair of a method's
own seeds of the ARI between their partitions, ``mean_{s<t} ARI(P_s, P_t)``. It is the floor
for reading a tree distance: a method's ARI to kd that is no lower than kd's own seed agreement
says no more than "another seed" does.

Claim rule: a paired difference over n >= 2 seeds is claimed when ``|mean| > 2 std / sqrt(n)``
(about a 95 % interval of the mean that excludes 0), as in the student grids.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from kdx.engine.metadata import method_label

REFERENCES = ("kd", "ce")
_ENTROPY = re.compile(r"^attention_entropy(_tau1)?_l(\d+)$")


def partition_labels(clusters: list[list[int]], num_classes: int) -> list[int]:
    """``[[0, 3], [1, 2]]`` -> the cluster index of every class, ``[0, 1, 1, 0]``; a class in no
    cluster gets a cluster of its own."""
    labels = [-1] * num_classes
    for k, members in enumerate(clusters):
        for c in members:
            labels[int(c)] = k
    nxt = len(clusters)
    for c in range(num_classes):
        if labels[c] < 0:
            labels[c], nxt = nxt, nxt + 1
    return labels


def tree_distance(a: list[int], b: list[int]) -> float:
    """Adjusted Rand index of two partitions given as per-class labels (scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def quantities(summary: pd.DataFrame) -> list[str]:
    """The per-run columns the comparison reports, in reading order."""
    cols = [c for c in ("test_top1", "top1", "accuracy") if c in summary.columns]  # accuracy: summary.csv before issue 21
    cols += sorted((c for c in summary.columns if _ENTROPY.match(c)), key=lambda c: (bool(_ENTROPY.match(c).group(1)),
                                                                                   int(_ENTROPY.match(c).group(2))))
    cols += [c for c in ("shared_pairs_objective", "conflict_rate_objective", "weighted_conflict_objective")
             if c in summary.columns]
    return cols


def with_tree_distances(summary: pd.DataFrame, partitions: dict[str, dict[int, list[int]]]) -> pd.DataFrame:
    """``summary`` (columns run, method, seed, ...) plus ``tree_ari_<ref>_l<L>``: each run's
    partition against the reference method's run of the same seed (NaN where there is none)."""
    out = summary.copy()
    layers = sorted({layer for p in partitions.values() for layer in p})
    by_key = {(r.method, r.seed): r.run for r in summary.itertuples()}
    for ref in REFERENCES:
        for layer in layers:
            vals = []
            for r in summary.itertuples():
                other = by_key.get((ref, r.seed))
                a, b = partitions.get(r.run, {}).get(layer), partitions.get(other, {}).get(layer) if other else None
                vals.append(tree_distance(a, b) if a is not None and b is not None else float("nan"))
            out[f"tree_ari_{ref}_l{layer}"] = vals
    return out


def seed_agreement(frame: pd.DataFrame, partitions: dict[str, dict[int, list[int]]]) -> pd.DataFrame:
    """One row per method (first-seen order) with ``tree_ari_seeds_l<L>_mean`` / ``_std``: the ARI
    between the partitions of every pair of the method's seeds (NaN with fewer than two seeds; the
    std needs two pairs, i.e. three seeds)."""
    layers = sorted({layer for p in partitions.values() for layer in p})
    rows = []
    for method, g in frame.groupby("method", sort=False):
        runs = [r for r in g.drop_duplicates("seed").sort_values("seed")["run"] if r in partitions]
        row: dict = {"method": method}
        for layer in layers:
            vals = [tree_distance(partitions[a][layer], partitions[b][layer])
                    for i, a in enumerate(runs) for b in runs[i + 1:]
                    if layer in partitions[a] and layer in partitions[b]]
            s = pd.Series(vals, dtype="float64")
            row[f"tree_ari_seeds_l{layer}_mean"] = float(s.mean()) if len(s) else float("nan")
            row[f"tree_ari_seeds_l{layer}_std"] = float(s.std(ddof=1)) if len(s) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=["method"] + [f"tree_ari_seeds_l{layer}_{k}" for layer in layers
                                                    for k in ("mean", "std")])


def claimed(values) -> bool:
    """The claim rule of every kdx comparison: |mean| > 2 * std / sqrt(n) over n >= 2 paired
    per-seed differences (NaNs dropped)."""
    d = pd.to_numeric(pd.Series(list(values), dtype="float64"), errors="coerce").dropna()
    if len(d) < 2:
        return False
    return bool(abs(d.mean()) > 2 * d.std(ddof=1) / math.sqrt(len(d)))


def method_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per method (in first-seen order): seeds, and ``<q>_mean`` / ``<q>_std`` of every quantity."""
    qs = quantities(frame) + [c for c in frame.columns if c.startswith("tree_ari_")]
    rows = []
    for method, g in frame.groupby("method", sort=False):
        row = {"method": method, "seeds": int(g["seed"].nunique())}
        for q in qs:
            vals = pd.to_numeric(g[q], errors="coerce").dropna()
            row[f"{q}_mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{q}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Paired per-seed differences of every quantity, each method against kd and against ce."""
    qs = quantities(frame)
    rows = []
    for ref in REFERENCES:
        base = frame[frame["method"] == ref].set_index("seed")
        if base.empty:
            continue
        for method, g in frame.groupby("method", sort=False):
            if method == ref:
                continue
            g = g.set_index("seed")
            seeds = sorted(set(g.index) & set(base.index))
            for q in qs:
                d = [float(g.at[s, q]) - float(base.at[s, q]) for s in seeds
                     if pd.notna(g.at[s, q]) and pd.notna(base.at[s, q])]
                if not d:
                    continue
                s = pd.Series(d, dtype="float64")
                rows.append({"method": method, "reference": ref, "quantity": q, "seeds": len(d), "mean": float(s.mean()),
                             "std": float(s.std(ddof=1)) if len(d) > 1 else float("nan"), "per_seed": " ".join(f"{v:+.4f}" for v in d), "claimed": claimed(d)})
    return pd.DataFrame(rows, columns=["method", "reference", "quantity", "seeds", "mean", "std", "per_seed", "claimed"])


def run_frame(summary: pd.DataFrame, metas: dict[str, dict]) -> pd.DataFrame:
    """summary.csv's rows with each run's ``method`` (its checkpoint's method label), ``seed`` and
    ``test_top1`` (the analysed checkpoint's test top-1, from its metadata) by run label."""
    out = summary.copy()
    out["method"] = [method_label(metas[r]) for r in out["run"]]
    out["seed"] = [metas[r].get("seed") for r in out["run"]]
    out["test_top1"] = [(metas[r].get("metrics") or {}).get("test_top1") for r in out["run"]]
    return out


def comparison(summary: pd.DataFrame, metas: dict[str, dict], groups: dict[str, list]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(methods.csv, methods_paired.csv) of the analysed runs; ``groups``: per run label the
    analysis' hard clusters per layer (``[(expert, classes), ...]`` each)."""
    frame = run_frame(summary, metas)
    num_classes = 1 + max(c for g in groups.values() for layer in g for _, members in layer for c in members)
    parts = {run: {layer: partition_labels([m for _, m in g], num_classes) for layer, g in enumerate(layers, start=1)}
             for run, layers in groups.items()}
    frame = with_tree_distances(frame, parts)
    table = method_table(frame).merge(seed_agreement(frame, parts), on="method", how="left", sort=False)
    return table, paired_table(frame)


def report_section(table: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The report's "Methods side by side" section: the table, then the claimed paired differences."""
    shown = re.compile(r"^(test_top1|attention_entropy_tau1_l\d+|conflict_rate_objective|weighted_conflict_objective|"
                       r"tree_ari_(kd|ce|seeds)_l\d+)$")
    qs = [c[:-5] for c in table.columns if c.endswith("_mean") and shown.match(c[:-5])]
    lines = ["", "## Methods side by side", "",
             "Mean ± std over seeds per method (`methods.csv`); test_top1 is the analysed checkpoint's test "
             "accuracy, top1 that on the analysed images; tree_ari_<ref>_l<L> is the adjusted Rand index "
             "between the method's class partition at layer L and the reference method's of the same seed "
             "(1 = the same tree), tree_ari_seeds_l<L> that between the method's own seeds (the floor: a "
             "distance to kd no lower than kd's own seed agreement is no more than a new seed). The entropies at "
             "the runs' final tau, the shared pairs and the accuracy on the analysed images are in the CSV too. Paired per-seed differences against kd and ce are in `methods_paired.csv`; "
             "a difference is claimed when |mean| > 2 std / sqrt(n) over its n seeds.", "",
             "| method | seeds | " + " | ".join(qs) + " |", "|" + "---|" * (len(qs) + 2)]
    for _, r in table.iterrows():
        cells = [f"{r[q + '_mean']:.4g}" + ("" if pd.isna(r[q + "_std"]) else f" ± {r[q + '_std']:.2g}") for q in qs]
        lines.append(f"| {r['method']} | {r['seeds']} | " + " | ".join(cells) + " |")
    claims = paired[paired["claimed"]] if len(paired) else paired
    lines += ["", f"Claimed paired differences ({len(claims)} of {len(paired)}):", ""]
    lines += [f"- {c.method} vs {c.reference}, {c.quantity}: {c.mean:+.4g} ± {c.std:.2g} (seeds: {c.per_seed})"
              for c in claims.itertuples()] or ["- none"]
    return "\n".join(lines) + "\n"
