"""Docs that are tested (issue 21, item 4): every fenced Python block of README.md and docs/*.md runs
here, and every ``kdx ...`` line of their other fenced blocks parses against the CLI (command,
flags, arguments, choices; nothing runs). A block that cannot run here is marked on the line before
its fence with ``<!-- docs-test: skip (the reason) -->``; the reason must be given.

Python blocks run in a folder holding ``runs/teacher`` (a one-epoch teacher), each in a fresh
namespace; the method registry is restored after each (docs/extending.md registers a method).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")


def blocks() -> list[tuple[str, int, str, str, str | None]]:
    """(file, line, language, body, skip reason) of every fenced block."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = SKIP.search(before)
            found.append((path.relative_to(ROOT).as_posix(), line, m.group(1).strip(), m.group(2),
                          skip.group("reason").strip() if skip else None))
    return found


PYTHON = [b for b in blocks() if b[2].startswith("python")]
SHELL = [b for b in blocks() if not b[2].startswith("python")]


def kdx_lines(body: str) -> list[list[str]]:
    """The argument lists of the ``kdx ...`` commands of a shell block (``$ `` prompts, ``\\``
    continuations, comments, ``VAR=value`` lines of the block and ``torchrun ... -m kdx`` handled)."""
    variables, commands = {}, []
    for raw in body.replace("\\\n", " ").splitlines():
        line = raw.strip().removeprefix("$ ")
        assign = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line)
        if assign:
            variables[assign.group(1)] = " ".join(shlex.split(assign.group(2), comments=True))
            continue
        line = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for stop in ("|", "&&", ";", ">", "2>", "2>&1"):
            if stop in words:
                words = words[:words.index(stop)]
        if words[:1] == ["kdx"]:
            commands.append(words[1:])
        elif "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["kdx"]:
            commands.append(words[words.index("-m") + 2:])
    return commands


def parse(args: list[str]) -> None:
    """Parse ``kdx ARGS`` as the CLI would, without running anything (a usage error raises)."""
    from kdx.cli import app

    group = typer.main.get_command(app)
    with group.make_context("kdx", list(args), resilient_parsing=False) as ctx:
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return
        name, cmd, sub = group.resolve_command(ctx, rest)
        assert cmd is not None, f"no command {rest[0]}"
        cmd.make_context(name, sub, parent=ctx).close()


def is_synopsis(args: list[str]) -> bool:
    """``kdx analyze-conflicts RUN [RUN ...] --out DIR [--split val|test]``: a usage line, not a command."""
    return any(a.startswith("[") or a.endswith("]") for a in args)


def check_synopsis(args: list[str]) -> None:
    """Every ``--flag`` a usage line names is a flag of its command."""
    from kdx.cli import app

    cmd = typer.main.get_command(app).commands[args[0]]
    known = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
    for flag in re.findall(r"--[a-z][a-z0-9-]*", " ".join(args[1:])):
        assert flag in known, f"kdx {args[0]} has no {flag}"


def test_every_block_is_found_and_skips_give_reasons():
    assert len(PYTHON) >= 6 and len(SHELL) >= 10
    assert all(b[4] is None or len(b[4]) > 5 for b in blocks())


@pytest.mark.parametrize("where, body, skip", [(f"{b[0]}:{b[1]}", b[3], b[4]) for b in SHELL],
                         ids=[f"{b[0]}:{b[1]}" for b in SHELL])
def test_every_kdx_line_parses(where, body, skip):
    if skip:
        pytest.skip(skip)
    for args in kdx_lines(body):
        if "--no-vam" in args:
            pytest.fail(f"{where}: kdx {' '.join(args)}: --no-vam is gone (use --vam off)")
        try:
            check_synopsis(args) if is_synopsis(args) else parse(args)
        except (typer.Exit, SystemExit):
            pass  # --help, --version: parsed and done
        except Exception as exc:  # click's UsageError and friends
            pytest.fail(f"{where}: kdx {' '.join(args)}: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def docs_cwd(tmp_path_factory):
    """A folder with ``runs/teacher``: the run the docs' snippets load."""
    from typer.testing import CliRunner

    from kdx.cli import app

    root = tmp_path_factory.mktemp("docs")
    r = CliRunner().invoke(app, ["train-teacher", "--arch", "resnet8", "--epochs", "1", "--max-train-samples", "256",
                                 "--batch-size", "64", "--device", "cpu", "--quiet", "--out", str(root / "runs/teacher")])
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.parametrize("where, body, skip", [(f"{b[0]}:{b[1]}", b[3], b[4]) for b in PYTHON],
                         ids=[f"{b[0]}:{b[1]}" for b in PYTHON])
def test_every_python_block_runs(where, body, skip, docs_cwd, monkeypatch):
    if skip:
        pytest.skip(skip)
    from kdx.distill.methods import base

    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))  # a block may register a method
    monkeypatch.chdir(docs_cwd)
    monkeypatch.setenv("KDX_DOCS_TEST", "1")
    code = compile(body, where, "exec")
    exec(code, {"__name__": "__docs__"})  # noqa: S102  (the docs' own code)
    assert os.getcwd() == str(docs_cwd)


def test_kdx_lines_helper():
    body = 'D="--dataset fashion-mnist --data-root ~/d"\n$ kdx train-teacher $D \\\n  --out x  # c\nkdx info r | head\n'
    assert kdx_lines(body) == [["train-teacher", "--dataset", "fashion-mnist", "--data-root", "~/d", "--out", "x"],
                               ["info", "r"]]
    assert kdx_lines("torchrun --nproc_per_node 4 -m kdx evaluate r") == [["evaluate", "r"]]


def test_parse_refuses_what_the_cli_refuses():
    parse(["train-teacher", "--arch", "resnet20", "--schedule", "cosine", "--out", "x"])
    for bad in (["train-teacher", "--bogus"], ["train-teacher", "--schedule", "cosin"], ["nope"], ["info"]):
        with pytest.raises(Exception) as err:
            parse(bad)
        assert not isinstance(err.value, AssertionError) or bad == ["nope"]
    with pytest.raises(AssertionError, match="no --bogus"):
        check_synopsis(["analyze-conflicts", "RUN", "[--bogus", "N]"])


def test_readme_lists_every_pipeline_preset():
    from kdx.commands.study import PIPELINE_PRESETS

    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if "`kdx pipeline`" in ln and "presets" in ln)
    listed = re.search(r"\(presets ([^)]*)\)", line).group(1).split(", ")
    assert listed == list(PIPELINE_PRESETS)
