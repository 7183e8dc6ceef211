"""One name per concept (issue 21, item 5): the decisions that are not a rename are held here."""

from typer.testing import CliRunner

from kdx import commandconfig as cc
from kdx.cli import app


def test_split_defaults_differ_on_purpose_and_say_why():
    """evaluate reports test accuracy; analyze-conflicts reads its tree off val (it guides students)."""
    from kdx.options import field_options

    split = {cls.command: next(o for o in field_options(cls) if o.name == "split")
             for cls in (cc.EvaluateOptions, cc.AnalyzeConflictsOptions)}
    assert split["evaluate"].default == "test" and split["analyze-conflicts"].default == "val"
    assert "analyze-conflicts defaults to it" in split["evaluate"].help
    assert "not read off the test set" in split["analyze-conflicts"].help
    result = CliRunner().invoke(app, ["analyze-conflicts", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert "not read off the test set" in " ".join(result.output.replace("│", " ").split())


def test_entropy_title_fits_with_one_run(tmp_path, monkeypatch):
    """issue 21 item 5: with one run the figure is 5 inches wide; its title was cut ('1 = unifor')."""
    import pandas as pd

    from kdx.analysis import plots

    figures = []
    real_save = plots._save

    def keep(fig, path, fmt=None, **kw):
        figures.append(fig)
        return real_save(fig, path, fmt, **kw)

    monkeypatch.setattr(plots, "_save", keep)
    summary = pd.DataFrame([{"run": "kd", **{f"norm_attention_entropy_l{l}": 0.5 for l in (1, 2, 3)}}])
    plots.entropy_bars(summary, 3, tmp_path / "entropy.png")
    (fig,) = figures
    fig.canvas.draw()
    title = fig.axes[0].title
    box, width = title.get_window_extent(), fig.bbox.width
    assert "1 = uniform)" in title.get_text() and box.x0 >= 0 and box.x1 <= width, (box, width)


def test_summary_readers_take_the_new_and_the_old_names():
    """summary.csv says method/top1 now; summaries written before (objective/accuracy) still read."""
    import pandas as pd

    from kdx.analysis.methods import quantities
    from kdx.analysis.report import comparisons

    new = pd.DataFrame([{"run": "kd", "method": "kd", "top1": 0.8, "norm_attention_entropy_l1": 0.5},
                        {"run": "ce", "method": "ce", "top1": 0.7, "norm_attention_entropy_l1": 0.6}])
    old = new.rename(columns={"method": "objective", "top1": "accuracy"})
    assert quantities(new)[0] == "top1" and quantities(old)[0] == "accuracy"
    assert comparisons(new, 1) == comparisons(old, 1) != []
