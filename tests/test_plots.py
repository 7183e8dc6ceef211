"""Figures: formats, backend neutrality, the honest comparison plot (issue 13, item 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdx.analysis import plots
from kdx.errors import KdxError

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


def summary(seeds=3, legacy=False):
    """A comparison_summary.csv: arms with their base method and paired differences against it
    (``legacy``: the older layout, differences against kd)."""
    frame = pd.DataFrame({
        "method": ["ce", "kd", "kd+vam", "kd+vam+hier"], "seeds": seeds,
        "test_top1_best_mean": [0.683, 0.701, 0.709, 0.712], "test_top1_best_std": [0.004, 0.003, 0.005, 0.004],
        "test_top1_last_mean": [0.680, 0.699, 0.705, 0.710], "test_top1_last_std": [0.005, 0.004, 0.004, 0.003]})
    if legacy:
        return frame.assign(test_top1_best_delta_vs_kd_mean=[-0.018, 0.0, 0.008, 0.011],
                            test_top1_best_delta_vs_kd_std=[0.003, 0.0, 0.004, 0.006] if seeds > 1 else [np.nan] * 4)
    return frame.assign(base=["ce", "kd", "kd", "kd"], test_top1_best_delta_vs_base_mean=[np.nan, np.nan, 0.008, 0.011],
                        test_top1_best_delta_vs_base_std=[np.nan, np.nan, 0.004, 0.006] if seeds > 1 else [np.nan] * 4)


def all_plots(d, fmt=None):
    names = [f"c{i}" for i in range(4)]
    att = np.full((4, 2), 0.5)
    groups = [[(0, [0, 1]), (1, [2, 3])], [(0, [0]), (1, [1]), (2, [2]), (3, [3])]]
    ent = pd.DataFrame({"run": ["ce", "kd"], "norm_attention_entropy_l1": [0.4, 0.6],
                        "norm_attention_entropy_l2": [0.2, 0.3]})
    mats = [np.eye(4), np.where(np.eye(4) > 0, 1.0, np.nan)]
    return [plots.attention_heatmap(att, names, "t", d / "att.png", fmt=fmt),
            plots.tree_plot(groups, names, "t", d / "tree.png", fmt=fmt),
            plots.entropy_bars(ent, 2, d / "entropy.png", fmt=fmt),
            plots.conflict_matrices(mats, names, "t", d / "conflicts.png", fmt=fmt),
            plots.comparison_plot(summary(), d / "comparison.png", title="t", fmt=fmt)]


@pytest.mark.parametrize("fmt", ["pdf", "svg"])  # png is written in both
def test_every_plot_writes_png_and_the_chosen_format(tmp_path, fmt):
    written = all_plots(tmp_path, fmt)
    assert [p.suffix for p in written] == [".png"] * 5  # the report embeds the PNG
    for p in written:
        assert p.read_bytes()[:4] == MAGIC["png"]
        vector = p.with_suffix("." + fmt)
        assert vector.is_file() and vector.read_bytes()[:len(MAGIC[fmt])] == MAGIC[fmt]
    others = {f for f in ("pdf", "svg") if f != fmt}
    assert not [p for p in tmp_path.iterdir() if p.suffix[1:] in others]


def test_module_setting_is_the_default_and_vector_output_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "PLOT_FORMAT", "png")
    plots.set_plot_format("svg")
    assert plots.PLOT_FORMAT == "svg"
    a = plots.comparison_plot(summary(), tmp_path / "a" / "c.png")
    b = plots.comparison_plot(summary(), tmp_path / "b" / "c.png")
    assert a.with_suffix(".svg").read_bytes() == b.with_suffix(".svg").read_bytes()  # no dates, fixed ids
    with pytest.raises(KdxError, match="--plot-format must be one of png, pdf, svg; got 'tiff'"):
        plots.set_plot_format("tiff")
    assert plots.PLOT_FORMAT == "svg"


def test_importing_and_plotting_leaves_the_backend_alone(tmp_path):
    """A notebook's (or the user's) backend survives: no matplotlib.use, no pyplot, no display needed."""
    code = ("import sys, matplotlib; from pathlib import Path; from kdx.analysis import plots; "
            "import pandas as pd; "
            "plots.entropy_bars(pd.DataFrame({'run': ['a'], 'norm_attention_entropy_l1': [0.5]}), 1, Path(sys.argv[1])); "
            "print(matplotlib.rcParams['backend'], 'matplotlib.pyplot' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"  # interactive, and unusable without a display
    root = str(Path(plots.__file__).resolve().parents[2])  # this checkout's kdx, not an installed one
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "e.png")], capture_output=True, text=True,
                          env=env, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["TkAgg", "False"]
    assert (tmp_path / "e.png").read_bytes()[:4] == MAGIC["png"]


def _extent(artist, renderer):
    return artist.get_window_extent(renderer)


@pytest.mark.parametrize("seeds,legacy,heights", [(3, False, [0.8, 1.1]), (1, False, [0.8, 1.1]),
                                                   (3, True, [-1.8, 0.8, 1.1])])
def test_comparison_axis_from_zero_legend_clear_and_paired_differences(seeds, legacy, heights):
    fig = plots.comparison_figure(summary(seeds, legacy), title="t")
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    ax, ax_d = fig.axes[:2]
    assert ax.get_ylim()[0] == 0.0  # bars from an honest baseline
    bars = [p for a in (ax, ax_d) for p in a.patches]
    assert len(ax.patches) == 8  # every arm, best-val and last epoch
    assert [round(p.get_height(), 6) for p in ax_d.patches] == heights  # an arm that is its own base has no bar
    assert [t.get_text().split("\n")[0] for t in ax_d.get_xticklabels()] == ["ce", "kd+vam", "kd+vam+hier"][-len(heights):]
    lo, hi = ax_d.get_ylim()
    assert lo < min(heights) and hi > max(heights) and lo == -hi  # zero in the middle
    assert not ax.get_legend() and len(fig.legends) == 1
    legend = _extent(fig.legends[0], renderer)
    for p in bars:
        assert not legend.overlaps(_extent(p, renderer)), "the legend covers a bar"
    for a in (ax, ax_d):
        assert not legend.overlaps(_extent(a, renderer)), "the legend sits on a panel"


def test_comparison_without_paired_differences_is_still_drawn(tmp_path):
    s = summary(legacy=True).query("method != 'kd'")
    fig = plots.comparison_figure(s)
    assert not fig.axes[1].axison
    assert plots.comparison_plot(s, tmp_path / "c.png").is_file()


@pytest.mark.parametrize("command", [["analyze-conflicts", "run-a"], ["pipeline", "--print-config"]])
def test_cli_plot_format_is_checked_first(tmp_path, command):
    from typer.testing import CliRunner

    from kdx.cli import app

    result = CliRunner().invoke(app, command + ["--out", str(tmp_path / "o"), "--plot-format", "tiff"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "kdx: error: --plot-format must be one of png, pdf, svg; got 'tiff'"
    assert not (tmp_path / "o").exists()


def test_train_vam_student_plot_format_choices(tmp_path):
    root = str(Path(plots.__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-m", "kdx", "train-vam-student", "--method", "ce", "--plot-format", "tiff",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdx: error:") and "'tiff' is not one of 'png', 'pdf', 'svg'" in lines[0]
    assert not (tmp_path / "o").exists()
