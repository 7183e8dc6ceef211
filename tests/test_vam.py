"""train-vam-student: the VAM on every zoo arch, its math, hierarchy clusters and loss, the command end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import kdx
from kdx.cli import app
from kdx.distill.hierarchy import HierarchyHeads, load_hierarchy, map_stages, parse_clusters
from kdx.distill.methods import methods_for
from kdx.distill.task import TeacherCache
from kdx.distill.vam import VAMStudent, count_cost, default_blocks, wrap_student
from kdx.errors import KdxError
from kdx.explainer.routing import route
from kdx.models import create_model, list_models

runner = CliRunner()
TINY = ["--epochs", "1", "--max-train-samples", "200", "--batch-size", "50", "--device", "cpu", "--quiet",
        "--eval-batch-size", "500"]


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- the module


@pytest.mark.parametrize("arch", list_models())
def test_every_zoo_arch_with_vam_forward_backward(arch):
    torch.manual_seed(0)
    model = wrap_student(arch, num_classes=10, in_channels=1)
    assert model.num_features % model.blocks == 0 and model.blocks == default_blocks(model.num_features)
    model.train()
    x = torch.randn(2, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (2, 10)
    (logits.sum() + model.attention_entropy()).backward()
    assert model.routing_matrix.grad is not None and model.head.weight.grad is not None
    # the linear classifier is gone; the VAM head has C*K + C*D/K + C parameters
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("student."))
    K, D = model.blocks, model.num_features
    assert head == 10 * K + 10 * D // K + 10
    assert model.experts == [K] and len(model.routing_logits()) == 1
    assert len(model.expert_param_groups()[0]) == K


def test_blocks_must_divide_features():
    with pytest.raises(KdxError, match="does not divide"):
        wrap_student("resnet8", 10, 1, blocks=7)  # D = 64
    assert default_blocks(64) == 8 and default_blocks(960) == 8 and default_blocks(116) == 4 and default_blocks(7) == 7


def test_routing_equals_route_and_head_math_matches_naive_loop():
    torch.manual_seed(1)
    model = wrap_student("resnet8", 10, 1, blocks=4, tau=2.5)
    model.train()
    (a,) = model.routing_weights()
    assert torch.equal(a, route(model.routing_matrix, 2.5, "soft"))
    model.routing = "hard"  # soft while training, hard at evaluation
    assert torch.equal(model.routing_weights()[0], route(model.routing_matrix, 2.5, "soft"))
    model.eval()
    assert torch.equal(model.routing_weights()[0], route(model.routing_matrix, 2.5, "hard"))
    model.routing = "soft"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
        pooled = model.student.forward_features(x).mean(dim=(2, 3))
        a = route(model.routing_matrix, 2.5, "soft")
        d = model.block_channels
        naive = torch.zeros(3, 10)
        for n in range(3):
            for c in range(10):
                mixed = sum(a[c, k] * pooled[n, k * d:(k + 1) * d] for k in range(4))
                naive[n, c] = model.head.weight[c] @ mixed + model.head.bias[c]
    torch.testing.assert_close(logits, naive, rtol=1e-5, atol=1e-5)
    logits2, experts = model(x, return_experts=True)
    assert experts[0].shape[:3] == (3, 4, 16)


def test_cost_counts_the_head():
    plain = count_cost(create_model("resnet8", 10, 1), [1, 28, 28])
    vam = count_cost(wrap_student("resnet8", 10, 1, blocks=8), [1, 28, 28])
    assert vam["params"] - plain["params"] == (10 * 8 + 10 * 8 + 10) - (10 * 64 + 10)
    assert vam["macs"] - plain["macs"] == 10 * 8  # C*K: the attention-weighted sum over blocks


# ---------------------------------------------------------------- hierarchy


def test_cluster_parsing_formats_and_errors(tmp_path):
    assert parse_clusters({"merged_classes": [[0, 2], [1]], "layer": 3, "names": ["a"]}, 3) == [[0, 2], [1]]
    assert parse_clusters({"merged_classes": [[1, 0], [2]]}, 3) == [[1, 0], [2]]  # official: only that key
    with pytest.raises(KdxError, match="class\\(es\\) 2 are in no cluster"):
        parse_clusters({"merged_classes": [[0], [1]]}, 3)
    with pytest.raises(KdxError, match="each class belongs to one cluster"):
        parse_clusters({"merged_classes": [[0, 1], [1, 2]]}, 3)
    with pytest.raises(KdxError, match="out of range"):
        parse_clusters({"merged_classes": [[0, 1, 2, 3]]}, 3)
    with pytest.raises(KdxError, match="merged_classes"):
        parse_clusters({"clusters": [[0, 1, 2]]}, 3)
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "layer3.json").write_text(json.dumps({"merged_classes": [[0, 1], [2]]}))
    (tmp_path / "clusters" / "layer1.json").write_text(json.dumps({"merged_classes": [[0, 1, 2]], "extra": 1}))
    h = load_hierarchy([tmp_path], 3)
    assert list(h) == [1, 3] and h[3]["clusters"] == [[0, 1], [2]]
    other = tmp_path / "mine.json"
    other.write_text(json.dumps({"merged_classes": [[0], [1], [2]]}))
    assert list(load_hierarchy([other], 3)) == [1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdxError, match="no clusters"):
        load_hierarchy([tmp_path / "empty"], 3)
    with pytest.raises(KdxError, match="no such file"):
        load_hierarchy([tmp_path / "missing.json"], 3)


def test_stage_mapping():
    assert map_stages(["s1", "s2", "s3"], [1, 2, 3]) == [("s1", 1), ("s2", 2), ("s3", 3)]
    assert map_stages(["a", "b", "c", "d"], [1, 2]) == [("b", 1), ("d", 2)]
    assert map_stages(["s1", "s2", "s3"], [1, 2, 3], ["s3", "s3", "s2"]) == [("s3", 1), ("s3", 2), ("s2", 3)]
    assert map_stages(["s1", "s2", "s3"], [1, 3], ["s2=3"]) == [("s2", 3)]
    # the official code: heads on stages 1 and 2 fed by explainer layers 1 and 2, deeper layers unused
    assert map_stages(["s1", "s2", "s3"], [1, 2, 3], mode="authors") == [("s1", 1), ("s2", 2)]
    with pytest.raises(KdxError, match="layers 1 and 2"):
        map_stages(["s1", "s2", "s3"], [2, 3], mode="authors")
    with pytest.raises(KdxError, match="unknown stage"):
        map_stages(["s1", "s2"], [1, 2], ["s1", "zz"])


def test_hierarchy_loss_weighting_against_hand_computation():
    clusters = [[0, 3], [1], [2]]  # sizes 2, 1, 1 -> weights 1/2, 1, 1
    heads = HierarchyHeads([("s", 1)], {"s": 4}, {1: {"clusters": clusters, "file": "-"}}, num_classes=4)
    torch.manual_seed(0)
    feat = torch.randn(5, 4, 3, 3)
    y = torch.tensor([0, 3, 1, 2, 3])
    (loss,) = heads.head_losses({"s": feat}, y)
    logits = heads.heads[0](feat.mean(dim=(2, 3)))
    target = [0, 0, 1, 2, 0]
    w = [0.5, 1.0, 1.0]
    num = sum(w[t] * -torch.log_softmax(logits[n], 0)[t] for n, t in enumerate(target))
    den = sum(w[t] for t in target)
    torch.testing.assert_close(loss, num / den)
    assert {"ce", "kd", "vam_entropy", "hierarchy"} <= set(methods_for("student", selectable_only=False))
    assert "hierarchy" not in methods_for("student")  # added by --hierarchy, not by --method


def test_teacher_cache_reuses_outputs():
    teacher = create_model("resnet8", 10, 1).eval()
    cache = TeacherCache(1 << 20)
    x = torch.randn(4, 1, 28, 28)
    a = cache(teacher, x)
    b = cache(teacher, x.clone())
    assert torch.equal(a, b) and cache.hits == 1
    c = cache(teacher, x.flip(0))
    assert cache.misses == 2 and not torch.equal(a, c)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vam")
    teacher = root / "teacher"
    result = invoke("train-teacher", "--arch", "resnet8", *TINY, "--out", teacher)
    assert result.exit_code == 0, result.output
    ana = root / "ana"
    (ana / "clusters").mkdir(parents=True)
    (ana / "clusters" / "layer1.json").write_text(json.dumps({"merged_classes": [[0, 1, 2, 3, 4, 6], [5, 7, 8, 9]]}))
    (ana / "clusters" / "layer2.json").write_text(json.dumps(
        {"merged_classes": [[0, 2, 4, 6], [1, 3], [5, 7, 9], [8]], "entropy": 0.3}))
    out = root / "cmp"
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", out, "--compare",
                    "--hierarchy", ana, "--vam-entropy", "0.01", "--vam-hard-eval", "--vam-blocks", "4")
    assert result.exit_code == 0, result.output
    return out, teacher, ana, result.output


def test_compare_end_to_end(compare_run):
    out, teacher, ana, text = compare_run
    assert "layer2 <-> layer 1" in text and "layer3 <-> layer 2" in text  # the printed mapping
    comp = pd.read_csv(out / "comparison.csv")
    assert list(comp["method"]) == ["ce", "kd", "kd+vam", "kd+hier", "kd+vam+hier"]
    assert list(comp["base"]) == ["ce", "kd", "kd", "kd", "kd"]
    for col in ("test_top1_best", "test_top1_last", "best_epoch", "params", "macs", "seconds"):
        assert comp[col].notna().all(), col
    assert comp["params"].iloc[2] < comp["params"].iloc[1]
    summary = pd.read_csv(out / "comparison_summary.csv")
    assert len(summary) == 5 and (out / "comparison.png").stat().st_size > 1000
    run = out / "seed1029" / "kd+vam+hier"
    metrics = pd.read_csv(run / "metrics.csv")
    for col in ("train_loss_ce", "train_loss_kd", "train_loss_vam_entropy", "train_loss_hierarchy", "tau",
                "vam_entropy"):
        assert col in metrics.columns, col
    att = pd.read_csv(run / "vam_attention.csv")
    assert list(att.columns) == ["epoch", "class", "class_name", "block", "weight"] and len(att) == 10 * 4
    assert att.groupby("class")["weight"].sum().round(5).eq(1).all()
    cost = pd.read_csv(run / "cost.csv")
    assert list(cost["variant"]) == ["student", "student+vam", "vam-overhead"]
    ce_metrics = pd.read_csv(out / "seed1029" / "ce" / "metrics.csv")
    assert "train_loss_kd" not in ce_metrics.columns
    # rerun: finished runs are skipped
    mtime = (run / "model.safetensors").stat().st_mtime
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", out, "--compare",
                    "--hierarchy", ana, "--vam-entropy", "0.01", "--vam-hard-eval", "--vam-blocks", "4")
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").stat().st_mtime == mtime


def test_load_evaluate_info_of_a_vam_student(compare_run):
    out = compare_run[0]
    run = out / "seed1029" / "kd+vam+hier"
    model, meta = kdx.load(run)
    assert isinstance(model, VAMStudent) and meta["kind"] == "vam-student" and meta["arch"] == "resnet8"
    vam = meta["vam"]
    assert vam["blocks"] == 4 and vam["tau0"] == 4.0 and vam["final_tau"] == 4.0  # quick recipe on the mini set
    assert vam["hard_eval"] is True
    assert vam["entropy_weight"] == 0.01 and model.routing == "hard" and not model.training
    hier = meta["hierarchy"]
    assert hier["weight"] == 0.1 and hier["stage_mapping"] == [{"stage": "layer2", "layer": 1},
                                                               {"stage": "layer3", "layer": 2}]
    assert meta["teacher"]["arch"] == "resnet8"
    assert not any(k.startswith("hierarchy") for k in model.state_dict())  # aux heads are training-only
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    result = invoke("evaluate", run, "--routing", "soft", "--tau", "0.5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["routing"] == "soft" and data["tau"] == 0.5
    result = invoke("info", run)
    assert result.exit_code == 0 and "vam-student" in result.output
    plain, pmeta = kdx.load(out / "seed1029" / "kd")
    assert pmeta["kind"] == "classifier" and not isinstance(plain, VAMStudent)


def test_user_errors(compare_run, tmp_path):
    teacher = compare_run[1]
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", tmp_path / "a",
                    "--vam-blocks", "5")
    assert result.exit_code == 2 and "does not divide" in result.output
    bad = tmp_path / "layer1.json"
    bad.write_text(json.dumps({"merged_classes": [[0, 1, 2]]}))
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", tmp_path / "b",
                    "--hierarchy", bad)
    assert result.exit_code == 2 and "in no cluster" in result.output
    result = invoke("train-vam-student", "--arch", "resnet8", *TINY, "--out", tmp_path / "c", "--compare")
    assert result.exit_code == 2 and "--teacher" in result.output


def test_summary_paired_delta_against_kd():
    import pandas as pd

    from kdx.commands.train_vam_student import summarize

    frame = pd.DataFrame({
        "method": ["kd", "kd+vam", "kd", "kd+vam", "kd", "kd+vam"], "base": ["kd"] * 6, "seed": [0, 0, 1, 1, 2, 2],
        "test_top1_best": [0.90, 0.91, 0.80, 0.83, 0.85, 0.85], "test_top1_last": [0.9, 0.9, 0.8, 0.8, 0.85, 0.86],
        "best_epoch": [4] * 6, "seconds": [1.0] * 6, "train_seconds": [1.0] * 6, "params": [10] * 6, "macs": [20] * 6})
    s = summarize(frame).set_index("method")
    # paired by seed: +0.01, +0.03, 0.00 -> mean 0.01333, sample std 0.01528
    assert s.loc["kd+vam", "test_top1_best_delta_vs_base_mean"] == pytest.approx(0.04 / 3)
    assert s.loc["kd+vam", "test_top1_best_delta_vs_base_std"] == pytest.approx(0.0152753, abs=1e-6)
    assert s.loc["kd", "test_top1_best_delta_vs_base_mean"] != s.loc["kd", "test_top1_best_delta_vs_base_mean"]  # NaN
    assert s.loc["kd+vam", "test_top1_last_delta_vs_base_mean"] == pytest.approx(0.01 / 3)


def test_a_compare_folder_in_use_is_refused(compare_run, tmp_path):
    """A second writer of a --compare group folder is refused before it changes anything (issue 13 item 18)."""
    import os
    import socket

    teacher = compare_run[1]
    out = tmp_path / "grid"
    out.mkdir()
    (out / ".kdx.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", out, "--compare",
                    "--overwrite")
    assert result.exit_code == 2 and "in use by process" in result.output
    assert sorted(p.name for p in out.iterdir()) == [".kdx.lock"]
