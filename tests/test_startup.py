"""Start-up of the command line (issue 21, item 1): nothing imports torch before a command runs.

``kdx --version``, ``kdx --help``, the help of the commands that train nothing and shell completion
of command names build no training command; the timing itself is benchmarks/cli_startup.py's (a
ratio, not an assertion here).
"""

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from kdx import commandconfig as cc
from kdx.cli import COMMANDS, app

PROBE = """
import sys
from kdx.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "numpy", "pandas", "matplotlib", "safetensors") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def _heavy_modules(args: list[str], env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY="))
    return line[len("HEAVY="):]


def test_import_kdx_cli_does_not_import_torch():
    code = "import sys, kdx.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("args", [["--version"], ["--help"], [], ["analyze-conflicts", "--help"],
                                  ["evaluate", "--help"], ["info", "--help"], ["pipeline", "--help"],
                                  ["train-teacher", "--help"]])
def test_help_and_version_import_no_torch(args):
    assert _heavy_modules(args) == ""


def test_completion_of_command_names_imports_no_torch():
    env = {"_KDX_COMPLETE": "complete_bash", "COMP_WORDS": "kdx tr", "COMP_CWORD": "1"}
    assert _heavy_modules([], env) == ""


def test_completion_of_a_command_flag_still_works():
    env = {**os.environ, "_KDX_COMPLETE": "complete_bash", "COMP_WORDS": "kdx evaluate --sp", "COMP_CWORD": "2"}
    code = "from kdx.cli import main\nmain([])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split() == ["--split"], out.stderr


def test_top_level_help_lists_every_command_with_its_help():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    for name, entry in COMMANDS.items():
        first = entry.help.split("\n")[0][:40]
        line = next((ln for ln in result.output.splitlines() if ln.startswith(f"│ {name} ")), None)
        assert line is not None and first in line, (name, line)


def test_the_group_builds_a_command_when_it_is_looked_up():
    group = typer.main.get_command(app)
    assert "evaluate" in group.commands and "nope" not in group.commands
    assert {p.name for p in group.commands["evaluate"].params} >= {"checkpoint", "split", "device"}
    assert list(group.commands) == list(COMMANDS)


def test_routing_modes_are_the_models():
    """commandconfig keeps its own copy (importing kdx.models.routed loads torch)."""
    from kdx.models.routed.routing import MODES

    assert cc.ROUTING_MODES == MODES


@pytest.mark.parametrize("command", [None, "train-teacher", "train-vam-student", "evaluate", "info", "analyze-conflicts",
                                     "pipeline", "models"])
def test_help_metavars_are_one_style(command):
    """issue 21 item 5: values show ``INT``/``N``/``<a|b>``; flags (no value) show no ``<bool>``; no ``<str>``."""
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "<str>" not in result.output and "TEXT" not in result.output
