"""Figures of analyze-conflicts, train-vam-student --compare and the study report.

Formats: every figure is written as PNG (the markdown reports embed it) and, when the plot
format is ``pdf`` or ``svg``, also as that vector format beside it (for papers). The format is a
parameter of every plot function (``fmt``) whose default is the module setting
(:func:`set_plot_format`, the ``--plot-format`` flags). Vector files are reproducible (no dates).

Backend: figures are :class:`matplotlib.figure.Figure` objects saved through their canvas, never
pyplot, so kdx neither needs a display nor changes the backend of the process that imports it
(a notebook keeps its inline/widget backend; a headless CLI needs no ``matplotlib.use``).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from kdx.analysis.attention import entropy_column
from kdx.io import atomic_path
from kdx.errors import KdxError

MANY = 30  # above this many classes: no per-class tick labels
PLOT_FORMATS = ("png", "pdf", "svg")
PLOT_FORMAT = "png"  # module setting: the default of every plot function's ``fmt``
_NO_DATES = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


def check_plot_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`PLOT_FORMATS`, else a one-line KdxError."""
    if fmt not in PLOT_FORMATS:
        raise KdxError(f"--plot-format must be one of {', '.join(PLOT_FORMATS)}; got '{fmt}'")
    return fmt


def set_plot_format(fmt: str) -> None:
    """Set the module-wide default format of the figures (``png``, ``pdf`` or ``svg``)."""
    global PLOT_FORMAT
    PLOT_FORMAT = check_plot_format(fmt)


def _figure(figsize, **kw) -> Figure:
    return Figure(figsize=figsize, **kw)


def _save(fig: Figure, path: Path, fmt: str | None = None, tight: bool = True, **savekw) -> Path:
    """Write ``path`` as PNG and, for ``fmt`` pdf/svg, ``path`` with that suffix too; return the PNG path."""
    fmt = check_plot_format(fmt or PLOT_FORMAT)
    if tight and fig.get_layout_engine() is None:
        fig.tight_layout()
    png = Path(path).with_suffix(".png")
    for kind in dict.fromkeys(("png", fmt)):
        with atomic_path(png.with_suffix("." + kind)) as tmp, matplotlib.rc_context({"svg.hashsalt": "kdx"}):
            fig.savefig(tmp, dpi=110, format=kind, metadata=_NO_DATES[kind], **savekw)
    return png


