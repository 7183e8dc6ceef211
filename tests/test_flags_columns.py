"""Issue 13, items 9 and 22 (the rest): --quiet on evaluate and analyze-conflicts, lists comma-separated
or repeated on every command, one CSV column name per concept, and --out paths that are refused in
one line (analyze-conflicts, pipeline, import-checkpoint)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from kdx.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and text.startswith("kdx: error:"), text
    assert pattern in text, text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A resnet8 imported for fashion-mnist-mini (no training)."""
    from kdx.models import create_model

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    torch.save(create_model("resnet8", num_classes=10, in_channels=1).state_dict(), d / "w.pth")
    out = d / "w.safetensors"
    assert invoke("import-checkpoint", d / "w.pth", "--arch", "resnet8", "--dataset", "fashion-mnist-mini",
                  "--out", out).exit_code == 0
    return out


@pytest.fixture(scope="module")
def explainer_runs(tmp_path_factory):
    from fakes import fake_explainer_run

    d = tmp_path_factory.mktemp("runs")
    return [fake_explainer_run(d, o, i) for i, o in enumerate(("ce", "kd"))]


# ------------------------------------------------------------------ item 9: --quiet
def test_evaluate_quiet_prints_nothing_but_json(checkpoint, tmp_path):
    loud = invoke("evaluate", checkpoint, "--device", "cpu", "--per-class-csv", tmp_path / "a.csv")
    assert loud.exit_code == 0 and "top-1" in loud.output
    quiet = invoke("evaluate", checkpoint, "--device", "cpu", "-q", "--per-class-csv", tmp_path / "b.csv")
    assert quiet.exit_code == 0 and quiet.output.strip() == "", quiet.output
    assert (tmp_path / "b.csv").is_file()  # quiet prints less, writes the same
    both = invoke("evaluate", checkpoint, "--device", "cpu", "--quiet", "--json", "--per-class-csv", tmp_path / "c.csv")
    assert both.exit_code == 0
    assert json.loads(both.output)["count"] > 0  # --json still prints its one object
    bad = invoke("evaluate", checkpoint, "-q", "--split", "tset")
    assert_one_line_error(bad, "tset")  # errors are never quiet


def test_analyze_conflicts_quiet(explainer_runs, tmp_path):
    args = ["analyze-conflicts", *explainer_runs, "--images", "16", "--batch-size", "16", "--device", "cpu",
            "--no-conflicts"]
    loud = invoke(*args, "--out", tmp_path / "a")
    assert loud.exit_code == 0 and "analyze-conflicts: run 1/2" in loud.output and "analysis written" in loud.output
    quiet = invoke(*args, "--out", tmp_path / "b", "-q")
    assert quiet.exit_code == 0 and quiet.output.strip() == "", quiet.output
    assert (tmp_path / "b" / "summary.csv").is_file() and (tmp_path / "b" / "report.md").is_file()


