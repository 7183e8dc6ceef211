"""Issue 20: explainers of several methods side by side (kdx.analysis.methods)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdx.analysis.methods import (claimed, method_table, paired_table, partition_labels, seed_agreement, tree_distance,
                                  with_tree_distances)


def _ari_by_hand(a: list[int], b: list[int]) -> float:
    """Hubert and Arabie's adjusted Rand index from the contingency table (independent of scikit-learn)."""
    comb = lambda n: n * (n - 1) / 2
    n = len(a)
    table: dict = {}
    for x, y in zip(a, b):
        table[(x, y)] = table.get((x, y), 0) + 1
    rows = {x: sum(v for (i, _), v in table.items() if i == x) for x in set(a)}
    cols = {y: sum(v for (_, j), v in table.items() if j == y) for y in set(b)}
    index = sum(comb(v) for v in table.values())
    ra, cb = sum(comb(v) for v in rows.values()), sum(comb(v) for v in cols.values())
    expected = ra * cb / comb(n)
    top = (ra + cb) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


@pytest.mark.parametrize("a,b", [
    ([[0, 1], [2, 3]], [[0, 1], [2, 3]]),          # identical: 1
    ([[0, 1], [2, 3]], [[0, 2], [1, 3]]),          # crossed
    ([[0, 1, 2], [3, 4], [5]], [[0, 1], [2, 3], [4, 5]]),
    ([[0, 1, 2, 3, 4, 5]], [[0], [1], [2], [3], [4], [5]]),
    ([[1, 4], [0]], [[0, 1, 2], [3, 4, 5]]),       # classes 2, 3, 5 in no cluster: singletons
])
def test_tree_distance_equals_the_adjusted_rand_index_on_hand_made_partitions(a, b):
    la, lb = partition_labels(a, 6), partition_labels(b, 6)
    assert math.isclose(tree_distance(la, lb), _ari_by_hand(la, lb), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(tree_distance(la, la), 1.0)


def test_partition_labels():
    assert partition_labels([[0, 3], [1, 2]], 5) == [0, 1, 1, 0, 2]


def _frame():
    rows = []
    for seed in (0, 1, 2):
        for m, acc, h in (("ce", 0.80, 1.5), ("kd", 0.82, 1.6), ("at", 0.79 + 0.001 * seed, 1.2)):
            rows.append({"run": f"{m}{seed}", "method": m, "seed": seed, "accuracy": acc + 0.01 * seed,
                         "attention_entropy_l1": h, "attention_entropy_tau1_l1": h + 0.1,
                         "conflict_rate_objective": 0.3})
    return pd.DataFrame(rows)


def test_method_and_paired_tables():
    frame = _frame()
    parts = {f"{m}{s}": {1: partition_labels([[0, 1], [2, 3]] if m != "at" else [[0, 2], [1, 3]], 4)}
             for m in ("ce", "kd", "at") for s in (0, 1, 2)}
    frame = with_tree_distances(frame, parts)
    assert frame.loc[frame.run == "kd0", "tree_ari_ce_l1"].item() == 1.0
    assert frame.loc[frame.run == "at1", "tree_ari_kd_l1"].item() < 0
    table = method_table(frame)
    assert list(table["method"]) == ["ce", "kd", "at"] and (table["seeds"] == 3).all()
    assert math.isclose(table.set_index("method").at["kd", "accuracy_mean"], 0.83)
    paired = paired_table(frame)
    row = paired[(paired.method == "at") & (paired.reference == "kd") & (paired.quantity == "attention_entropy_l1")]
    assert math.isclose(row["mean"].item(), -0.4) and row["claimed"].item()  # every seed -0.4: std 0
    acc = paired[(paired.method == "at") & (paired.reference == "ce") & (paired.quantity == "accuracy")]
    assert [round(float(v), 4) for v in acc["per_seed"].item().split()] == [-0.01, -0.009, -0.008]
    assert set(paired["reference"]) == {"kd", "ce"}


def test_seed_agreement_is_the_mean_ari_over_pairs_of_a_methods_own_seeds():
    frame = _frame()
    kd = {0: [[0, 1], [2, 3]], 1: [[0, 1], [2, 3]], 2: [[0, 2], [1, 3]]}  # seeds 0 and 1 agree, 2 crosses
    parts = {f"{m}{s}": {1: partition_labels(kd[s] if m == "kd" else [[0, 1], [2, 3]], 4)}
             for m in ("ce", "kd", "at") for s in (0, 1, 2)}
    floor = seed_agreement(frame, parts).set_index("method")
    pairs = [_ari_by_hand(parts[f"kd{a}"][1], parts[f"kd{b}"][1]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert pairs[0] == 1.0 and pairs[1] < 0  # the case is not degenerate
    assert math.isclose(floor.at["kd", "tree_ari_seeds_l1_mean"], sum(pairs) / 3, abs_tol=1e-12)
    assert math.isclose(floor.at["kd", "tree_ari_seeds_l1_std"], pd.Series(pairs).std(), abs_tol=1e-12)
    assert floor.at["ce", "tree_ari_seeds_l1_mean"] == 1.0 and floor.at["ce", "tree_ari_seeds_l1_std"] == 0.0
    one = seed_agreement(frame[frame.seed == 0], parts).set_index("method")  # one seed: no pair
    assert one["tree_ari_seeds_l1_mean"].isna().all()


def test_claim_rule():
    assert claimed([1.0, 1.1, 0.9]) and not claimed([1.0, -1.0, 0.5]) and not claimed([2.0])


def test_methods_figure_puts_the_methods_on_each_panel(tmp_path):
    from kdx.analysis.plots import methods_figure, methods_plot

    frame = _frame()
    parts = {f"{m}{s}": {1: partition_labels([[0, 1], [2, 3]], 4)} for m in ("ce", "kd", "at") for s in (0, 1, 2)}
    table = method_table(with_tree_distances(frame, parts))
    fig = methods_figure(table)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["accuracy", "attention entropy at tau 1", "attention entropy at the final tau",  # no sharing column
                      "conflict rate", "tree ARI to kd", "tree ARI to ce"]
    assert all([t.get_text() for t in ax.get_xticklabels()] == ["ce", "kd", "at"] for ax in fig.axes)
    assert methods_plot(table, tmp_path / "methods.png").stat().st_size > 1000
    assert fig.axes[0].get_ylabel() == "top-1 on analysed images (%)"  # _frame has no test_top1
    floor = table.merge(seed_agreement(frame, parts), on="method")
    tree = next(ax for ax in methods_figure(floor).axes if ax.get_title() == "tree ARI to kd")
    ticks = [line for line in tree.get_lines() if line.get_label() == "own seeds"]
    assert len(ticks) == 1 and list(ticks[0].get_ydata()) == [1.0, 1.0, 1.0]


def test_analyze_conflicts_compares_methods_side_by_side(tmp_path):
    """Runs of several methods: methods.csv, methods_paired.csv, plots/methods.png and the report section."""
    from fakes import fake_explainer_run
    from typer.testing import CliRunner

    from kdx.cli import app

    runs = [fake_explainer_run(tmp_path, o, i) for i, o in enumerate(("ce", "ls", "kd"))]
    out = tmp_path / "ana"
    r = CliRunner().invoke(app, ["analyze-conflicts", *map(str, runs), "--images", "32", "--conflict-images", "16",
                                 "--device", "cpu", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "methods.csv")
    assert list(table["method"]) == ["ce", "ls", "kd"] and "tree_ari_kd_l1_mean" in table
    assert table.set_index("method").at["kd", "tree_ari_kd_l1_mean"] == 1.0
    assert "tree_ari_seeds_l1_mean" in table and table["tree_ari_seeds_l1_mean"].isna().all()  # one seed each
    paired = pd.read_csv(out / "methods_paired.csv")
    assert {"kd", "ce"} == set(paired["reference"]) and not paired["claimed"].any()  # one seed: nothing claimed
    assert (out / "plots" / "methods.png").is_file()
    report = (out / "report.md").read_text()
    assert "## Methods side by side" in report and "tree_ari_kd_l1" in report


def test_methods_csv_columns_are_documented(tmp_path):
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "analyze-conflicts.md").read_text()
    assert "### `methods.csv`" in doc and "### `methods_paired.csv`" in doc
    frame = _frame()
    parts = {f"{m}{s}": {1: partition_labels([[0, 1], [2, 3]], 4)} for m in ("ce", "kd", "at") for s in (0, 1, 2)}
    table = method_table(with_tree_distances(frame, parts))
    q = r"(test_top1|accuracy|attention_entropy(_tau1)?_l\d+|shared_pairs_objective|conflict_rate_objective|" \
        r"weighted_conflict_objective|tree_ari_(kd|ce|seeds)_l\d+)"
    assert all(re.fullmatch(rf"method|seeds|{q}_(mean|std)", c) for c in table.columns), list(table.columns)
    assert list(paired_table(with_tree_distances(frame, parts)).columns) == \
        ["method", "reference", "quantity", "seeds", "mean", "std", "per_seed", "claimed"]


def test_the_study_report_section_comes_from_the_methods_csvs(tmp_path):
    from kdx.commands.study_report import methods_section

    frame = _frame()
    parts = {f"{m}{s}": {1: partition_labels([[0, 1], [2, 3]], 4)} for m in ("ce", "kd", "at") for s in (0, 1, 2)}
    frame = with_tree_distances(frame, parts)
    ana = tmp_path / "analysis-methods"
    (ana / "plots").mkdir(parents=True)
    method_table(frame).to_csv(ana / "methods.csv", index=False)
    paired_table(frame).to_csv(ana / "methods_paired.csv", index=False)
    (ana / "plots" / "methods.png").write_bytes(b"png")
    text = "\n".join(methods_section(ana, tmp_path))
    assert "## Explainers by method, every seed" in text and "| at | 3 |" in text
    assert "at vs kd, attention_entropy_l1: -0.4" in text  # a claimed difference, read back from the CSV
    assert "(analysis-methods/plots/methods.png)" in text
    assert methods_section(tmp_path / "missing", tmp_path) == []


def test_the_docs_tables_script_reads_the_methods_csvs(tmp_path):
    """scripts/explain_methods_tables.py (the issue-20 tables of the docs) on a hand-made comparison."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "explain_methods_tables.py"
    spec = importlib.util.spec_from_file_location("explain_methods_tables", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frame = _frame().assign(test_top1=lambda f: f["accuracy"])
    parts = {f"{m}{s}": {1: partition_labels([[0, 1], [2, 3]] if m != "at" else [[0, 2], [1, 3]], 4)}
             for m in ("ce", "kd", "at") for s in (0, 1, 2)}
    crossed = _ari_by_hand(parts["at0"][1], parts["kd0"][1])
    frame = with_tree_distances(frame, parts)
    method_table(frame).merge(seed_agreement(frame, parts), on="method").to_csv(tmp_path / "methods.csv", index=False)
    paired_table(frame).to_csv(tmp_path / "methods_paired.csv", index=False)
    text = mod.tables(tmp_path)
    assert f"| at | 3 | 80.1 +- 1.1 | 1.30 | -0.300 * | 0.30 | {crossed:+.2f} | +1.00 |" in text  # at - ce = 1.3 - 1.6 per seed
    assert "| kd | 3 | 83.0 +- 1.0 | 1.70 | +0.100 * | 0.30 | 1 (itself) | +1.00 |" in text
    assert "| entropy L1 vs ce | 0 | +0.10 * | -0.30 * |" in text and "claimed paired differences:" in text
