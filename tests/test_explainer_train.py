"""distill-explainer: the stage-1 schedule, objectives, both stages end to end, outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import kdx
from kdx.cli import app
from kdx.distill.functional import kd as kd_kl
from kdx.distill.methods import MethodContext, StepOutputs, get_method
from kdx.distill.task import build_methods, method_names
from kdx.engine.schedule import get_schedule
from kdx.errors import KdxError

runner = CliRunner()
TINY = ["--widths", "8:8,8:8,8:8", "--stage1-epochs", "2", "--stage2-epochs", "1", "--max-train-samples", "200",
        "--batch-size", "50", "--device", "cpu", "--quiet", "--eval-batch-size", "500", "--halve-every", "1"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_stage1_schedule_matches_official():
    import kdx.distill.explainer_task  # noqa: F401  (registers the schedule)

    class C:
        epochs = 300

    sched = get_schedule("explainer-stage1")
    assert sched(1, [0.05, 0.01], C) == pytest.approx([0.0125, 0.0])
    assert sched(2, [0.05, 0.01], C) == pytest.approx([0.025, 0.0])
    assert sched(3, [0.05, 0.01], C) == pytest.approx([0.05, 0.01])
    assert sched(4, [0.05, 0.01], C) == pytest.approx([0.05, 0.01])
    decay = 1 - 4 / int(1.03093 * 300)
    assert sched(5, [0.05, 0.01], C) == pytest.approx([0.05 * decay, 0.01 * decay])
    assert sched(6, [0.05, 0.01], C) == sched(5, [0.05, 0.01], C)  # unchanged on odd e-1
    assert sched(300, [0.05], C)[0] == pytest.approx(0.05 * (1 - 298 / 309))  # e=300: e-1 odd, as e=299


def _losses(method, s, y, t, **params):
    names, w = method_names([method], "explainer", params.pop("ce_weight", None))
    methods = build_methods(names, MethodContext(params=dict(params, ce_weight=w)))
    out = StepOutputs(x=s, y=y, logits=s, model=None, teacher_logits=t)
    return {k: v for m in methods for k, v in m.loss(out).items()}


def test_explainer_methods():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    kd = _losses("kd", s, y, t, kd_weight=0.9, kd_temperature=4.0)
    p_t = torch.softmax(t / 4, 1)
    manual = (p_t * (p_t.log() - torch.log_softmax(s / 4, 1))).sum(1).mean() * 16
    assert kd["kd"].item() == pytest.approx(0.9 * manual.item(), rel=1e-5)
    assert kd["ce"].item() == pytest.approx(0.1 * torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)
    assert kd_kl(s, s, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    ls = _losses("ls", s, y, None)
    assert set(ls) == {"ls"}  # ls replaces the plain CE term
    assert ls["ls"].item() == pytest.approx(torch.nn.functional.cross_entropy(s, y, label_smoothing=0.1).item(), rel=1e-6)
    with pytest.raises(KdxError, match="valid methods: .*ce.*kd.*ls"):
        get_method("nosuch", "explainer")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("ex") / "teacher"
    r = invoke("train-teacher", "--arch", "resnet8", "--epochs", "1", "--max-train-samples", "200", "--batch-size", "50",
               "--device", "cpu", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_distill_explainer_kd_both_stages(teacher, tmp_path):
    out = tmp_path / "kd"
    r = invoke("distill-explainer", "--method", "kd", "--teacher", teacher, "--out", out, *TINY)
    assert r.exit_code == 0, r.output
    for name in ("config.json", "metrics.csv", "routing.csv", "tree.json", "results.json",
                 "stage1/model.safetensors", "stage2/model.safetensors", "stage1/routing.csv"):
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["stage"]) == [1, 1, 2]
    s1 = metrics[metrics["stage"] == 1]
    assert s1["tau"].tolist() == pytest.approx([4.0, 2.0])  # tau = tau0 / epoch; tau0 4 on the mini set (quick recipe)
    assert {"train_loss_ce", "train_loss_kd", "routing_entropy_l1", "routing_entropy_l2",
            "routing_entropy_l3"} <= set(metrics.columns)
    assert not any(c.startswith("entropy_l") for c in metrics.columns)  # named apart from the analysis' columns
    results = json.loads((out / "results.json").read_text())
    assert results["stage1_final_routing_entropy"] == pytest.approx(
        {f"routing_entropy_l{i}": s1[f"routing_entropy_l{i}"].iloc[-1] for i in (1, 2, 3)})
    assert s1["lr_routing"].tolist() == [0.0, 0.0]  # official warm-up: routing frozen in epochs 1-2
    routing = pd.read_csv(out / "routing.csv")
    assert list(routing.columns) == ["stage", "epoch", "layer", "child", "parent", "logit", "weight"]
    per_epoch = routing.groupby(["stage", "epoch"]).size()
    assert (per_epoch == 4 * 2 + 8 * 4 + 10 * 8).all()
    sums = routing.groupby(["stage", "epoch", "layer", "child"])["weight"].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-5)
    # stage 2 keeps (and freezes) the tree of the best stage-1 epoch on validation, re-initialises the rest
    start = json.loads((out / "results.json").read_text())["stage2_from"]
    assert start["checkpoint"] == "stage1/best.safetensors"
    a = load_file(str(out / "stage1" / "best.safetensors"))
    b = load_file(str(out / "stage2" / "model.safetensors"))
    routing_keys = [k for k in a if k.startswith("branches")]
    assert routing_keys and all(torch.equal(a[k], b[k]) for k in routing_keys)
    model, meta = kdx.load(out)
    assert meta["kind"] == "explainer" and meta["stage"] == 2 and model.routing == "hard"
    assert meta["method"] == ["kd"] and meta["teacher"]["arch"] == "resnet8"
    tree = json.loads((out / "tree.json").read_text())
    leaf_parent = tree["layers"][-1]["parent_of_child"]
    assert leaf_parent == model.routing_logits()[-1].argmax(1).tolist()
    assert sorted(c for g in tree["layers"][2]["groups"] for c in g["classes"]) == list(range(10))
    # evaluate under another routing
    r = invoke("evaluate", out, "--routing", "soft", "--tau", "1.0", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output.strip().splitlines()[-1])
    assert data["routing"] == "soft" and data["tau"] == 1.0 and 0 <= data["top1"] <= 1
    # stage 2 alone from the stage-1 run
    r = invoke("distill-explainer", "--method", "ce", "--stage", "2", "--from", out, "--out", tmp_path / "s2", *TINY)
    assert r.exit_code == 0, r.output
    c = load_file(str(tmp_path / "s2" / "stage2" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in routing_keys)


def test_distill_explainer_errors(teacher, tmp_path):
    r = invoke("distill-explainer", "--method", "kd", "--out", tmp_path / "x", *TINY)
    assert r.exit_code == 2 and "needs --teacher" in r.output
    r = invoke("distill-explainer", "--method", "ls", "--stage", "2", "--out", tmp_path / "x", *TINY)
    assert r.exit_code == 2 and "--from" in r.output
    # a teacher trained on another class count is refused
    from kdx.engine.checkpoint import save_checkpoint
    from kdx.models import create_model

    save_checkpoint(tmp_path / "t100.safetensors", create_model("resnet8", num_classes=100, in_channels=1).state_dict(),
                    {"kind": "classifier", "arch": "resnet8", "num_classes": 100, "input_shape": [1, 28, 28],
                     "dataset": "fashion-mnist-mini"})
    r = invoke("distill-explainer", "--method", "kd", "--teacher", tmp_path / "t100.safetensors",
               "--out", tmp_path / "y", *TINY)
    assert r.exit_code == 2 and "predicts 100 classes" in r.output


def test_resolve_checkpoint_in_explainer_runs(tmp_path):
    from kdx.engine.checkpoint import resolve_checkpoint

    for stage in ("stage1", "stage2"):
        (tmp_path / stage).mkdir()
        for f in ("model.safetensors", "best.safetensors"):
            (tmp_path / stage / f).write_bytes(b"x")
    assert resolve_checkpoint(tmp_path) == tmp_path / "stage2" / "model.safetensors"
    assert resolve_checkpoint(tmp_path, "best") == tmp_path / "stage2" / "best.safetensors"
    (tmp_path / "stage2" / "best.safetensors").unlink()
    (tmp_path / "stage2" / "model.safetensors").unlink()
    assert resolve_checkpoint(tmp_path, "best") == tmp_path / "stage1" / "best.safetensors"