# ------------------------------------------------------------------ item 9: lists comma-separated and repeated
@pytest.mark.parametrize("labels", [["--label", "a,b"], ["--label", "a", "--label", "b"], ["-l", "a", "-l", "b,"]])
def test_analyze_conflicts_labels_comma_or_repeated(explainer_runs, tmp_path, labels):
    res = invoke("analyze-conflicts", *explainer_runs, *labels, "--images", "16", "--batch-size", "16",
                 "--device", "cpu", "--no-conflicts", "-q", "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert list(pd.read_csv(tmp_path / "a" / "summary.csv")["run"]) == ["a", "b"]


@pytest.mark.parametrize("args", [["--seeds", "0,1,2", "--methods", "ce,kd"],
                                  ["--seeds", "0", "--seeds", "1", "--seeds", "2", "--methods", "ce", "--methods", "kd"],
                                  ["--seeds", "0", "--seeds", "1,2", "--methods", "ce,", "--methods", "kd"]])
def test_pipeline_seeds_and_methods_comma_or_repeated(args):
    res = invoke("pipeline", "--preset", "demo", *args, "--print-config")
    assert res.exit_code == 0, res.output
    study = json.loads(res.output)
    assert study["seeds"] == [0, 1, 2] and study["methods"] == ["ce", "kd"]


def test_pipeline_bad_seed_is_one_line():
    assert_one_line_error(invoke("pipeline", "--preset", "demo", "--seeds", "0", "--seeds", "x", "--print-config"),
                          "--seeds must be an integer")


# ------------------------------------------------------------------ item 9: one column name per concept
def test_per_class_csv_columns(checkpoint, tmp_path):
    assert invoke("evaluate", checkpoint, "--device", "cpu", "-q", "--per-class-csv", tmp_path / "p.csv").exit_code == 0
    frame = pd.read_csv(tmp_path / "p.csv")
    assert list(frame.columns) == ["class", "class_name", "correct", "total", "accuracy"]
    assert frame["class_name"][0] == "T-shirt/top"


def test_analysis_csv_columns(explainer_runs, tmp_path):
    """A class index is ``class`` (a pair ``class_i``/``class_j``), its name ``class_name``; normalised
    entropies carry the ``norm_`` prefix; no ``subtask`` or ``name`` column anywhere."""
    out = tmp_path / "a"
    assert invoke("analyze-conflicts", *explainer_runs, "--images", "16", "--batch-size", "16", "--device", "cpu",
                  "-q", "--out", out).exit_code == 0
    cols = {n: list(pd.read_csv(out / f"{n}.csv").columns)
            for n in ("subtask_attention", "entropy", "sharing", "conflicts", "subtasks", "clusters", "summary")}
    assert cols["entropy"][3:] == ["class", "class_name", "entropy", "norm_entropy"]
    assert cols["subtasks"][:3] == ["run", "class", "class_name"]
    assert cols["subtask_attention"][3:5] == ["class", "class_name"]
    assert cols["sharing"][3:5] == ["class_i", "class_j"] and cols["conflicts"][4:6] == ["class_i", "class_j"]
    for name, c in cols.items():
        assert not any(x.startswith("subtask") or x in ("name", "normalised_entropy") for x in c), (name, c)
        assert all(x.startswith("norm_") for x in c if "normalised" in x or x.startswith("norm")), (name, c)
    conf = pd.read_csv(out / "conflicts.csv")
    assert len(conf) and (conf["class_i"] < conf["class_j"]).all()


def test_column_conventions_are_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "run-directory.md").read_text()
    section = doc.split("## Column names", 1)[1]
    for word in ("`class`", "`class_name`", "`class_i`", "`norm_`", "`kd+tree`"):
        assert word in section, word


# ------------------------------------------------------------------ item 22: --out naming the wrong thing
def test_analyze_conflicts_out_is_a_file(explainer_runs, tmp_path):
    (tmp_path / "f").write_text("x")
    res = invoke("analyze-conflicts", *explainer_runs, "--images", "16", "--device", "cpu", "--out", tmp_path / "f")
    assert_one_line_error(res, "exists and is not a directory")
    res = invoke("analyze-conflicts", *explainer_runs, "--images", "16", "--device", "cpu",
                 "--out", tmp_path / "f" / "sub")
    assert_one_line_error(res, "is not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_pipeline_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    res = invoke("pipeline", "--preset", "demo", "--out", tmp_path / "f")
    assert_one_line_error(res, "exists and is not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_import_checkpoint_overwrite_onto_directory(checkpoint, tmp_path):
    target = tmp_path / "model.safetensors"
    (target / "keep").mkdir(parents=True)
    w = checkpoint.parent / "w.pth"
    res = invoke("import-checkpoint", w, "--arch", "resnet8", "--out", target, "--overwrite")
    assert_one_line_error(res, "is a directory")
    assert (target / "keep").is_dir()
    res = invoke("import-checkpoint", w, "--arch", "resnet8", "--out", checkpoint)
    assert_one_line_error(res, "pass --overwrite")  # the flag that exists (not --force)


def test_shell_completion_is_on():
    result = invoke("--help")
    assert result.exit_code == 0 and "--install-completion" in result.output


def test_reliability_doc_cites_only_tests_that_exist():
    """Every ``tests/<file>::<test>`` cited in docs/reliability.md names a test function that exists."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    doc = (root / "docs" / "reliability.md").read_text()
    cited = set(re.findall(r"`(test_\w+)\.py::(test_\w+)`", doc))
    assert len(cited) > 60
    missing = []
    for f, name in sorted(cited):
        path = root / "tests" / f"{f}.py"
        tree = ast.parse(path.read_text()) if path.is_file() else ast.Module(body=[], type_ignores=[])
        if name not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}:
            missing.append(f"{f}.py::{name}")
    assert not missing, missing
    table = doc.split("## Issue 13: item -> test that fails without the fix", 1)[1].split("\n## ", 1)[0]
    items = [int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)]
    assert items == list(range(1, 30))