def _class_ticks(ax, names, axis="y"):
    n = len(names)
    if n > MANY:
        step = max(1, n // 10)
        ticks = list(range(0, n, step))
        (ax.set_yticks if axis == "y" else ax.set_xticks)(ticks)
        (ax.set_yticklabels if axis == "y" else ax.set_xticklabels)([str(t) for t in ticks], fontsize=7)
    else:
        (ax.set_yticks if axis == "y" else ax.set_xticks)(range(n))
        if axis == "y":
            ax.set_yticklabels(names, fontsize=8)
        else:
            ax.set_xticklabels(names, fontsize=8, rotation=60, ha="right")


def attention_heatmap(att: np.ndarray, names: list[str], title: str, path: Path, fmt: str | None = None) -> Path:
    """Subtask (rows, class names) x expert (columns) attention, colour bar 0..1."""
    c, e = att.shape
    fig = _figure((max(5.2, 1.6 + 0.45 * e), max(3.2, min(14.0, 0.8 + 0.28 * c))))
    ax = fig.subplots()
    im = ax.imshow(att, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(e))
    ax.set_xticklabels([str(i) for i in range(e)], fontsize=8)
    _class_ticks(ax, names, "y")
    if c <= MANY and e <= 16:
        for i in range(c):
            for j in range(e):
                ax.text(j, i, f"{att[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if att[i, j] < 0.6 else "black")
    ax.set_xlabel("expert")
    ax.set_ylabel("subtask (class)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="attention weight")
    return _save(fig, path, fmt)


def tree_plot(groups_per_layer, names: list[str], title: str, path: Path, fmt: str | None = None) -> Path:
    """The hard class tree: root -> experts of layer 1 -> ... -> class names (leaves).

    ``groups_per_layer[l]`` = [(expert, classes)]; the parent of an expert of layer l+1 is the
    expert of layer l its classes belong to."""
    n_layers, c = len(groups_per_layer), len(names)
    owner = [{cls: e for e, members in groups for cls in members} for groups in groups_per_layer]
    # leaf order: sort classes by their path so subtrees are contiguous
    order = sorted(range(c), key=lambda k: tuple(owner[l][k] for l in range(n_layers)) + (k,))
    x_leaf = {k: i for i, k in enumerate(order)}
    depth = n_layers + 1
    fig = _figure((max(6.0, min(24.0, 0.55 * c + 2)), 1.3 * depth + (2.0 if c <= MANY else 0.8)))
    ax = fig.subplots()

    def xpos(layer, e):  # mean x of the leaves under expert e of layer (0-based)
        return float(np.mean([x_leaf[k] for k in range(c) if owner[layer][k] == e]))

    root = (float(np.mean(list(x_leaf.values()))), depth)
    for e, _ in groups_per_layer[0]:
        ax.plot([root[0], xpos(0, e)], [depth, depth - 1], color="0.5", lw=1)
    for l in range(n_layers):
        yl = depth - 1 - l
        for e, members in groups_per_layer[l]:
            xe = xpos(l, e)
            if l + 1 < n_layers:
                kids = sorted({owner[l + 1][k] for k in members})
                for ch in kids:
                    ax.plot([xe, xpos(l + 1, ch)], [yl, yl - 1], color="0.5", lw=1)
            else:
                for k in members:
                    ax.plot([xe, x_leaf[k]], [yl, 0], color="0.7", lw=0.8)
            ax.scatter([xe], [yl], s=120 if c <= MANY else 30, color=f"C{l}", zorder=3)
            if c <= 3 * MANY:
                ax.annotate(f"L{l + 1}.{e}", (xe, yl), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.scatter([root[0]], [depth], s=140, color="black", zorder=3)
    ax.annotate("root", root, textcoords="offset points", xytext=(6, 4), fontsize=8)
    leaf_x = [x_leaf[k] for k in order]
    ax.scatter(leaf_x, [0] * c, s=20 if c <= MANY else 4, color="0.3", zorder=3)
    if c <= MANY:
        for k in order:
            ax.text(x_leaf[k], -0.15, names[k], rotation=60, ha="right", va="top", fontsize=8)
        ax.set_ylim(-0.9, depth + 0.5)
    else:
        ax.set_ylim(-0.5, depth + 0.5)
        ax.set_xlabel(f"{c} classes (leaves, ordered by path)")
    ax.set_yticks(range(depth + 1))
    ax.set_yticklabels(["classes"] + [f"layer {n_layers - i}" for i in range(n_layers)] + ["root"], fontsize=8)
    ax.set_xticks([])
    for s in ("top", "right", "bottom", "left"):
        ax.spines[s].set_visible(False)
    ax.set_title(title, fontsize=10)
    return _save(fig, path, fmt)


def entropy_bars(summary: pd.DataFrame, layers: int, path: Path, fmt: str | None = None) -> Path:
    """Mean normalised soft-attention entropy per layer, one bar per run (grouped by layer)."""
    runs = list(summary["run"])
    fig = _figure((max(5.0, 1.2 + 1.1 * layers * max(1, len(runs)) * 0.5), 3.8))
    ax = fig.subplots()
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        row = summary[summary["run"] == run].iloc[0]
        vals = [row.get(entropy_column(l, normalised=True), np.nan) for l in range(1, layers + 1)]
        xs = np.arange(1, layers + 1) + (i - (len(runs) - 1) / 2) * width
        bars = ax.bar(xs, vals, width=width, label=run, color=f"C{i}")
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(1, layers + 1))
    ax.set_xticklabels([f"layer {l}" for l in range(1, layers + 1)])
    ax.set_ylim(0, 1.25)  # head-room above the value labels for the legend
    ax.set_ylabel("mean normalised entropy\n(soft attention, final tau)")
    ax.set_title("Subtask attention entropy per layer\n(0 = one expert, 1 = uniform)", fontsize=10)  # fits 5 in
    ax.legend(fontsize=8, loc="upper center", ncol=len(runs), frameon=False)
    return _save(fig, path, fmt)


def conflict_matrices(mats: list[np.ndarray], names: list[str], title: str, path: Path,
                      fmt: str | None = None) -> Path:
    """Per layer a subtask x subtask matrix of mean cosine over shared experts; blank = not shared."""
    n = len(mats)
    c = len(names)
    side = 3.2 if c <= MANY else 4.0
    fig = _figure((side * n + 1.5, side + (1.2 if c <= MANY else 0.4)), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    norm = TwoSlopeNorm(vmin=-1.0, vcenter=0.0, vmax=1.0)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
    im = None
    for l, (ax, mat) in enumerate(zip(axes[0], mats), start=1):
        im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, norm=norm, interpolation="nearest")
        _class_ticks(ax, names, "x")
        if l == 1:
            _class_ticks(ax, names, "y")
        else:
            ax.set_yticks([])
        ax.set_title(f"layer {l}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=list(axes[0]), label="cosine (grey: no shared expert)", shrink=0.85)
    return _save(fig, path, fmt, tight=False, bbox_inches="tight")


def comparison_plot(summary: pd.DataFrame, path: Path, title: str = "", baseline: str = "kd",
                    fmt: str | None = None) -> Path:
    """Write :func:`comparison_figure` to ``path`` (PNG, and pdf/svg beside it per ``fmt``)."""
    return _save(comparison_figure(summary, title, baseline), path, fmt)


def comparison_figure(summary: pd.DataFrame, title: str = "", baseline: str = "kd") -> Figure:
    """train-vam-student --compare: two honest panels from ``comparison_summary.csv``.

    Left: test top-1 (%) per method at the best-validation epoch and at the last epoch, bars
    from 0 (no truncated axis), mean ± std over seeds. Right: the paired per-seed difference of
    best-val-epoch top-1 against the arm's method alone (:func:`paired_differences`; ``baseline``
    in older summaries) in points, mean ± std over seeds, around a zero line: the panel where a
    gain is told from seed noise. The legend sits below the panels, clear of every bar."""
    methods = [str(m) for m in summary["method"]]
    fig = _figure((max(8.0, 1.9 * len(methods) + 4.0), 4.6), layout="constrained")
    ax, ax_d = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1.0]})
    x = np.arange(len(methods))
    width = 0.38
    for off, col, label, color in ((-width / 2, "test_top1_best", "best-val epoch", "C0"),
                                   (width / 2, "test_top1_last", "last epoch", "C7")):
        means = 100 * pd.to_numeric(summary[f"{col}_mean"], errors="coerce").to_numpy(float)
        stds = 100 * pd.to_numeric(summary[f"{col}_std"], errors="coerce").fillna(0.0).to_numpy(float)
        bars = ax.bar(x + off, means, width, yerr=stds, capsize=3, label=label, color=color,
                      error_kw={"elinewidth": 0.8})
        ax.bar_label(bars, labels=[f"{m:.1f}" if np.isfinite(m) else "" for m in means], fontsize=7, padding=2)
    ax.set_ylim(0, 110)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xticks(x, methods, fontsize=8)
    ax.set_ylabel("test top-1 (%), mean ± std over seeds")
    ax.set_title("accuracy (axis from 0)", fontsize=9)
    _delta_panel(ax_d, summary, baseline)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def paired_differences(summary: pd.DataFrame, baseline: str = "kd") -> tuple[list[tuple[str, float, float]], str]:
    """``([(label, mean, std)], against)`` in points: each arm's paired per-seed difference of
    best-val-epoch top-1 against its method alone (columns ``base`` and
    ``test_top1_best_delta_vs_base_{mean,std}``), or, in a summary without ``base``, against
    ``baseline`` (``test_top1_best_delta_vs_<baseline>_{mean,std}``). Arms that are their own
    base are left out; an empty list when the summary has no paired differences."""
    methods = summary["method"].astype(str)
    if "base" in summary and "test_top1_best_delta_vs_base_mean" in summary:
        col, bases, against = "test_top1_best_delta_vs_base", summary["base"].astype(str), "the method alone"
    elif f"test_top1_best_delta_vs_{baseline}_mean" in summary and (methods == baseline).any():
        col, bases, against = f"test_top1_best_delta_vs_{baseline}", pd.Series(baseline, index=summary.index), baseline
    else:
        return [], ""
    keep = methods != bases
    mean = 100 * pd.to_numeric(summary.loc[keep, f"{col}_mean"], errors="coerce").to_numpy(float)
    std = 100 * pd.to_numeric(summary.loc[keep, f"{col}_std"], errors="coerce").to_numpy(float)
    labels = [f"{m}\nvs {b}" for m, b in zip(methods[keep], bases[keep])]
    return list(zip(labels, mean, std)), against


def _delta_panel(ax, summary: pd.DataFrame, baseline: str) -> None:
    """Bars of the paired differences (points) around a zero line, error bars = std over seeds."""
    rows, against = paired_differences(summary, baseline)
    if not rows:
        ax.text(0.5, 0.5, "no paired differences in this comparison", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels, mean, std = zip(*rows)
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    err = np.nan_to_num(std, nan=0.0)
    xs = np.arange(len(labels))
    colors = ["C2" if m > 0 else "C3" for m in np.nan_to_num(mean)]
    bars = ax.bar(xs, np.nan_to_num(mean), 0.55, yerr=err, capsize=4, color=colors, error_kw={"elinewidth": 0.8})
    text = [("" if not np.isfinite(m) else f"{m:+.2f}" + ("" if not np.isfinite(s) else f"\n±{s:.2f}"))
            for m, s in zip(mean, std)]
    ax.bar_label(bars, labels=text, fontsize=7, padding=2)
    ax.axhline(0.0, color="0.25", lw=0.8)
    lim = max(0.5, float(np.nan_to_num(np.abs(mean) + err).max()) * 1.6)
    ax.set_ylim(-lim, lim)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel(f"difference vs {against} (points)")
    ax.set_title("paired per-seed difference (best-val epoch)", fontsize=9)


def methods_plot(table: pd.DataFrame, path: Path, fmt: str | None = None) -> Path:
    """analyze-conflicts over explainers of several methods: :func:`methods_figure` to ``path``."""
    return _save(methods_figure(table), path, fmt)


def methods_figure(table: pd.DataFrame) -> Figure:
    """Two rows of panels, the methods on the x axis of each (``methods.csv``, mean ± std over
    seeds). Top: test accuracy (axis from 0), attention entropy per layer at tau 1 (comparable
    across runs) and at the runs' final tau, shared class pairs. Bottom: conflict rate, conflict
    strength, and the tree distance (adjusted Rand index) to kd's and to ce's tree per layer, with
    each method's agreement between its own seeds as a black tick over its kd bar (where
    methods.csv has it). A panel whose columns the table lacks is left out. A reader sees at a
    glance which method moves which quantity; the paired differences are in methods_paired.csv
    and the report."""
    methods = [str(m) for m in table["method"]]
    layers = sorted(int(c.split("_l")[-1].split("_")[0]) for c in table.columns
                    if c.startswith("attention_entropy_tau1_l") and c.endswith("_mean"))
    # the checkpoint's test accuracy where the metadata has it, else that on the analysed images
    top1 = next((c for c in ("test_top1", "top1") if f"{c}_mean" in table), "accuracy")
    where = "test" if top1 == "test_top1" else "analysed images"
    per_layer = lambda stem: [f"{stem}{layer}" for layer in layers]  # noqa: E731
    candidates = [
        [("accuracy", [top1], f"top-1 on {where} (%)", 100.0),
         ("attention entropy at tau 1", per_layer("attention_entropy_tau1_l"), "nats", 1.0),
         ("attention entropy at the final tau", per_layer("attention_entropy_l"), "nats", 1.0),
         ("sharing", ["shared_pairs_objective"], "shared (expert, class pair) rows", 1.0)],
        [("conflict rate", ["conflict_rate_objective"], "share of shared pairs in conflict", 1.0),
         ("conflict strength", ["weighted_conflict_objective"], "attention-weighted conflict", 1.0),
         ("tree ARI to kd", per_layer("tree_ari_kd_l"), "adjusted Rand index (1 = same tree)", 1.0),
         ("tree ARI to ce", per_layer("tree_ari_ce_l"), "adjusted Rand index (1 = same tree)", 1.0)]]
    rows = [[p for p in row if p[1] and all(f"{c}_mean" in table for c in p[1])] for row in candidates]
    rows = [row for row in rows if row]
    ncols = max(len(row) for row in rows)
    fig = _figure((max(10.0, 0.33 * len(methods) * ncols + 2.0), 3.9 * len(rows)), layout="constrained")
    grid = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    x = np.arange(len(methods))
    for r, row in enumerate(rows):
        for ax in grid[r, len(row):]:
            ax.set_axis_off()
        for ax, (title, cols, ylabel, scale) in zip(grid[r], row):
            width = 0.8 / len(cols)
            for i, col in enumerate(cols):
                mean = scale * pd.to_numeric(table[f"{col}_mean"], errors="coerce").to_numpy(float)
                std = scale * pd.to_numeric(table[f"{col}_std"], errors="coerce").fillna(0.0).to_numpy(float)
                label = f"layer {col.rsplit('_l', 1)[-1]}" if len(cols) > 1 else None
                ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(mean), width, yerr=std, capsize=2, label=label,
                       color=f"C{i}", error_kw={"elinewidth": 0.7})
            if title == "accuracy":
                ax.set_ylim(0, 100)
            if title == "tree ARI to kd":  # the floor: each method's ARI between its own seeds
                for i, col in enumerate(cols):
                    seeds = f"tree_ari_seeds_l{col.rsplit('_l', 1)[-1]}_mean"
                    if seeds in table:
                        ax.plot(x - 0.4 + width * (i + 0.5),
                                pd.to_numeric(table[seeds], errors="coerce").to_numpy(float),
                                "k_", ms=9, mew=1.6, label="own seeds" if i == 0 else None)
            ax.axhline(0.0, color="0.3", lw=0.6)
            ax.set_xticks(x, methods, fontsize=8, rotation=45 if len(methods) > 6 else 0)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            if len(cols) > 1 or ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, frameon=False)
    ticks = "; black ticks: ARI between a method's own seeds" if any(c.startswith("tree_ari_seeds_") for c in table) else ""
    fig.suptitle(f"explainers by KD method (mean ± std over seeds{ticks})", fontsize=10)
    return fig
