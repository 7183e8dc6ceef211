"""study_report.md, study_summary.csv and explainer_differences.csv of `kdx pipeline`.

The explainers are compared across the study's seeds: per method mean ± std, and the paired
differences kd - ls and kd - ce (same seed = same initialisation and batch order). The rule
for claiming a difference is :func:`claimed`, stated in the report.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

import pandas as pd

from kdx.analysis.methods import claimed, report_section

from kdx.commands.common import format_delta, paired_delta
from kdx.commands.study import BASE_SEED, environment, overridden, reproduce_commands
from kdx.io import atomic_write_csv, atomic_write_text

# The explainer columns compared across methods: the final test accuracy, every entropy column
# (routing entropy of training, attention entropy of the analysis, at every temperature the
# analysis reports) and the conflict rates. Names of the metrics are matched here only.
ACCURACY = "test_top1_last"
COPIED_FROM_ANALYSIS = ("attention_entropy", "norm_attention_entropy", "conflict", "weighted_conflict", "clusters")
STAGE1_ENTROPY = ("stage1_final_routing_entropy", "stage1_final_entropy")  # results.json (the second: older runs)
IN_NATS = ("attention_entropy", "stage1_routing_entropy")  # in the CSVs; the report's tables show normalised values
PAIRS = (("kd", "ls"), ("kd", "ce"))
CLAIM_RULE = ("A difference between two methods is claimed only when its paired mean over the n seeds is "
              "larger than twice its standard error: |mean| > 2 * std / sqrt(n) (std of the per-seed "
              "differences, ddof 1); with one seed no difference is claimed.")


def compared_columns(columns) -> list[str]:
    return [c for c in columns if c == ACCURACY or "entropy" in c or c.startswith("conflict_rate")]


def shown(columns) -> list[str]:
    """The columns of the report's explainer tables: entropies in nats stay in the CSVs."""
    return [c for c in columns if not str(c).startswith(IN_NATS)]


def is_fraction(column: str) -> bool:
    """Accuracy-like columns are fractions shown in percent."""
    return column.startswith(("test_top1", "conflict_rate", "accuracy", "best_mean", "last_mean", "best_std",
                              "last_std"))


# ------------------------------------------------------------------ formatting


def blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def fmt(v, column: str = "", floatfmt: str = "{:.4g}") -> str:
    """One cell: empty where there is no value (a one-seed std among them), percent for fractions."""
    if blank(v):
        return ""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return f"{100 * v:.2f}%" if is_fraction(column) and not column.endswith("_std") else \
            (f"{100 * v:.2f}" if is_fraction(column) else floatfmt.format(v))
    return str(v)


