"""Issue 19, items 3 and 4: every command's options are declarations (kdx/commandconfig.py, the
pipeline's in kdx/commands/study.py), so help, --config, --print-config and value checks come
from one place; `kdx methods` lists the method registry; `kdx models PATTERN` filters the zoo."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from kdx import commandconfig as cc
from cli_helpers import one_line_error, run_main  # tests/ is on sys.path

from kdx.cli import app
from kdx.commands.study import PipelineOptions
from kdx.options import field_options, show_default

DECLARED = {"analyze-conflicts": cc.AnalyzeConflictsOptions, "evaluate": cc.EvaluateOptions, "info": cc.InfoOptions,
            "import-checkpoint": cc.ImportCheckpointOptions, "models": cc.ModelsOptions,
            "datasets": cc.DatasetsOptions, "methods": cc.MethodsOptions, "pipeline": PipelineOptions}




# ------------------------------------------------------------------ item 4: declarations drive every command

@pytest.mark.parametrize("command", sorted(DECLARED))
def test_help_shows_every_declared_default(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for opt in field_options(DECLARED[command]):
        if opt.argument:
            assert any(opt.metavar in ln for ln in lines if "Usage:" in ln), (command, opt.name)
            continue
        line = next((ln for ln in lines if re.search(rf"^\s*\S\s+{re.escape(opt.flag)}(\s|/|,)", ln)), None)
        assert line is not None, f"{opt.flag} missing from {command} --help"
        expect = "[required]" if opt.required else f"[default: {show_default(opt)}]"
        assert expect in line, (opt.name, line)
        for short in opt.flags:
            assert short in line, (opt.name, short, line)
    assert "--print-config" in result.output and "--config" in result.output


def test_registered_commands_are_the_declared_ones():
    names = set(typer.main.get_command(app).commands)
    assert set(DECLARED) <= names
    assert names - set(DECLARED) == {"train-teacher", "distill-explainer", "train-vam-student"}


@pytest.mark.parametrize("args, pattern", [
    (["analyze-conflicts", "RUN", "--images", "-3", "--out", "X"], r"--images must be >= 2; got -3"),
    (["analyze-conflicts", "RUN", "--batch-size", "0", "--out", "X"], r"--batch-size must be >= 1"),
    (["analyze-conflicts", "RUN", "--split", "train", "--out", "X"], r"--split must be one of val, test; got 'train'"),
    (["analyze-conflicts", "RUN"], r"--out is required"),
    (["evaluate", "RUN", "--split", "nope"], r"--split must be one of test, val; got 'nope'"),
    (["evaluate", "RUN", "--tau", "0"], r"--tau must be > 0"),
    (["evaluate", "RUN", "--device", "gpu"], r"--device must be one of auto, cpu, cuda, cuda:N, mps; got 'gpu'"),
    (["evaluate", "RUN", "--routing", "fuzzy"], r"--routing must be one of soft, hard, gumbel"),
    (["info", "RUN", "--which", "bogus"], r"--which must be one of model, best; got 'bogus'"),
    (["import-checkpoint", "w.pth", "--num-classes", "0", "--out", "o.safetensors"], r"--num-classes must be >= 1"),
    (["import-checkpoint", "w.pth", "--kind", "nope", "--out", "o.safetensors"], r"--kind must be one of classifier"),
    (["pipeline", "--preset", "demo", "--seeds", "-1", "--print-config"], r"--seeds must be >= 0; got -1"),
    (["pipeline", "--preset", "demo", "--device", "gpu", "--print-config"], r"--device must be one of"),
])
def test_a_bad_value_is_one_line(capsys, tmp_path, monkeypatch, args, pattern):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, *args)
    one_line_error(code, err, pattern)
    assert not (tmp_path / "X").exists() and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("command", ["models", "datasets", "methods"])
def test_listing_commands_check_their_config_file(capsys, tmp_path, command):
    bad = tmp_path / "c.toml"
    bad.write_text('json = "maybe"\n')
    code, _, err = run_main(capsys, command, "--config", bad)
    one_line_error(code, err, r"--json must be true or false; got 'maybe'")
    bad.write_text("jsn = true\n")
    code, _, err = run_main(capsys, command, "--config", bad)
    one_line_error(code, err, r"unknown option\(s\) in .*c.toml: jsn")


def test_config_file_and_print_config_of_a_declared_command(capsys, tmp_path):
    cfg = tmp_path / "analysis.toml"
    cfg.write_text('images = 64\nsplit = "test"\n[runtime]\ndevice = "cpu"\n')
    code, out, err = run_main(capsys, "analyze-conflicts", "a", "b,c", "--config", cfg, "--images", "32",
                              "--print-config")
    assert code == 0, err
    got = json.loads(out)
    assert got["runs"] == ["a", "b,c"]  # a run's path is never split at commas
    assert (got["images"], got["split"], got["device"], got["out"]) == (32, "test", "cpu", None)  # flags win
    code, _, err = run_main(capsys, "evaluate", "RUN", "--config", cfg)  # images is no option of evaluate
    one_line_error(code, err, r"unknown option\(s\) in .*analysis.toml: images")


def test_device_defaults_to_auto_everywhere():
    """One declaration per default: analyze-conflicts, evaluate and the pipeline's analysis step agree."""
    from kdx.commands import pipeline

    assert cc.AnalyzeConflictsOptions().device == cc.EvaluateOptions().device == "auto"
    study = pipeline.build_study("demo", None, {})
    places = pipeline.layout(study, pipeline.Path("s"))
    opts = pipeline.analysis_options(study, ["r1", "r2", "r3"], places["seeds"][0]["analysis"])
    assert opts.device == "auto" and opts.images == study["analysis"]["images"] and opts.label == study["methods"]
    study = pipeline.build_study("demo", None, {"device": "cpu"})
    assert pipeline.analysis_options(study, ["r"], places["seeds"][0]["analysis"]).device == "cpu"


