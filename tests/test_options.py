"""Option declarations: one declaration drives flags, help, config files and validation;
one-line usage errors; methods from a separately installed package (entry points)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli_helpers import one_line_error, run_main  # tests/ is on sys.path

from kdx.cli import app
from kdx.config import COMMANDS, PRESETS, build_config, config_class, read_config_file
from kdx.errors import KdxError
from kdx.options import coerce, field_options, show_default

REPO = Path(__file__).resolve().parents[1]
TINY = ["--max-train-samples", "200", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "-q"]




@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_declared_default(command):
    """Walk the rendered --help of each training command: every option's shown default is the declaration's."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for opt in [o for o in field_options(config_class(command)) if o.cli]:
        line = next((ln for ln in lines if re.search(rf"^\s*\S\s+{re.escape(opt.flag)}(\s|/|,)", ln)), None)
        assert line is not None, f"{opt.flag} missing from {command} --help"
        shown = re.search(r"\[default: ([^;\]]*)", line)
        assert shown and shown.group(1).strip() == show_default(opt), (opt.name, line)
        for name, values in PRESETS[command].items():
            if opt.name in values and values[opt.name] != opt.default:
                expect = show_default(opt.replace(default=coerce(opt, values[opt.name])))
                assert f"{name}: {expect}" in line, (opt.name, name, line)


def test_every_option_has_help_and_panels_are_on():
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        for p in sub.params:
            if getattr(p, "help", None) is None and p.name != "help":
                pytest.fail(f"kdx {name} {p.opts}: no help")
    result = CliRunner().invoke(app, ["train-vam-student", "--help"], env={"COLUMNS": "200"})
    for panel in ("Run", "Data", "Optimisation", "Method", "VAM", "Hierarchy", "Compare"):
        assert f" {panel} " in result.output
    assert "list[" not in result.output and "<list" not in result.output


PYTHON_TYPE_LEAK = re.compile(r"list\[|List\[|Optional\[|typing\.|NoneType|<class |\{[a-z_]+\}(\.\.\.)?|\bPath\]")


@pytest.mark.parametrize("command", [None, *typer.main.get_command(app).commands])
def test_no_python_type_leaks_in_any_help(command):
    """Every command's rendered --help (not only the training ones): no Python type or parameter
    name (``<list[Path]>``, ``{runs}...``, ``List[...]``) in the usage line or the panels."""
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    leaks = [ln.strip() for ln in result.output.splitlines() if PYTHON_TYPE_LEAK.search(ln)]
    assert not leaks, leaks
    usage = next(ln for ln in result.output.splitlines() if "Usage:" in ln)
    assert "{" not in usage, usage


def test_invalid_choice_lists_the_valid_ones(capsys, tmp_path):
    code, _, err = run_main(capsys, "train-teacher", "--schedule", "cosin", "--out", tmp_path / "x")
    one_line_error(code, err, r"cosin.*multistep.*cosine")
    assert not (tmp_path / "x").exists()
    code, _, err = run_main(capsys, "evaluate", tmp_path, "--split", "tset")
    one_line_error(code, err, r"tset")


@pytest.mark.parametrize("args, pattern", [
    (["--epochs", "abc"], r"--epochs must be an integer; got 'abc'"),
    (["--momentum", "nan"], r"--momentum must be a finite number"),
    (["--gamma", "nan"], r"--gamma must be a finite number"),
    (["--seed", str(2**70)], r"--seed must be"),
    (["--milestones", "abc"], r"--milestones must be an integer"),
    (["--epocs", "3"], r"No such option.*--epocs"),
    (["--val-fraction", "1.5"], r"--val-fraction must be in \[0, 1\)"),
])
def test_bad_numbers_and_parse_errors_are_one_line(capsys, tmp_path, args, pattern):
    code, _, err = run_main(capsys, "train-teacher", *args, "--out", tmp_path / "x")
    one_line_error(code, err, pattern)
    assert not (tmp_path / "x").exists()


def test_explainer_experts_and_missing_argument(capsys, tmp_path):
    code, _, err = run_main(capsys, "distill-explainer", "--method", "ce", "--experts", "abc", "--out", tmp_path / "e")
    one_line_error(code, err, r"--experts must be an integer")
    code, _, err = run_main(capsys, "evaluate")
    one_line_error(code, err, r"Missing argument")
    code, _, err = run_main(capsys, "train-vam-student", "--method", "nosuch", "--out", tmp_path / "s")
    one_line_error(code, err, r"unknown method 'nosuch'.*valid methods: .*kd")
    code, _, err = run_main(capsys, "train-vam-student", "--method", "kd", "--out", tmp_path / "s")
    one_line_error(code, err, r"--method kd needs --teacher")
    code, _, err = run_main(capsys, "train-vam-student", "--method", "ce", "--kd-weight", "inf", "--out", tmp_path / "s")
    one_line_error(code, err, r"--kd-weight must be a finite number")


