"""The live terminal line of analyze-conflicts (issue 13 item 11): run, layer and chunk shown."""

import re
from io import StringIO

from rich.console import Console

from kdx.commands.analyze_conflicts import RunProgress


def _terminal():
    buf = StringIO()
    return Console(force_terminal=True, file=buf, width=120), buf


def _lines(text: str) -> list[str]:
    """What a terminal shows: escape sequences removed, split at carriage returns and newlines."""
    return re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))


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
    line = "analyze-conflicts: run 1/1 'ce' done in 1.3 s (top-1 50.0%)"
    console, buf = _terminal()
    p = RunProgress(1, console=console)
    p.start(1, "ce")
    p.done(1, "ce", 1.31, 0.5)
    p.close()
    assert line in _lines(buf.getvalue())  # a line of its own, above the live one
    # piped (not a terminal): exactly one plain line per finished run, nothing else
    plain = StringIO()
    q = RunProgress(1, console=Console(force_terminal=False, file=plain, width=40))
    assert not q.live
    q.start(1, "ce")
    q.update("batch 1/2, chunk 4/7, layer 2")
    q.done(1, "ce", 1.31, 0.5)
    q.close()
    assert plain.getvalue() == line + "\n"  # soft-wrapped: not broken at the console width
    console, buf = _terminal()
    q = RunProgress(1, console=console, quiet=True)
    q.start(1, "ce")
    q.done(1, "ce", 1.0, 0.5)
    q.close()
    assert not q.live and buf.getvalue() == ""