def md_table(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A pandas frame as a GitHub markdown table (no extra dependency)."""
    if frame is None or frame.empty:
        return "_(none)_\n"
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v, c, floatfmt) for v, c in zip(row, cols)) + " |")
    return "\n".join(lines) + "\n"


def int_frame(rows: list[dict], columns=None) -> pd.DataFrame:
    """A frame of ``rows`` in which a column whose values are all integers stays integer (empty where
    missing) instead of turning float at the first gap."""
    frame = pd.DataFrame(rows, columns=columns)
    for col in frame.columns:
        vals = [r.get(col) for r in rows if not blank(r.get(col))]
        if vals and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in vals):
            frame[col] = pd.array([None if blank(r.get(col)) else int(r.get(col)) for r in rows], dtype="Int64")
    return frame


def mean_std(values: pd.Series, column: str = "") -> str:
    """``mean ± std`` over seeds; the mean alone with one seed."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return ""
    scale, digits = (100, 2) if is_fraction(column) else (1, 4)
    text = f"{scale * v.mean():.{digits}f}"
    return text + (f" ± {scale * v.std(ddof=1):.{digits}f}" if len(v) > 1 else "")


# ------------------------------------------------------------------ collecting the numbers


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def teacher_name(study: dict, resolved: dict) -> str:
    """The teacher's architecture as run: from the supplied run's metadata, else the resolved config."""
    meta = resolved.get("teacher_meta")
    if meta:
        return str(meta.get("arch") or "teacher")
    cfg = resolved["configs"].get("teacher")
    return str(getattr(cfg, "arch", None) or (study.get("teacher") or {}).get("arch", "teacher"))


def explainer_rows(study: dict, seed: int, paths: dict) -> list[dict]:
    """One row per explainer method of a seed: its test accuracy, stage-1 routing entropy, and the analysis columns."""
    analysis = paths["analysis"] / "summary.csv"
    asum = pd.read_csv(analysis) if analysis.is_file() else pd.DataFrame()
    rows = []
    for m in study["methods"]:
        r = _json(paths[f"explainer-{m}"] / "results.json")
        row = {"seed": seed, "component": "explainer", "name": m, "test_top1_best": r.get("test_top1_best"),
               "test_top1_last": r.get("test_top1_last"), "best_epoch": r.get("best_epoch")}
        for key, value in (next((r[k] for k in STAGE1_ENTROPY if r.get(k)), None) or {}).items():
            row[f"stage1_{key}"] = value
        if r.get("stage1_final_tau") is not None:
            row["stage1_final_tau"] = r["stage1_final_tau"]
        match = asum[asum["run"] == m] if not asum.empty and "run" in asum.columns else pd.DataFrame()
        if len(match):
            for col in asum.columns:
                if col.startswith(COPIED_FROM_ANALYSIS):
                    row[col] = match.iloc[0][col].item() if hasattr(match.iloc[0][col], "item") else match.iloc[0][col]
        rows.append(row)
    return rows


def collect(study: dict, resolved: dict) -> list[dict]:
    """One row per trained thing: the teacher, each explainer of each seed, each student run."""
    places = resolved["places"]
    first = int(study["seeds"][0])
    t = _json(places["teacher"] / "results.json")
    rows = [{"seed": first if not study.get("teacher_run") else None, "component": "teacher",
             "name": teacher_name(study, resolved), "test_top1_best": t.get("test_top1_best"),
             "test_top1_last": t.get("test_top1_last"), "best_epoch": t.get("best_epoch")}]
    for seed, paths in places["seeds"].items():
        rows += explainer_rows(study, seed, paths)
    comp = places["students"] / "comparison.csv"
    if comp.is_file():
        for rec in pd.read_csv(comp).to_dict("records"):
            rows.append({"seed": rec.get("seed"), "component": "student", "name": rec.get("method"),
                         "test_top1_best": rec.get("test_top1_best"),
                         "test_top1_last": rec.get("test_top1_last"), "best_epoch": rec.get("best_epoch"),
                         "params": rec.get("params"), "macs": rec.get("macs")})
    return rows


# ------------------------------------------------------------------ the explainers across seeds


def explainer_differences(expl: pd.DataFrame) -> pd.DataFrame:
    """Per compared column and pair (kd - ls, kd - ce): n, mean, std of the per-seed differences, claimed."""
    frame = expl.rename(columns={"name": "method"})
    rows = []
    for col in compared_columns(frame.columns):
        for a, b in PAIRS:
            if not {a, b} <= set(frame["method"]):
                continue
            d = paired_delta(frame, a, b, col)
            if d.empty:
                continue
            std = float(d.std(ddof=1)) if len(d) > 1 else None
            rows.append({"metric": col, "pair": f"{a} - {b}", "n": len(d), "mean": float(d.mean()), "std": std,
                         "claimed": claimed(d)})
    return int_frame(rows, columns=["metric", "pair", "n", "mean", "std", "claimed"])


def _diff_cell(r) -> str:
    if is_fraction(r["metric"]):
        text = format_delta(r["mean"], r["std"])
    else:
        text = f"{r['mean']:+.4f}" + ("" if blank(r["std"]) else f" ± {r['std']:.4f}")
    return text + (" **claimed**" if r["claimed"] else "")


def finding(r) -> str:
    """One sentence per compared column and pair, computed from the paired differences."""
    a, b = r["pair"].split(" - ")
    if r["claimed"]:
        verdict = f"{a} {'lower' if r['mean'] < 0 else 'higher'} than {b}"
    elif r["n"] < 2:
        verdict = "no claim (one seed)"
    else:
        verdict = f"no difference claimed between {a} and {b}"
    return f"- {r['metric']}: {verdict} ({_diff_cell(r).replace(' **claimed**', '')}, n = {r['n']})"


def explainer_section(expl: pd.DataFrame, diffs: pd.DataFrame, methods: list[str]) -> list[str]:
    cols = [ACCURACY] + [c for c in shown(compared_columns(expl.columns)) if c != ACCURACY]
    agg = [{"method": m, "seeds": int((expl["name"] == m).sum()),
            **{c: mean_std(expl.loc[expl["name"] == m, c], c) for c in cols}} for m in methods]
    lines = ["Per method over the study's seeds: mean ± std (std over seeds, ddof 1; the mean alone with one seed). "
             "Accuracy and conflict rates in percent.", "", md_table(pd.DataFrame(agg)), ""]
    if not diffs.empty:
        wide = diffs.assign(cell=[_diff_cell(r) for r in diffs.to_dict("records")]).pivot(
            index="metric", columns="pair", values="cell").reindex(cols).dropna(how="all").reset_index()
        lines += ["Paired differences (same seed = same initialisation and batch order), mean ± std over seeds; "
                  "accuracy and conflict rates in points:", "", md_table(wide), "", f"Rule: {CLAIM_RULE}", "",
                  "Findings (computed from the paired differences; every entropy column, in nats too, is in "
                  "`explainer_differences.csv`):", "",
                  *[finding(r) for r in diffs.to_dict("records") if r["metric"] in cols], ""]
    return lines


# ------------------------------------------------------------------ the report


def describe(study: dict, resolved: dict) -> list[str]:
    """The resolved study, in words (what ran, not what the preset says)."""
    cfgs, meta = resolved["configs"], resolved.get("teacher_meta")
    seeds = ", ".join(str(s) for s in study["seeds"])
    if meta:
        teacher = (f"the supplied run `{study['teacher_run']}` ({teacher_name(study, resolved)}, trained on "
                   f"{meta.get('dataset', '?')})")
    else:
        t = cfgs["teacher"]
        teacher = f"{t.arch}, {t.epochs} epochs ({t.schedule}, lr {t.lr:g}, batch {t.batch_size})"
    e = next(v for k, v in cfgs.items() if isinstance(k, tuple))
    final_tau = e.tau0 / e.stage1_epochs
    a, s = study.get("analysis") or {}, cfgs.get("student")
    students = (f"- students: {s.arch}, {s.epochs} epochs, student seeds {', '.join(map(str, s.seeds or [0]))}, "
                f"hierarchy from seed {study['seeds'][0]}'s analysis") if s is not None else "- students: none (students = false)"
    return [f"- data: {study.get('dataset')}" + (f" (first {study['max_train_samples']} training images)"
                                                 if study.get("max_train_samples") else ""),
            f"- teacher: {teacher}",
            f"- explainers: {', '.join(study['methods'])}, widths {e.widths or '64:64,64:64,64:32'}; stage 1 "
            f"{e.stage1_epochs} epochs at tau0 {e.tau0:g} (final tau {final_tau:.3g}), stage 2 {e.stage2_epochs} epochs; "
            f"seeds {seeds} (seed s trains with seed {BASE_SEED} + s)",
            f"- analysis: {a.get('images', 1024)} {a.get('split', 'val')} images per seed",
            students, ""]


def _notes(study: dict) -> list[str]:
    changed = overridden(study)
    if not study.get("notes"):
        return []
    if not changed or changed == ["notes"]:
        return [f"> {study['notes']}", ""]
    return [f"(The {study.get('preset')} preset's notes are not shown: this study departs from the preset in "
            f"{', '.join(c for c in changed if c != 'notes')}.)", ""]


def report_plots(pdir: Path) -> list[Path]:
    """The plots a study report shows, in reading order: entropy bars, trees, last-layer attention, conflicts."""
    if not pdir.is_dir():
        return []
    attention = sorted(pdir.glob("attention_*_layer*.png"))
    last = max((int(p.stem.rsplit("layer", 1)[1]) for p in attention), default=0)
    return ([p for p in [pdir / "entropy.png"] if p.is_file()] + sorted(pdir.glob("tree_*.png"))
            + [p for p in attention if p.stem.endswith(f"_layer{last}")] + sorted(pdir.glob("conflicts_*.png")))


def _tree_and_plots(study: dict, paths0: dict, out: Path) -> list[str]:
    lines = []
    tree_file = paths0.get("explainer-kd", paths0[f"explainer-{study['methods'][-1]}"]) / "tree.json"
    tree = _json(tree_file)
    if tree:
        lines += ["## The class tree (hard routing)", "", f"From `{_rel(tree_file, out)}`.", ""]
        for layer in tree.get("layers", []):
            groups = [" / ".join(g["names"]) for g in layer["groups"] if g["classes"]]
            lines.append(f"- layer {layer['layer']}: " + "; ".join(f"{{{g}}}" for g in groups))
        lines.append("")
    plots = report_plots(paths0["analysis"] / "plots")
    if plots:
        lines += ["## Plots", "", "Entropy per layer, the class trees, each run's attention at the last expert layer "
                  "and its gradient conflicts (first seed); every other plot is in the analysis report.", ""]
        for p in plots:
            lines += [f"![{p.stem}]({_rel(p, out)})", ""]
    return lines


def students_section(stud: pd.DataFrame, students: Path, out: Path) -> list[str]:
    if stud.empty:
        return ["_(none)_", ""]
    agg = stud.groupby("name", sort=False).agg(  # the names of comparison_summary.csv
        seeds=("test_top1_best", "size"), test_top1_best_mean=("test_top1_best", "mean"),
        test_top1_best_std=("test_top1_best", "std"), test_top1_last_mean=("test_top1_last", "mean"),
        test_top1_last_std=("test_top1_last", "std")).reset_index()
    paired = stud.assign(method=stud["name"])
    deltas = [paired_delta(paired, m, "kd", "test_top1_best") for m in agg["name"]]
    agg["test_top1_best_vs_kd"] = ["" if m == "kd" or not len(d) else
                                   format_delta(d.mean(), d.std(ddof=1) if len(d) > 1 else None)
                                   for m, d in zip(agg["name"], deltas)]
    lines = [md_table(agg.rename(columns={"name": "method"})),
             "test_top1_best = test top-1 at the epoch with the best validation accuracy; test_top1_last = final "
             "epoch; mean over student seeds, std in points (empty with one seed); test_top1_best_vs_kd = the paired "
             "per-seed difference against kd in points (mean ± std): a gap smaller than its std is seed noise. The "
             "columns are those of comparison_summary.csv.\n"]
    png = students / "comparison.png"
    if png.is_file():
        lines += [f"![comparison]({_rel(png, out)})", ""]
    return lines


def methods_section(analysis: Path | None, out: Path) -> list[str]:
    """The methods side by side, from the study-wide analysis' methods.csv and methods_paired.csv
    (the section analyze-conflicts writes, kdx.analysis.methods.report_section), figure linked."""
    if analysis is None or not (analysis / "methods.csv").is_file() or not (analysis / "methods_paired.csv").is_file():
        return []
    section = report_section(pd.read_csv(analysis / "methods.csv"), pd.read_csv(analysis / "methods_paired.csv"))
    section = section.replace("## Methods side by side", "## Explainers by method, every seed (issue 20)", 1)
    png, report = analysis / "plots" / "methods.png", analysis / "report.md"
    return [section, *([f"![methods side by side]({_rel(png, out)})", ""] if png.is_file() else []),
            f"Full analysis: [{_rel(report, out)}]({_rel(report, out)}).", ""]


def write_report(study: dict, out: Path, resolved: dict, log: list, seconds: float) -> pd.DataFrame:
    places = resolved["places"]
    summary = int_frame(collect(study, resolved))
    atomic_write_csv(out / "study_summary.csv", summary)
    expl = summary[summary["component"] == "explainer"].dropna(axis=1, how="all")
    diffs = explainer_differences(expl)
    atomic_write_csv(out / "explainer_differences.csv", diffs)
    paths0 = next(iter(places["seeds"].values()))
    lines = [f"# kdx study: {study.get('preset', 'custom')} on {study.get('dataset')}", "", "## Study", "",
             *describe(study, resolved), *_notes(study),
             "## Environment", "", md_table(pd.DataFrame([environment()])), "",
             f"Wall time of this invocation: {seconds / 60:.1f} min (steps finished earlier were skipped).", "",
             "## Reproduce", "", "```bash", *reproduce_commands(study, out), "```", "",
             "The effective study config is `study.json`; each step's own `config.json` reproduces that step.", "",
             "## Teacher", "",
             md_table(summary[summary["component"] == "teacher"][["name", "best_epoch", "test_top1_best",
                                                                  "test_top1_last"]]),
             "## Explainers", "",
             "Per seed: test top-1 of the final (stage-2, hard-routing) explainer; entropy and conflicts from each "
             "seed's `analysis/`. `norm_attention_entropy_l<l>`: mean normalised entropy of the soft subtask "
             "attention over layer l at the run's final tau (it depends on the run's length); "
             "`norm_attention_entropy_tau1_l<l>`: the same at tau 1, composed from the routing's own distribution "
             "softmax(R / 0.5), comparable across runs. Entropies in nats (and the routing entropy at the end of "
             "stage 1, `stage1_routing_entropy_l<i>`) are in `study_summary.csv`.", "",
             md_table(expl[shown(expl.columns)].drop(columns=["component"])), "",
             *explainer_section(expl, diffs, study["methods"])]
    report = paths0["analysis"] / "report.md"
    if report.is_file():
        lines += [f"Full analysis of seed {study['seeds'][0]}: [{_rel(report, out)}]({_rel(report, out)}).", ""]
    lines += _tree_and_plots(study, paths0, out)
    lines += methods_section(places.get("methods"), out)
    if "student" in resolved["configs"]:
        lines += ["## Students: with and without VAM", "",
                  *students_section(summary[summary["component"] == "student"], places["students"], out)]
    lines += ["## Steps of this invocation", "", md_table(pd.DataFrame(log), floatfmt="{:.1f}")]
    atomic_write_text(out / "study_report.md", "\n".join(lines) + "\n")
    from kdx.engine.progress import console

    console.print(f"study report: {out / 'study_report.md'}")
    return summary
