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
from kdx.models.routed.vam import VAMStudent, count_cost, default_blocks, wrap_student
from kdx.errors import KdxError
from kdx.models.routed.routing import route
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


def test_compare_lines_name_their_arm(compare_run):
    """issue 21 item 5: the per-arm lines of a grid ('hierarchy guidance: ...') say whose they are."""
    text = compare_run[3]
    lines = [ln for ln in text.splitlines() if "hierarchy guidance:" in ln]
    assert len(lines) == 2  # kd+tree and kd+tree+head
    assert lines[0].startswith("seed 1029 ") and "tree" in lines[0].split(":")[0]
    assert lines[0].split(":")[0] != lines[1].split(":")[0]


def test_compare_end_to_end(compare_run):
    out, teacher, ana, text = compare_run
    assert "arms: ce, kd, kd+tree, kd+head, kd+tree+head" in text
    assert "layer1 <-> layer 1" in text and "layer2 <-> layer 2" in text  # the authors' mapping, printed
    comp = pd.read_csv(out / "comparison.csv")
    assert list(comp["method"]) == ["ce", "kd", "kd+tree", "kd+head", "kd+tree+head"]
    assert list(comp["base"]) == ["ce", "kd", "kd", "kd", "kd"]
    for col in ("test_top1_best", "test_top1_last", "best_epoch", "params", "macs", "seconds"):
        assert comp[col].notna().all(), col
    assert comp["params"].nunique() == 1  # the tree and auxiliary heads are dropped at inference
    summary = pd.read_csv(out / "comparison_summary.csv")
    assert len(summary) == 5 and (out / "comparison.png").stat().st_size > 1000
    run = out / "seed1029" / "kd+tree+head"
    metrics = pd.read_csv(run / "metrics.csv")
    for col in ("train_loss_ce", "train_loss_kd", "train_loss_vam_head", "train_loss_vam_entropy",
                "train_loss_hierarchy", "tau", "vam_entropy"):
        assert col in metrics.columns, col
    tree = pd.read_csv(out / "seed1029" / "kd+tree" / "metrics.csv")
    assert "train_loss_hierarchy" in tree.columns and "train_loss_vam_head" not in tree.columns
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


def test_tree_and_aux_head_leave_a_plain_student(compare_run):
    out = compare_run[0]
    run = out / "seed1029" / "kd+tree+head"
    model, meta = kdx.load(run)
    assert meta["kind"] == "classifier" and not isinstance(model, VAMStudent)
    assert meta["vam_variant"] == {"variant": "tree+head", "head": "aux"}
    head = next(m for m in meta["methods"] if m["name"] == "vam_head")
    assert head["saved"] is False and head["blocks"] == 4 and head["params"]["vam_head_weight"] == 0.5
    hier = meta["hierarchy"]
    assert hier["weight"] == 0.1 and hier["mapping"] == "authors"
    assert hier["stage_mapping"] == [{"stage": "layer1", "layer": 1}, {"stage": "layer2", "layer": 2}]
    assert not any(k.startswith(("hierarchy", "head", "routing")) for k in model.state_dict())
    plain, _ = kdx.load(out / "seed1029" / "kd")
    assert set(plain.state_dict()) == set(model.state_dict())