def test_study_analysis_table_is_checked_by_the_declaration():
    from kdx.commands import pipeline
    from kdx.errors import KdxError

    with pytest.raises(KdxError, match=r"\[analysis\] images = 1 is not valid: --images must be >= 2"):
        pipeline.build_study("demo", None, {"analysis": {"images": 1}})
    with pytest.raises(KdxError, match=r"unknown key 'plot_format' in the study's \[analysis\] table \(the pipeline"):
        pipeline.build_study("demo", None, {"analysis": {"plot_format": "pdf"}})
    assert pipeline.build_study("demo", None, {"analysis": {"log": "csv"}})["analysis"]["log"] == "csv"


def test_declared_choices_are_the_modules_own():
    from kdx.analysis.plots import PLOT_FORMATS

    assert cc.PLOT_FORMATS == PLOT_FORMATS


def test_typer_is_not_patched():
    """The plain ``RUN...`` display comes from kdx's own command class, not from patching typer's."""
    from typer.core import TyperArgument

    import kdx.cli

    assert not any(k.startswith("_kdx") for k in vars(TyperArgument))
    assert TyperArgument.get_usage_pieces.__module__ == "typer.core"
    assert kdx.cli.PlainArgument.get_usage_pieces.__module__ == "kdx.cli"
    result = CliRunner().invoke(app, ["analyze-conflicts", "--help"], env={"COLUMNS": "200"})
    assert "Usage: kdx analyze-conflicts [OPTIONS] RUN..." in result.output


# ------------------------------------------------------------------ item 3: kdx methods, kdx models PATTERN

def test_methods_table_lists_every_registered_method():
    from kdx.distill.methods import all_methods

    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    first_column = {ln.split("│")[1].strip() for ln in result.output.splitlines() if ln.startswith("│")}
    assert set(all_methods()) <= first_column
    assert "--kd-temperature 4" in result.output and "distill-explainer" in result.output


def test_methods_json_for_scripts():
    from kdx.distill.methods import all_methods

    result = CliRunner().invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == sorted(all_methods())
    by = {r["name"]: r for r in rows}
    kd = by["kd"]
    assert kd["paper"].startswith("Hinton") and kd["needs_teacher"] is True
    assert kd["commands"] == ["distill-explainer", "train-vam-student"] and kd["selected_by"] == "--method"
    assert {o["name"]: o["default"] for o in kd["options"]} == {o.name: o.default for o in all_methods()["kd"].options}
    assert kd["reads"][0] == "student and teacher logits"
    assert by["at"]["reads"][0] == "student and teacher stage features"
    assert by["hierarchy"]["selected_by"] == "its own flag"
    offered = {"explainer": "distill-explainer", "student": "train-vam-student"}
    for name, cls in all_methods().items():  # the commands a method's class says offer it
        assert by[name]["commands"] == [offered[c] for c in sorted(cls.commands)], name


def test_models_pattern_and_json():
    from kdx.models import list_models

    result = CliRunner().invoke(app, ["models", "resnet*", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = [r["name"] for r in rows]
    assert names == [n for n in list_models() if n.lower().startswith("resnet")]
    assert "resnet8" in names and "ResNet18" in names and "wrn_16_2" not in names  # case-insensitive, fnmatch
    assert all(r["stage_names"] and r["family"] for r in rows)
    table = CliRunner().invoke(app, ["models", "wrn_*"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "wrn_16_2" in table.output and "resnet8" not in table.output
    everything = json.loads(CliRunner().invoke(app, ["models", "--json"]).output)
    assert [r["name"] for r in everything] == list_models()
    none = CliRunner().invoke(app, ["models", "nothing*"])
    assert none.exit_code == 0 and "no architecture matches 'nothing*'" in none.output
    assert json.loads(CliRunner().invoke(app, ["models", "nothing*", "--json"]).output) == []


def test_datasets_json():
    from kdx.data.registry import all_datasets

    result = CliRunner().invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == [s.label for s in all_datasets().values()]
    mini = next(r for r in rows if r["name"] == "fashion-mnist-mini")
    assert mini["num_classes"] == 10 and mini["input_shape"] == [1, 28, 28]
