"""Warn, never stay silent, when a schedule makes a run meaningless (issue 21, item 3): a stage 1
too short for the routing to train, a teacher likely worse than the student would be, an epoch of
fewer than 3 batches. Each warning names the cause and the flag that fixes it."""

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from kdx.cli import app
from kdx.distill.explainer_task import routing_epochs, untrained_routing_warning
from kdx.distill.task import weak_teacher_warning
from kdx.engine.trainer import few_steps_warnings


def test_routing_epochs_follow_the_official_schedule():
    assert routing_epochs(1, 0.05) == [] and routing_epochs(2, 0.05) == []
    assert routing_epochs(3, 0.05) == [3]
    assert routing_epochs(5, 0.05) == [3, 4, 5]
    assert routing_epochs(8, 0.0) == []


def test_untrained_routing_warning_names_epochs_and_flag():
    text = untrained_routing_warning(2, 0.05)
    assert "stage 1 has 2 epochs" in text and "epochs 1-2" in text and "--stage1-epochs 3 or more" in text
    assert "--routing-lr" in untrained_routing_warning(8, 0.0)


@pytest.mark.parametrize("top1, classes, warned", [(0.30, 10, True), (0.549, 10, True), (0.55, 10, False),
                                                   (0.91, 10, False), (0.50, 100, True), (0.51, 100, False)])
def test_weak_teacher_rule(top1, classes, warned):
    meta = {"num_classes": classes, "epoch": 2, "metrics": {"val_top1": top1, "test_top1": 0.99}}
    text = weak_teacher_warning(meta)
    assert (text is not None) == warned
    if warned:
        assert f"{top1:.1%} val top-1" in text and "train-teacher --epochs" in text


def test_weak_teacher_rule_falls_back_to_test_and_to_silence():
    assert "test top-1" in weak_teacher_warning({"num_classes": 10, "metrics": {"test_top1": 0.2}})
    assert weak_teacher_warning({"num_classes": 10}) is None  # an imported checkpoint records no accuracy
    assert weak_teacher_warning({}) is None


def test_few_steps_warning():
    cfg = SimpleNamespace(max_train_samples=100, batch_size=64)
    (text,) = few_steps_warnings(cfg, 2)
    assert "--max-train-samples 100 with --batch-size 64 gives 2 steps per epoch" in text
    assert "at least 192" in text
    assert few_steps_warnings(cfg, 3) == []
    assert "the training split" in few_steps_warnings(SimpleNamespace(max_train_samples=None, batch_size=8), 1)[0]


def test_the_commands_print_the_warnings(tmp_path):
    """A 1-epoch teacher on 120 images (weak), an explainer with a 2-epoch stage 1, 2 steps an epoch."""
    runner = CliRunner()
    teacher = tmp_path / "t"
    r = runner.invoke(app, ["train-teacher", "--arch", "resnet8", "--epochs", "1", "--max-train-samples", "120",
                            "--batch-size", "60", "--device", "cpu", "--quiet", "--out", str(teacher)])
    assert r.exit_code == 0, r.output
    assert "kdx: warning: --max-train-samples 120 with --batch-size 60 gives 2 steps per epoch" in r.output
    r = runner.invoke(app, ["distill-explainer", "--method", "kd", "--teacher", str(teacher), "--stage", "1",
                            "--widths", "8:8,8:8,8:8", "--stage1-epochs", "2", "--max-train-samples", "200",
                            "--batch-size", "50", "--device", "cpu", "--quiet", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "kdx: warning: stage 1 has 2 epochs" in text and "--stage1-epochs 3 or more" in text
    assert "kdx: warning: the teacher" in text and "below 55.0%" in text


def test_crd_records_the_negatives_it_uses_and_warns():
    """issue 21 item 5: crd_nce_k 16384 on a split of 100 samples trains with 99 negatives: the
    checkpoint's method record says 99 (and what was asked), and a warning says so."""
    import torch

    from kdx.distill.methods import MethodContext, get_method

    cls = get_method("crd")
    params = {o.name: o.default for o in cls.options} | {"crd_mode": "uniform"}
    assert params["crd_nce_k"] == 16384
    crd = cls(MethodContext(params=params, num_classes=10, num_samples=100, train_labels=torch.zeros(100).long()))
    rec = crd.record()
    assert rec["params"]["crd_nce_k"] == 99 == rec["negatives"] and rec["params"]["crd_nce_k_asked"] == 16384
    (text,) = crd.warnings()
    assert "--crd-nce-k 16384" in text and "99 negatives" in text
    small = cls(MethodContext(params=params | {"crd_nce_k": 50}, num_classes=10, num_samples=100))
    assert small.warnings() == [] and small.record()["params"]["crd_nce_k"] == 50
