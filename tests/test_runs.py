"""Run layout (kdx.engine.runs), checkpoint kinds, where stage 2 starts, and `kdx evaluate` agreeing
with the numbers a run recorded (its validation split, its precision)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from kdx.cli import app
from kdx.engine import runs
from kdx.engine.checkpoint import read_metadata, save_checkpoint
from kdx.errors import KdxError

runner = CliRunner()
TINY = ["--widths", "8:8,8:8,8:8", "--stage1-epochs", "2", "--stage2-epochs", "1", "--max-train-samples", "200",
        "--batch-size", "50", "--device", "cpu", "--quiet", "--eval-batch-size", "500", "--halve-every", "1"]
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def evaluate_json(*args) -> dict:
    r = invoke("evaluate", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def explainer_run(tmp_path_factory, single_thread):
    """A tiny two-stage ce explainer run with a validation split (seed 7, not the fallback 0)."""
    out = tmp_path_factory.mktemp("runs") / "ce"
    r = invoke("distill-explainer", "--method", "ce", "--out", out, "--seed", "7", *TINY, "--stage1-lr", "0.01",
               "--routing-lr", "0.05", "--stage2-optimizer", "adam", "--stage2-lr", "0.005", "--halve-every", "5")
    assert r.exit_code == 0, r.output
    return out


# ------------------------------------------------------------------ layout
def test_layout_of_an_explainer_run(explainer_run):
    out = explainer_run
    assert runs.stages(out) == [1, 2]
    assert runs.checkpoint_file(out) == out / "stage2" / "model.safetensors"
    assert runs.checkpoint_file(out, "best") == out / "stage2" / "best.safetensors"
    assert runs.checkpoint_file(out / "stage1", "best") == out / "stage1" / "best.safetensors"
    f = out / "stage2" / "model.safetensors"
    assert runs.run_root(f) == out and runs.stage_of(f) == 2
    spec = runs.split_spec(f, read_metadata(f))
    assert spec["seed"] == 7 and spec["val_fraction"] == 0.1 and spec["dataset"] == "fashion-mnist-mini"
    with pytest.raises(KdxError, match="--which must be one of model, best"):
        runs.checkpoint_file(out, "bogus")
    r = invoke("evaluate", out, "--which", "bogus")
    assert r.exit_code == 2 and "--which must be one of model, best" in r.output
    r = invoke("info", out, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["run_dir"] == str(out) and data["run_stage"] == 2


# ------------------------------------------------------------------ evaluate = the run's own numbers
def test_evaluate_val_split_is_the_runs(explainer_run):
    """`evaluate RUN --split val` scores the validation split the run used: it equals the recorded
    validation accuracy of that checkpoint (last and best of the final stage)."""
    out = explainer_run
    for path, which in ((out, "model"), (out, "best"), (out / "stage1", "best"), (out / "stage1", "model")):
        recorded = read_metadata(runs.checkpoint_file(path, which))["metrics"]
        data = evaluate_json(path, "--split", "val", "--which", which)
        assert data["count"] == 600
        assert (data["top1"], data["loss"]) == (recorded["val_top1"], recorded["val_loss"]), (path, which)
    # above chance (at chance every split of a stratified set scores 10 %): the splits are told apart
    assert json.loads((out / "stage1" / "results.json").read_text())["val_top1_best"] > 0.15
    results = json.loads((out / "stage2" / "results.json").read_text())
    assert evaluate_json(out, "--split", "val", "--which", "best")["top1"] == results["val_top1_best"]
    assert evaluate_json(out)["top1"] == results["test_top1_last"]


def test_evaluate_uses_the_runs_precision(tmp_path):
    """A bf16 run evaluated by `kdx evaluate` reproduces its recorded test accuracy exactly."""
    out = tmp_path / "t"
    r = invoke("train-teacher", "--arch", "resnet8", "--epochs", "1", "--max-train-samples", "300", "--batch-size",
               "50", "--device", "cpu", "--quiet", "--precision", "bf16", "--out", out)
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())
    data = evaluate_json(out)
    assert data["precision"] == "bf16"
    assert data["top1"] == results["test_top1_last"]
    assert evaluate_json(out, "--which", "best")["top1"] == results["test_top1_best"]
    assert evaluate_json(out, "--precision", "fp32")["precision"] == "fp32"


def test_evaluation_csv_names_say_what_was_evaluated(explainer_run):
    out = explainer_run
    default = evaluate_json(out)
    best = evaluate_json(out, "--which", "best")
    soft = evaluate_json(out, "--routing", "soft", "--tau", "1")
    names = {Path(d["per_class_csv"]).name for d in (default, best, soft)}
    assert names == {"eval_fashion-mnist-mini_test.csv", "eval_fashion-mnist-mini_test_best.csv",
                     "eval_fashion-mnist-mini_test_soft_tau1.csv"}
    for d in (default, best, soft):
        assert Path(d["per_class_csv"]).parent == out and Path(d["per_class_csv"]).is_file()


# ------------------------------------------------------------------ where stage 2 starts
def _fake_stage1(run: Path) -> dict:
    """A stage-1 run whose best and last checkpoints have different routing matrices."""
    from kdx.data import load_dataset
    from kdx.models.routed import KDExplainer

    b = load_dataset("fashion-mnist-mini", val_fraction=0.1, seed=1)
    (run / "stage1").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 1, "val_fraction": 0.1}))
    routing = {}
    for seed, which in ((0, "best"), (1, "model")):
        torch.manual_seed(seed)
        m = KDExplainer(10, in_channels=1, image_size=28, widths=[(8, 8), (8, 8), (8, 8)], hidden=16)
        meta = {"kind": "explainer", "arch": "kdexplainer", "explainer": m.config_dict(), "stage": 1,
                "epoch": 3 if which == "best" else 5, **b.meta()}
        save_checkpoint(run / "stage1" / f"{which}.safetensors", m.state_dict(), meta)
        routing[which] = [r.detach().clone() for r in m.branches]
    return routing


@pytest.mark.parametrize("option", [None, "last"])
def test_stage2_starts_from_the_best_stage1_checkpoint(tmp_path, option, single_thread):
    routing = _fake_stage1(tmp_path / "s1")
    extra = [] if option is None else ["--stage2-from", option]
    out = tmp_path / "s2"
    r = invoke("distill-explainer", "--method", "ce", "--stage", "2", "--from", tmp_path / "s1", "--out", out,
               *extra, *TINY)
    assert r.exit_code == 0, r.output
    expect = routing["model" if option == "last" else "best"]
    state = load_file(str(out / "stage2" / "model.safetensors"))
    assert all(torch.equal(state[f"branches.{i}"], expect[i]) for i in range(3))
    results = json.loads((out / "results.json").read_text())
    assert results["stage2_from"]["epoch"] == (5 if option == "last" else 3)
    assert results["stage2_from"]["option"] == (option or "best")


def test_stage2_from_is_checked_before_anything_is_written(tmp_path):
    r = invoke("distill-explainer", "--method", "ce", "--stage2-from", "first", "--out", tmp_path / "x", *TINY)
    assert r.exit_code == 2 and "stage2-from" in r.output and "best" in r.output and "last" in r.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(KdxError, match="--stage2-from must be one of best, last"):
        from kdx.commands.distill_explainer import stage1_source

        stage1_source(str(tmp_path), "first")


# ------------------------------------------------------------------ checkpoint kinds
def test_loading_an_explainer_checkpoint_imports_no_training_code(tmp_path):
    from kdx.models.routed import KDExplainer

    m = KDExplainer(4, in_channels=1, image_size=16, widths=[(4, 4), (4, 4), (4, 4)], hidden=8)
    f = tmp_path / "e.safetensors"
    save_checkpoint(f, m.state_dict(), {"kind": "explainer", "arch": "kdexplainer", "explainer": m.config_dict(),
                                        "num_classes": 4})
    code = ("import sys, kdx; model, meta = kdx.load(sys.argv[1]); "
            "bad = [m for m in ('kdx.distill.explainer_task', 'kdx.engine.trainer', 'kdx.distill.task') if m in sys.modules]; "
            "print(type(model).__name__, bad)")
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["KDExplainer", "[]"]


def test_checkpoint_kinds_are_one_explicit_dict():
    from kdx.engine import checkpoint as ckpt

    assert set(ckpt.KINDS) == {"classifier", "explainer", "vam-student"}
    for kind in ckpt.KINDS:
        assert callable(ckpt.kind_builder(kind))
    with pytest.raises(KdxError, match="kind 'nope' is not supported"):
        ckpt.build_model({"kind": "nope"})
    assert not hasattr(ckpt, "register_kind")
