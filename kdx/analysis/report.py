"""report.md: what was analysed, a table per run, the plots, and comparisons computed from the numbers."""
from __future__ import annotations

import math

import pandas as pd

from kdx.analysis.attention import entropy_column

ONE_SEED = ("(relative differences of one seed's runs; no difference is claimed from one seed: "
            "`kdx pipeline --seeds` gives the paired differences over seeds and the rule for claiming one)")


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _compare(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)):
        return "n/a"
    if b == 0:
        return "equal" if a == 0 else "higher"
    return f"{(a - b) / abs(b):+.0%}"


def comparisons(summary: pd.DataFrame, layers: int) -> list[str]:
    """Sentences comparing the runs: entropy per layer and conflict rates, reference = the kd run
    (or the first run) against every other run."""
    if len(summary) < 2:
        return []
    objs = list(summary["method"] if "method" in summary else summary["objective"])  # objective: before issue 21
    ref = summary.iloc[objs.index("kd")] if "kd" in objs else summary.iloc[0]
    out = []
    for _, other in summary.iterrows():
        if other["run"] == ref["run"]:
            continue
        for tau1, at in ((False, "final tau"), (True, "tau 1")):
            for l in range(1, layers + 1):
                col = entropy_column(l, normalised=True, tau1=tau1)
                a, b = ref.get(col, math.nan), other.get(col, math.nan)
                out.append(f"layer {l}: {ref['run']} mean normalised attention entropy ({at}) {_fmt(a)} vs "
                           f"{other['run']} {_fmt(b)} ({_compare(a, b)})")
        for sig in ("objective", "ce"):
            a, b = ref.get(f"conflict_rate_{sig}", math.nan), other.get(f"conflict_rate_{sig}", math.nan)
            out.append(f"gradient conflict rate ({sig} signal): {ref['run']} {_fmt(a, True)} vs "
                       f"{other['run']} {_fmt(b, True)} ({_compare(a, b)})")
    return out


def write_report(info: dict, summary: pd.DataFrame, subtasks: pd.DataFrame, plots: dict, layers: int) -> str:
    lines = ["# analyze-conflicts report", ""]
    lines += [f"- dataset: `{info['dataset']}`, split `{info['split']}`, {info['images']} images "
              f"(seeded subset, seed {info['seed']}, the same images for every run); "
              f"gradient conflicts on {info['conflict_images']} of them",
              "- attention modes: `soft` (the run's final tau) and `hard` (argmax routing); gradients, "
              "accuracy and AUROC under each run's own routing (stage 2: hard; stage 1: soft at final tau), eval mode",
              "- entropy: of the soft subtask attention at the run's final tau (`norm_attention_entropy_l<l>`, "
              "depends on how long the run trained) and at tau 1, i.e. composed from the routing's own "
              "distribution softmax(R / 0.5) (`norm_attention_entropy_tau1_l<l>`, comparable across runs)",
              "- runs:"]
    for r in info["runs"]:
        lines.append(f"  - **{r['label']}**: `{r['path']}` (method {r['method']}, stage {r['stage']}, "
                     f"routing {r['routing']}, tau {r['tau']:.4g}){' — ' + r['note'] if r.get('note') else ''}")
    lines += ["", "## Summary", ""]
    cols = ["run", "method", "top1"] + [entropy_column(l, True) for l in range(1, layers + 1)] + \
        [entropy_column(l, True, True) for l in range(1, layers + 1)] + \
        ["conflict_rate_objective", "conflict_rate_ce", "weighted_conflict_objective", "weighted_conflict_ce"] + \
        [f"clusters_l{l}" for l in range(1, layers + 1)]
    cols = [c for c in cols if c in summary.columns]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, row in summary.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append(_fmt(v, pct=c.startswith(("top1", "accuracy", "conflict_rate"))))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    comp = comparisons(summary, layers)
    if comp:
        lines += ["", "## Comparison", "", ONE_SEED, ""]
        lines += [f"- {s}" for s in comp]
    lines += ["", "## Per run", ""]
    for r in info["runs"]:
        lab = r["label"]
        lines += [f"### {lab}", ""]
        st = subtasks[subtasks["run"] == lab]
        if len(st) <= 20:
            lines.append("| class | images | one-vs-rest acc | AUROC (logit) | class top-1 |")
            lines.append("|---|---|---|---|---|")
            for _, s in st.iterrows():
                lines.append(f"| {s['class_name']} | {s['support']} | {_fmt(s['ovr_accuracy'], True)} | "
                             f"{_fmt(s['auroc'])} | {_fmt(s['class_top1'], True)} |")
        else:
            lines.append(f"{len(st)} subtasks: mean AUROC {_fmt(float(st['auroc'].mean()))}, "
                         f"mean one-vs-rest accuracy {_fmt(float(st['ovr_accuracy'].mean()), True)} (see subtasks.csv)")
        lines.append("")
        for title, rel in plots.get(lab, []):
            lines += [f"**{title}**", "", f"![{title}]({rel})", ""]
    for title, rel in plots.get("", []):
        lines += [f"**{title}**", "", f"![{title}]({rel})", ""]
    lines += ["Column definitions: docs/analyze-conflicts.md.", ""]
    return "\n".join(lines)