def test_replacing_head_loads_evaluates_and_reports(compare_run, tmp_path):
    teacher = compare_run[1]
    run = tmp_path / "replace"
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", run,
                    "--vam", "head", "--vam-head", "replace", "--vam-entropy", "0.01", "--vam-hard-eval",
                    "--vam-blocks", "4")
    assert result.exit_code == 0, result.output
    assert "VAM variant: head (--vam head)" in result.output
    model, meta = kdx.load(run)
    assert isinstance(model, VAMStudent) and meta["kind"] == "vam-student" and meta["arch"] == "resnet8"
    vam = meta["vam"]
    assert vam["blocks"] == 4 and vam["tau0"] == 4.0 and vam["final_tau"] == 4.0  # quick recipe on the mini set
    assert vam["hard_eval"] is True
    assert vam["entropy_weight"] == 0.01 and model.routing == "hard" and not model.training
    assert "train_loss_vam_entropy" in pd.read_csv(run / "metrics.csv").columns
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    result = invoke("evaluate", run, "--routing", "soft", "--tau", "0.5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["routing"] == "soft" and data["tau"] == 0.5
    result = invoke("info", run)
    assert result.exit_code == 0 and "vam-student" in result.output


def test_default_variant_is_said_and_old_flags_are_handled(compare_run, tmp_path):
    from kdx.cli import main

    teacher, ana = compare_run[1], compare_run[2]
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", tmp_path / "t",
                    "--hierarchy", ana)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("VAM variant: tree (the default with a class tree")
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("VAM variant: off (the default without a class tree") and "--hierarchy" in first
    assert kdx.load(tmp_path / "o")[1]["vam_variant"]["variant"] == "off"
    with pytest.raises(SystemExit) as exc:
        main(["train-vam-student", "--no-vam", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and not (tmp_path / "x").exists()
    result = invoke("train-vam-student", "--teacher", teacher, *TINY, "--out", tmp_path / "y", "--vam", "tree")
    assert result.exit_code == 2 and "needs --hierarchy" in result.output
    result = invoke("train-vam-student", "--teacher", teacher, *TINY, "--out", tmp_path / "z", "--vam", "head",
                    "--hierarchy", ana)
    assert result.exit_code == 2 and "--vam tree or tree+head" in result.output
    # a config file of kdx 0.1 keeps its meaning: vam true was the replacing head, false + hierarchy the tree
    from kdx.config import StudentConfig, build_config

    for old, variant, head in ((True, "head", "replace"), (False, "off", "aux")):
        cfg = build_config(StudentConfig, cli={"vam": old, "out": "r"})
        assert (cfg.vam, cfg.vam_head) == (variant, head)
    cfg = build_config(StudentConfig, cli={"vam": True, "hierarchy": [str(ana)], "out": "r"})
    assert (cfg.vam, cfg.vam_head) == ("tree+head", "replace")
    cfg = build_config(StudentConfig, cli={"vam": False, "hierarchy": [str(ana)], "out": "r"})
    assert cfg.vam == "tree"


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


# ---------------------------------------------------------------- the authors' HierarchicalLoss, transcribed


class _AuthorsFeatureClassify(torch.nn.Module):
    """distiller_zoo/sub_modules.py of xmq1221/KDExplainer: AdaptiveAvgPool2d(1), squeeze, Linear."""

    def __init__(self, input_channels, num_classes):
        super().__init__()
        self.global_avg_pool = torch.nn.AdaptiveAvgPool2d(output_size=1)
        self.fc = torch.nn.Linear(input_channels, num_classes)

    def forward(self, x):
        return self.fc(self.global_avg_pool(x).squeeze())


class _AuthorsHierarchicalLoss(torch.nn.Module):
    """distiller_zoo/hierarchical_loss.py: one classifier per layer name on feat_s[int(name[-1])],
    CrossEntropyLoss(weight = 1/|cluster|) on the cluster of the target (a per-sample dict look-up),
    the layers' losses summed; train_student.py adds it as ``beta * loss_kd``."""

    def __init__(self, cluster_info, feat_s):
        super().__init__()
        self.cluster_info = cluster_info
        self.classifiers = torch.nn.ModuleDict()
        self.loss_fn = {}
        for name, info in cluster_info.items():
            idx = int(name[-1])
            self.classifiers[name] = _AuthorsFeatureClassify(feat_s[idx].shape[1], len(info))
            weight = torch.empty(len(info))
            for i, cluster in enumerate(info):
                weight[i] = 1 / len(cluster)
            self.loss_fn[name] = torch.nn.CrossEntropyLoss(weight=weight)
        self.maps = {name: {c: i for i, cl in enumerate(info) for c in cl} for name, info in cluster_info.items()}

    def forward(self, feat_s, target):
        losses = []
        for name, classifier in self.classifiers.items():
            pred = classifier(feat_s[int(name[-1])])
            t = torch.empty_like(target)
            for i, x in enumerate(target):
                t[i] = self.maps[name][x.item()]
            losses.append(self.loss_fn[name](pred, t))
        return sum(losses)


def test_tree_loss_equals_the_authors_hierarchical_loss(tmp_path):
    """--vam tree on resnet8: W * the authors' HierarchicalLoss on their feature list (f0 = stem,
    f1 = layer1, f2 = layer2) with layer1-merge.json / layer2-merge.json, on fixed tensors."""
    from kdx.distill.methods import MethodContext, StepOutputs
    from kdx.distill.methods.hierarchy import Hierarchy
    from kdx.models import FeatureHooks

    info = {"layer1": [[0, 1, 2, 3, 4, 6], [5, 7, 8, 9]], "layer2": [[0, 2, 4, 6], [1, 3], [5, 7, 9], [8]]}
    for name, merged in info.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"merged_classes": merged}))
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_channels=3).eval()
    method = Hierarchy(MethodContext(params={"hierarchy": [str(tmp_path)], "hierarchy_weight": 0.3,
                                             "hierarchy_mapping": "authors", "seed": 5},
                                     student=student, num_classes=10))
    x = torch.randn(6, 3, 16, 16)
    y = torch.tensor([0, 5, 8, 3, 9, 1])
    hooks = FeatureHooks(student, method.stages()[0]).register()
    with torch.no_grad():
        logits = student(x)
    ours = method.loss(StepOutputs(x=x, y=y, logits=logits, model=student, features_s=dict(hooks.features)))
    hooks.remove()
    with torch.no_grad():  # the authors' feature list of a CIFAR resnet (models/resnet.py, is_feat=True)
        f0 = torch.relu(student.bn1(student.conv1(x)))
        f1 = student.layer1(f0)
        f2 = student.layer2(f1)
    feat_s = [f0, f1, f2]
    oracle = _AuthorsHierarchicalLoss(info, feat_s)
    for i, name in enumerate(info):  # same head weights
        oracle.classifiers[name].fc.load_state_dict(method.heads.heads[i].state_dict())
    beta = 0.3
    torch.testing.assert_close(ours["hierarchy"], beta * oracle(feat_s, y))


