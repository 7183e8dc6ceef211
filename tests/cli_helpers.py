"""Helpers of the CLI tests: run ``kdx.cli.main`` in-process, and check a one-line error."""

from __future__ import annotations

import re

import pytest

from kdx.cli import main


def run_main(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``kdx ARGS``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def one_line_error(code, err, pattern):
    """Exit 2 and exactly one ``kdx: error: ...`` line matching ``pattern``, no traceback."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kdx: error: ") and re.search(pattern, lines[0]), lines[0]