def test_config_file_values_are_validated(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"epochs": True}))
    with pytest.raises(KdxError, match=r"--epochs must be an integer; got True"):
        build_config(config_class("train-teacher"), config_file=str(bad), cli={"out": "x"})


def test_yaml_config_and_toml_key_set_twice(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 3\noptim:\n  lr: 0.2\nmilestones: [1, 2]\n")
    cfg = build_config(config_class("train-teacher"), config_file=str(y), cli={"out": "x"})
    assert (cfg.epochs, cfg.lr, cfg.milestones) == (3, 0.2, [1, 2])
    t = tmp_path / "c.toml"
    t.write_text("[a]\nlr = 0.1\n[b]\nlr = 0.2\n")
    with pytest.raises(KdxError, match=r"'lr' is set twice \(\[a\] and \[b\]\)"):
        read_config_file(t)


def test_lists_comma_separated_or_repeated():
    opt = next(o for o in field_options(config_class("train-vam-student")) if o.name == "method")
    assert coerce(opt, ["kd,at", "dkd"]) == ["kd", "at", "dkd"]
    assert coerce(opt, "kd") == ["kd"]


def test_print_config_writes_nothing(capsys, tmp_path):
    code, out, _ = run_main(capsys, "train-vam-student", "--method", "ce", "--lr", "0.3", "--print-config",
                            "--out", tmp_path / "s")
    assert code == 0
    cfg = json.loads(out)
    assert cfg["lr"] == 0.3 and cfg["epochs"] == PRESETS["train-vam-student"]["quick"]["epochs"]  # mini set: quick
    assert cfg["method"] == ["ce"] and "kd_temperature" in cfg
    assert not (tmp_path / "s").exists()


def test_dataset_recipe_is_real():
    teacher = config_class("train-teacher")
    mini = build_config(teacher, cli={"out": "x"})
    cifar = build_config(teacher, cli={"out": "x", "dataset": "cifar10"})
    assert (mini.epochs, cifar.epochs) == (15, 240)
    student = config_class("train-vam-student")
    paper = build_config(student, cli={"out": "x", "dataset": "cifar100", "preset": "paper"})
    quick = build_config(student, cli={"out": "x"})
    assert (paper.epochs, quick.epochs) == (240, 8)
    assert (paper.hierarchy_mapping, quick.hierarchy_mapping) == ("authors", "authors")  # --vam tree: the authors'
    assert (paper.vam, quick.vam) == ("auto", "auto")


def test_each_command_config_holds_only_its_fields():
    explainer = {o.name for o in field_options(config_class("distill-explainer"))}
    assert not explainer & {"epochs", "schedule", "milestones", "gamma", "lr", "routing_every"}
    assert {"kd_temperature", "ce_weight", "label_smoothing"} <= explainer
    assert "hierarchy" not in explainer  # a student-only method's option


TOY = '''
from kdx.distill.methods.base import Method, register_method
from kdx.options import Option


class Toy(Method):
    """A plug-in method: weight * mean squared logit."""

    name = "toy"
    help = "toy plug-in"
    options = (Option("toy_weight", float, 0.01, "Weight of the toy loss.", low=0, panel="Method"),)

    def loss(self, out):
        return {"toy": self.params["toy_weight"] * out.logits.float().pow(2).mean()}
'''


def test_method_from_an_installed_package(tmp_path):
    """A package installed into a temporary location adds a method through the kdx.methods entry points."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "kdx_toy.py").write_text(textwrap.dedent(TOY))
    dist = site / "kdx_toy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kdx-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kdx.methods]\ntoy = kdx_toy:Toy\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    for vam in ("head", "off"):
        out = tmp_path / f"run-{vam}"
        proc = subprocess.run([sys.executable, "-m", "kdx", "train-vam-student", "--method", "toy", "--toy-weight",
                               "0.5", "--vam", vam, *TINY, "--max-steps", "2", "--out", str(out)],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        saved = json.loads((out / "config.json").read_text())
        assert saved["method"] == ["toy"] and saved["toy_weight"] == 0.5 and saved["vam"] == vam
    help_text = subprocess.run([sys.executable, "-m", "kdx", "train-vam-student", "--help"], capture_output=True,
                               text=True, env=dict(env, COLUMNS="200"), timeout=120).stdout
    assert "--toy-weight" in help_text
