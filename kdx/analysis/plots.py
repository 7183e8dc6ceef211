"""Figures of analyze-conflicts (matplotlib, Agg backend, PNG, written atomically)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from kdx.analysis.attention import entropy_column  # noqa: E402
from kdx.engine.io import atomic_path  # noqa: E402

MANY = 30  # above this many classes: no per-class tick labels


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


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


def attention_heatmap(att: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """Subtask (rows, class names) x expert (columns) attention, colour bar 0..1."""
    c, e = att.shape
    fig, ax = plt.subplots(figsize=(max(5.2, 1.6 + 0.45 * e), max(3.2, min(14.0, 0.8 + 0.28 * c))))
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
    return _save(fig, path)


def tree_plot(groups_per_layer, names: list[str], title: str, path: Path) -> Path:
    """The hard class tree: root -> experts of layer 1 -> ... -> class names (leaves).

    ``groups_per_layer[l]`` = [(expert, classes)]; the parent of an expert of layer l+1 is the
    expert of layer l its classes belong to."""
    n_layers, c = len(groups_per_layer), len(names)
    owner = [{cls: e for e, members in groups for cls in members} for groups in groups_per_layer]
    # leaf order: sort classes by their path so subtrees are contiguous
    order = sorted(range(c), key=lambda k: tuple(owner[l][k] for l in range(n_layers)) + (k,))
    x_leaf = {k: i for i, k in enumerate(order)}
    depth = n_layers + 1
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.55 * c + 2)), 1.3 * depth + (2.0 if c <= MANY else 0.8)))

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
    return _save(fig, path)


def entropy_bars(summary: pd.DataFrame, layers: int, path: Path) -> Path:
    """Mean normalised soft-attention entropy per layer, one bar per run (grouped by layer)."""
    runs = list(summary["run"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 1.1 * layers * max(1, len(runs)) * 0.5), 3.8))
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
    ax.set_title("Subtask attention entropy per layer (0 = one expert, 1 = uniform)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=len(runs), frameon=False)
    return _save(fig, path)


def conflict_matrices(mats: list[np.ndarray], names: list[str], title: str, path: Path) -> Path:
    """Per layer a subtask x subtask matrix of mean cosine over shared experts; blank = not shared."""
    n = len(mats)
    c = len(names)
    side = 3.2 if c <= MANY else 4.0
    fig, axes = plt.subplots(1, n, figsize=(side * n + 1.5, side + (1.2 if c <= MANY else 0.4)), squeeze=False,
                             layout="constrained")
    norm = TwoSlopeNorm(vmin=-1.0, vcenter=0.0, vmax=1.0)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