def test_tree_from_an_explainer_run(compare_run, tmp_path):
    """--hierarchy EXPLAINER_RUN: the run's class tree under hard routing, written into the run."""
    from kdx.analysis.clusters import explainer_tree

    teacher = compare_run[1]
    exp = tmp_path / "exp"
    result = invoke("distill-explainer", "--method", "kd", "--teacher", teacher, "--stage1-epochs", "1",
                    "--stage2-epochs", "1", "--max-train-samples", "200", "--batch-size", "50", "--quiet",
                    "--out", exp)
    assert result.exit_code == 0, result.output
    run = tmp_path / "s"
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", run,
                    "--hierarchy", exp)
    assert result.exit_code == 0, result.output
    model, _ = kdx.load(exp)
    tree = explainer_tree(model)
    for layer in (1, 2):
        saved = json.loads((run / "clusters" / f"layer{layer}.json").read_text())
        assert saved["merged_classes"] == tree[layer - 1]
    meta = kdx.load(run)[1]
    assert meta["hierarchy"]["clusters"]["1"] == tree[0] and meta["vam_variant"]["variant"] == "tree"
    result = invoke("train-vam-student", "--teacher", teacher, "--arch", "resnet8", *TINY, "--out", tmp_path / "t",
                    "--hierarchy", teacher)
    assert result.exit_code == 2 and "not an explainer run" in result.output


def test_one_seed_cells_carry_no_nan_std():
    from kdx.commands.train_vam_student import pct_pm

    assert pct_pm(0.245, float("nan")) == "24.50%"
    assert pct_pm(0.245, 0.01) == "24.50% ± 1.00"
    assert pct_pm(float("nan")) == "-"


def test_a_hierarchy_of_another_dataset_is_refused(tmp_path):
    """issue 23: cluster files record the class names they were computed on; those of another
    dataset with as many classes are refused in one line (the official format has no names: taken)."""
    import json

    from kdx.distill.hierarchy import check_class_names, load_hierarchy
    from kdx.errors import KdxError

    names = [str(i) for i in range(10)]
    good = {"merged_classes": [list(range(5)), list(range(5, 10))], "class_names": names}
    (tmp_path / "layer1.json").write_text(json.dumps(good))
    h = load_hierarchy([tmp_path], 10)
    check_class_names(h, names)
    (tmp_path / "layer1.json").write_text(json.dumps(dict(good, class_names=[f"c{i}" for i in range(10)])))
    with pytest.raises(KdxError, match="another dataset"):
        check_class_names(load_hierarchy([tmp_path], 10), names)
    (tmp_path / "layer1.json").write_text(json.dumps({"merged_classes": good["merged_classes"]}))
    check_class_names(load_hierarchy([tmp_path], 10), names)  # official format: no names to check
