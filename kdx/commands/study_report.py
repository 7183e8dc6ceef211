"""study_report.md + study_summary.csv of `kdx pipeline`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from kdx.commands.common import format_delta, paired_delta
from kdx.engine.io import atomic_write_csv, atomic_write_text


def md_table(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A pandas frame as a GitHub markdown table (no extra dependency)."""
    if frame is None or frame.empty:
        return "_(none)_\n"

    def cell(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else floatfmt.format(v)
        return str(v)

    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def as_percent(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy-like columns (fractions) as percentages with 2 decimals; std columns as points."""
    out = frame.copy()
    for col in out.columns:
        c = str(col)
        if c.startswith(("test_top1", "conflict_rate", "best_mean", "last_mean")):
            out[col] = [_pct(v) for v in out[col]]
        elif c in ("best_std", "last_std"):
            out[col] = ["-" if pd.isna(v) else f"{100 * v:.2f}" for v in out[col]]
    return out


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{100 * v:.2f}%"


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def collect(study: dict, seed: int, paths: dict) -> list[dict]:
    """One row per trained thing of a seed: teacher, each explainer, each student method."""
    rows = []
    t = _json(paths["teacher"] / "results.json")
    rows.append({"seed": seed, "component": "teacher", "name": study["teacher"].get("arch", "teacher"),
                 "test_top1_best": t.get("test_top1_best"), "test_top1_last": t.get("test_top1_last"),
                 "best_epoch": t.get("best_epoch")})
    analysis = paths["analysis"] / "summary.csv"
    asum = pd.read_csv(analysis) if analysis.is_file() else pd.DataFrame()
    for obj in study["objectives"]:
        r = _json(paths[f"explainer-{obj}"] / "results.json")
        row = {"seed": seed, "component": "explainer", "name": obj, "test_top1_best": r.get("test_top1_best"),
               "test_top1_last": r.get("test_top1_last"), "best_epoch": r.get("best_epoch")}
        if not asum.empty and "run" in asum.columns:
            match = asum[asum["run"] == obj]
            if len(match):
                for col in asum.columns:
                    if col.startswith(("attention_entropy", "norm_attention_entropy", "conflict", "clusters")):
                        row[col] = match.iloc[0][col]
        rows.append(row)
    comp = paths["students"] / "comparison.csv"
    if comp.is_file():
        frame = pd.read_csv(comp)
        for rec in frame.to_dict("records"):
            rows.append({"seed": seed, "component": "student", "name": rec.get("method"),
                         "student_seed": rec.get("seed"),
                         "test_top1_best": rec.get("test_top1_best"), "test_top1_last": rec.get("test_top1_last"),
                         "best_epoch": rec.get("best_epoch"), "params": rec.get("params"), "macs": rec.get("macs")})
    return rows


def report_plots(pdir: Path) -> list[Path]:
    """The plots a study report shows, in reading order: entropy bars, trees, last-layer attention, conflicts."""
    if not pdir.is_dir():
        return []
    attention = sorted(pdir.glob("attention_*_layer*.png"))
    last = max((int(p.stem.rsplit("layer", 1)[1]) for p in attention), default=0)
    return ([p for p in [pdir / "entropy.png"] if p.is_file()] + sorted(pdir.glob("tree_*.png"))
            + [p for p in attention if p.stem.endswith(f"_layer{last}")] + sorted(pdir.glob("conflicts_*.png")))


def write_report(study: dict, out: Path, per_seed: dict, log: list, seconds: float) -> pd.DataFrame:
    from kdx.commands.pipeline import environment, reproduce_commands

    rows = []
    for seed, paths in per_seed.items():
        rows.extend(collect(study, seed, paths))
    summary = pd.DataFrame(rows)
    atomic_write_csv(out / "study_summary.csv", summary)

    env = environment()
    seed0, paths0 = next(iter(per_seed.items()))
    lines = [f"# kdx study: {study.get('preset', 'custom')} on {study.get('dataset')}", ""]
    if study.get("notes"):
        lines += [f"> {study['notes']}", ""]
    lines += ["## Environment", "",
              md_table(pd.DataFrame([env])), "",
              f"Wall time of this invocation: {seconds / 60:.1f} min (steps finished earlier were skipped).", "",
              "## Reproduce", "", "```bash", *reproduce_commands(study, out), "```", "",
              "The effective study config is `study.json`; each step's own `config.json` reproduces that step.", ""]

    lines += ["## Teacher", ""]
    teach = summary[summary["component"] == "teacher"]
    lines.append(md_table(as_percent(teach[["seed", "name", "best_epoch", "test_top1_best", "test_top1_last"]])))

    lines += ["## Explainers", "",
              "Test top-1 of the final (stage-2, hard-routing) explainer; entropy and conflicts from `analysis/`. "
              "`norm_attention_entropy_l<l>`: mean normalised entropy of the soft subtask attention over layer l "
              "at the run's final tau (it depends on the run's length); `norm_attention_entropy_tau1_l<l>`: the same "
              "at tau 1, composed from the routing's own distribution softmax(R / 0.5), comparable across runs. "
              "Entropies in nats are in `study_summary.csv`.", ""]
    expl = summary[summary["component"] == "explainer"].dropna(axis=1, how="all")
    nats = [c for c in expl.columns if str(c).startswith("attention_entropy")]
    lines.append(md_table(as_percent(expl.drop(columns=["component", *nats]))))
    report = paths0["analysis"] / "report.md"
    if report.is_file():
        lines += ["", f"Full analysis: [{_rel(report, out)}]({_rel(report, out)}).", ""]
        sentences = [ln for ln in report.read_text().splitlines() if ln.lstrip().startswith(("- layer", "* layer", "- Layer"))]
        if sentences:
            lines += ["Findings (computed from the numbers):", "", *sentences[:12], ""]

    tree_file = paths0.get("explainer-kd", paths0[f"explainer-{study['objectives'][-1]}"]) / "tree.json"
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
                  "and its gradient conflicts; every other plot is in the analysis report.", ""]
        for p in plots:
            lines += [f"![{p.stem}]({_rel(p, out)})", ""]

    lines += ["## Students: with and without VAM", ""]
    stud = summary[summary["component"] == "student"]
    if not stud.empty:
        agg = stud.groupby("name", sort=False).agg(
            runs=("test_top1_best", "size"), best_mean=("test_top1_best", "mean"), best_std=("test_top1_best", "std"),
            last_mean=("test_top1_last", "mean"), last_std=("test_top1_last", "std")).reset_index()
        paired = stud.assign(method=stud["name"], seed=list(zip(stud["seed"], stud["student_seed"])))
        deltas = [paired_delta(paired, m, "kd", "test_top1_best") for m in agg["name"]]
        agg["best_vs_kd"] = ["-" if m == "kd" or not len(d) else format_delta(d.mean(), d.std(ddof=1))
                             for m, d in zip(agg["name"], deltas)]
        lines.append(md_table(as_percent(agg.rename(columns={"name": "method"}))))
        lines.append("best = test top-1 at the epoch with the best validation accuracy; last = final epoch; "
                     "mean over seeds, std in points (empty with one seed); best_vs_kd = the paired per-seed "
                     "difference against kd in points (mean ± std): a gap smaller than its std is seed noise.\n")
        png = paths0["students"] / "comparison.png"
        if png.is_file():
            lines += [f"![comparison]({_rel(png, out)})", ""]
    lines += ["## Steps of this invocation", "", md_table(pd.DataFrame(log), floatfmt="{:.1f}")]
    atomic_write_text(out / "study_report.md", "\n".join(lines) + "\n")
    from kdx.engine.progress import console

    console.print(f"study report: {out / 'study_report.md'}")
    return summary
