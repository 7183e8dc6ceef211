"""The live terminal line of analyze-conflicts (issue 13 item 11): run, layer and chunk shown."""

from io import StringIO

from rich.console import Console

from kdx.commands.analyze_conflicts import RunProgress


def _terminal():
    buf = StringIO()
    return Console(force_terminal=True, file=buf, width=120), buf


def test_live_line_shows_run_layer_and_chunk():
    console, buf = _terminal()
    p = RunProgress(2, console=console)
    assert p.live
    p.start(1, "kd-run")
    p.update("batch 1/2, chunk 4/7, layer 2")  # the format of kdx.analysis.conflicts
    p._bar.refresh()
    text = buf.getvalue()
    p.close()
    assert "run 1/2 'kd-run'" in text
    assert "layer 2" in text and "chunk 4/7" in text


def test_done_line_and_quiet():
    console, buf = _terminal()
    p = RunProgress(1, console=console)
    p.start(1, "ce")
    p.done(1, "ce", 1.25, 0.5)
    p.close()
    assert "run 1/1 'ce' done in 1.2 s (top-1 50.0%)" in buf.getvalue() or "done in 1.2" in buf.getvalue()
    console, buf = _terminal()
    q = RunProgress(1, console=console, quiet=True)
    q.start(1, "ce")
    q.done(1, "ce", 1.0, 0.5)
    q.close()
    assert not q.live and "ce" not in buf.getvalue()
