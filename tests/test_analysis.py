"""kdx.analysis and `kdx analyze-conflicts`: composition, entropy, sharing, clusters, AUROC,
per-subtask gradient components (against a per-class autograd loop) and an end-to-end run."""
from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
import torch
from fakes import fake_explainer_run
from typer.testing import CliRunner

from kdx.analysis import attention as A
from kdx.analysis.clusters import cluster_json, hard_clusters
from kdx.analysis.conflicts import generic_components, conflict_frame, conflict_stats, loss_for, subtask_components
from kdx.analysis.metrics import auroc, subtask_metrics
from kdx.analysis.routed import as_routed, routing_matrices
from kdx.cli import app
from kdx.models.routed import KDExplainer
from kdx.models.routed.tree import hard_tree

torch.set_num_threads(1)


def tiny(classes=4, seed=0, **kw):
    torch.manual_seed(seed)
    m = KDExplainer(num_classes=classes, in_channels=1, image_size=16, widths=[(8, 8), (8, 8), (8, 4)], **kw).eval()
    with torch.no_grad():
        for layer in m.layers:  # non-trivial BN statistics
            layer.bn1_running_mean.normal_(0, 0.3)
            layer.bn2_running_var.uniform_(0.5, 2.0)
    return m


# ------------------------------------------------------------------ attention
def test_compose_entropy_overlap_known_numbers():
    w1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])           # 2 children x 2 parents
    w2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # 3 classes x 2 experts
    att = A.compose([w1, w2])
    assert torch.allclose(att[1], w2)
    assert torch.allclose(att[0], torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.75, 0.25]]))
    assert torch.allclose(att[0].sum(1), torch.ones(3))
    h = A.entropy(att[0])
    expect = torch.tensor([0.0, math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    assert torch.allclose(h, expect.float(), atol=1e-6)
    assert torch.allclose(A.normalised_entropy(att[0]), (expect / math.log(2)).float(), atol=1e-6)
    ov = A.overlap(att[0])
    assert ov[0, 1] == pytest.approx(0.5) and ov[0, 2] == pytest.approx(0.75) and ov[1, 2] == pytest.approx(0.75)
    assert torch.allclose(torch.diagonal(ov), torch.ones(3))
    sw = A.shared_weight(att[0])
    assert sw.shape == (2, 3, 3) and sw[1, 1, 2] == pytest.approx(0.25)


def test_attention_entropy_at_tau1_by_hand():
    """tau 1 = the routing's own distribution p = softmax(R / 0.5); R chosen so that p is exact."""
    q = 0.5 * math.log(3)  # softmax([0, q] / 0.5) = [1/4, 3/4]
    m = KDExplainer(num_classes=3, in_channels=1, image_size=16, experts=(2, 2), widths=[(4, 4), (4, 4)]).eval()
    with torch.no_grad():
        m.branches[0].copy_(torch.tensor([[0.0, q], [0.0, 0.0]]))     # p1 = [[1/4, 3/4], [1/2, 1/2]]
        m.branches[1].copy_(torch.tensor([[q, 0.0], [0.0, 0.0], [0.0, q]]))  # p2 = [[3/4, 1/4], [1/2, 1/2], [1/4, 3/4]]
    routed = as_routed(m)
    final = A.compose(routing_matrices(routed, "soft", 0.5))
    tau1 = A.compose(routing_matrices(routed, "soft", A.ROUTING_TAU))
    # layer 1 at tau 1: p2 @ p1 = [[5/16, 11/16], [3/8, 5/8], [7/16, 9/16]]; layer 2: p2
    assert torch.allclose(tau1[0], torch.tensor([[5 / 16, 11 / 16], [6 / 16, 10 / 16], [7 / 16, 9 / 16]]), atol=1e-6)

    def h(*ps):  # mean binary entropy of the rows (x, 1 - x)
        return sum(-x * math.log(x) - (1 - x) * math.log(1 - x) for x in ps) / len(ps)

    row = A.entropy_summary(final, tau1)
    assert row["attention_entropy_tau1_l1"] == pytest.approx(h(5 / 16, 6 / 16, 7 / 16), abs=1e-6)
    assert row["attention_entropy_tau1_l2"] == pytest.approx(h(3 / 4, 1 / 2, 1 / 4), abs=1e-6)
    assert row["norm_attention_entropy_tau1_l2"] == pytest.approx(h(3 / 4, 1 / 2, 1 / 4) / math.log(2), abs=1e-6)
    # final tau 0.5: a = p^2 / sum p^2 -> leaf rows [9/10, 1/10], [1/2, 1/2], [1/10, 9/10]
    assert row["attention_entropy_l2"] == pytest.approx(h(9 / 10, 1 / 2, 1 / 10), abs=1e-6)
    assert sorted(row) == sorted(f"{n}attention_entropy{t}_l{l}" for n in ("", "norm_") for t in ("", "_tau1")
                                 for l in (1, 2))


def test_compose_rows_sum_to_one_on_explainer():
    m = tiny(classes=5)
    for mode in ("soft", "hard"):
        for a in A.compose(routing_matrices(as_routed(m), mode, 0.5)):
            assert torch.allclose(a.sum(1), torch.ones(5), atol=1e-5)


# ------------------------------------------------------------------ clusters
def test_clusters_hand_made_tree_and_hard_tree():
    hard = [torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])]  # expert 1 empty
    groups = hard_clusters(hard)
    assert groups == [[(0, [0, 2]), (2, [1, 3])]]
    doc = cluster_json(groups[0], 1, ["a", "b", "c", "d"], "kd")
    assert doc["merged_classes"] == [[0, 2], [1, 3]] and doc["names"] == [["a", "c"], ["b", "d"]]
    m = tiny(classes=6, seed=3)
    groups = hard_clusters(A.compose(routing_matrices(as_routed(m), "hard")))
    tree = hard_tree(m)
    for l, layer in enumerate(tree["layers"]):
        assert [(g["expert"], g["classes"]) for g in layer["groups"] if g["classes"]] == groups[l]
        assert sorted(c for _, cl in groups[l] for c in cl) == list(range(6))


# ------------------------------------------------------------------ metrics
def test_auroc_against_hand_computation():
    s = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    pos = torch.tensor([0, 0, 1, 1, 1]).bool()
    # pairs (pos, neg): (0.35,0.1)=1 (0.35,0.4)=0 (0.8,.)=1,1 (0.4,0.1)=1 (0.4,0.4)=0.5 -> 4.5/6
    assert auroc(s, pos) == pytest.approx(4.5 / 6)
    assert math.isnan(auroc(s, torch.zeros(5).bool()))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    rows = subtask_metrics(logits, torch.tensor([0, 0, 1]))
    assert rows[0]["ovr_accuracy"] == pytest.approx(1 / 3) and rows[0]["class_top1"] == pytest.approx(0.5)
    assert rows[1]["class_top1"] == 0.0


# ------------------------------------------------------------------ gradient components
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_components_match_per_class_autograd_and_sum(mode):
    m = tiny(classes=4, seed=1, routing=mode, tau=0.7)
    x, y = torch.randn(10, 1, 16, 16), torch.randint(0, 4, (10,))
    losses = {"objective": loss_for("ls", {"smoothing": 0.1}), "ce": loss_for("ce", None)}
    batches = [(x[:6], y[:6], None), (x[6:], y[6:], None)]
    fast = subtask_components(as_routed(m), batches, losses, 10)
    gen = generic_components(as_routed(m), batches, losses, 10)
    z = m(x)
    for l, layer in enumerate(m.layers):
        ps = list(layer.parameters())
        for s, fn in enumerate(losses.values()):
            G = torch.autograd.grad(fn(z, y), z, retain_graph=True)[0]
            full = KDExplainer.per_expert(torch.autograd.grad(fn(z, y), ps, retain_graph=True)).double()
            total = torch.zeros_like(full)
            for c in range(4):
                gc = KDExplainer.per_expert(torch.autograd.grad(z, ps, G * (torch.arange(4) == c), retain_graph=True))
                for e in range(layer.experts):
                    r = s * 4 + c
                    rows = fast.rows[l][e].tolist()
                    f = fast.grads[l][e][rows.index(r)] if r in rows else torch.zeros(gc.shape[1], dtype=torch.float64)
                    tol = 1e-5 * (1 + float(gc.abs().max()))
                    assert (f - gc[e]).abs().max() < tol
                    assert (gen.grads[l][e][r] - gc[e]).abs().max() < tol
                    total[e] += f
            assert (total - full).abs().max() < 1e-6 * (1 + float(full.abs().max()))
    frame = conflict_frame(fast, A.compose(routing_matrices(as_routed(m), mode)), "x")
    assert set(frame["signal"]) == {"objective", "ce"}
    if mode == "hard":  # only subtasks routed through the same expert are compared
        assert (frame["shared_weight"] > 0).all()
    st = conflict_stats(frame, "ce")
    assert 0 <= st["conflict_rate"] <= 1


# ------------------------------------------------------------------ end to end
DOC_COLUMNS = re.compile(r"^### `(\w+)\.csv`\n\n(?:[^|\n].*\n\n)?\| column \|.*?\n((?:\|.*\n)+)", re.M)


def test_end_to_end(tmp_path):
    runs = [fake_explainer_run(tmp_path, o, i) for i, o in enumerate(("ce", "ls", "kd"))]
    out = tmp_path / "ana"
    res = CliRunner().invoke(app, ["analyze-conflicts", *map(str, runs), "--images", "64", "--batch-size", "32",
                                   "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    # not a terminal: one done line per run, in order (and, on a slow machine, 'at work' lines between)
    done = [line for line in res.output.splitlines() if line.startswith("analyze-conflicts: run ")
            and " done in " in line]
    assert [line.split(" done in ")[0] for line in done] == [f"analyze-conflicts: run {i}/3 '{lab}'"
                                                             for i, lab in enumerate(("ce", "ls", "kd"), start=1)]
    doc = (__import__("pathlib").Path(__file__).parents[1] / "docs" / "analyze-conflicts.md").read_text()
    documented = {m.group(1): [row.split("|")[1].strip().strip("`") for row in m.group(2).strip().splitlines()[1:]]
                  for m in DOC_COLUMNS.finditer(doc + "\n")}
    for name in ("subtask_attention", "entropy", "sharing", "conflicts", "subtasks", "clusters"):
        cols = list(pd.read_csv(out / f"{name}.csv").columns)
        assert cols == documented[name], name
    summary = pd.read_csv(out / "summary.csv")
    patterns = [re.compile("^" + re.escape(c).replace("<l>", r"\d+").replace("<signal>", "(objective|ce)") + "$")
                for c in documented["summary"]]
    assert all(any(p.match(c) for p in patterns) for c in summary.columns), list(summary.columns)
    assert "norm_attention_entropy_l3" in summary.columns and "conflict_rate_objective" in summary.columns
    assert not any(c.startswith(("entropy_l", "norm_entropy_l")) for c in summary.columns)
    # the fake runs end at tau 1, where the final-tau and the tau-1 attention are the same
    for l in (1, 2, 3):
        for n in ("", "norm_"):
            assert summary[f"{n}attention_entropy_l{l}"].tolist() == \
                pytest.approx(summary[f"{n}attention_entropy_tau1_l{l}"].tolist(), abs=1e-6)
    assert list(summary["run"]) == ["ce", "ls", "kd"]
    # issue 21 item 5: the names of the other files (method, top1), not objective/accuracy
    assert list(summary["method"]) == ["ce", "ls", "kd"] and summary["top1"].between(0, 1).all()
    assert "objective" not in summary.columns and "accuracy" not in summary.columns
    assert summary.loc[2, "images"] == 64
    conf = pd.read_csv(out / "conflicts.csv")
    assert set(conf[conf["run"] == "ls"]["signal"]) == {"objective", "ce"}
    assert set(conf[conf["run"] == "kd"]["signal"]) == {"ce"}  # teacher missing: objective signal skipped
    main = json.loads((out / "clusters" / "layer3.json").read_text())
    assert main["run"] == "kd" and sorted(c for g in main["merged_classes"] for c in g) == list(range(10))
    for lab in ("ce", "ls", "kd"):
        for l in (1, 2, 3):
            assert (out / "clusters" / lab / f"layer{l}.json").is_file()
            assert (out / "plots" / f"attention_{lab}_layer{l}.png").stat().st_size > 1000
        assert (out / "plots" / f"tree_{lab}.png").is_file() and (out / "plots" / f"conflicts_{lab}.png").is_file()
    assert (out / "plots" / "entropy.png").is_file()
    report = (out / "report.md").read_text()
    for lab in ("ce", "ls", "kd"):
        assert f"**{lab}**" in report
    assert "plots/entropy.png" in report
    assert "norm_attention_entropy_tau1_l3" in report and "mean normalised attention entropy (tau 1)" in report
    # bad input: a classifier checkpoint / mismatched labels -> one-line errors, exit code 2
    res = CliRunner().invoke(app, ["analyze-conflicts", str(runs[0]), "--label", "a", "--label", "b",
                                   "--out", str(out)])
    assert res.exit_code == 2 and "--label" in res.output
    res = CliRunner().invoke(app, ["analyze-conflicts", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 2 and "not found" in res.output


# ------------------------------------------------------------------ one implementation of the forward
@pytest.mark.parametrize("size,experts", [(16, None), (32, (2, 4)), (64, (2, 4))])
def test_model_parts_are_the_forward(size, experts):
    """The public parts the analysis runs (expert_pass, leaf_features, leaf_head_weight, head_logits,
    mix) compose to exactly ``forward``: leaf pool folded (16 px), pooled before mixing (32 px, 8x8
    maps), and with the stem (64 px)."""
    from kdx.models.routed.explainer import mix

    torch.manual_seed(0)
    widths = [(4, 4)] * (len(experts) if experts else 3)
    m = KDExplainer(num_classes=5, in_channels=1, image_size=size, experts=experts, widths=widths, hidden=8).eval()
    x = torch.randn(3, 1, size, size)
    with torch.no_grad():
        W = m.routing_weights()
        _, outs = m.expert_pass(x, W)
        last = outs[-1]
        z = m.head_logits(mix(W[-1], m.leaf_features(last)).view(5, 3, -1), m.leaf_head_weight(*last.shape[-2:]))
        assert torch.equal(z, m(x))


def test_components_with_pooling_before_mixing():
    """The fast path pulls cotangents back through the model's own leaf_features (here a 8x8 -> 7x7
    pooling matmul) and agrees with batched autograd on the whole model."""
    torch.manual_seed(2)
    m = KDExplainer(num_classes=3, in_channels=1, image_size=32, experts=(2, 4), widths=[(4, 4), (4, 4)],
                    hidden=8, routing="soft", tau=0.7).eval()
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 3, (4,))
    losses = {"ce": loss_for("ce", None)}
    steps, gsteps = [], []
    fast = subtask_components(as_routed(m), [(x, y, None)], losses, 4, progress=steps.append)
    gen = generic_components(as_routed(m), [(x, y, None)], losses, 4, progress=gsteps.append)
    assert steps == ["batch 1/1, chunk 1/1, layer 2", "batch 1/1, chunk 1/1, layer 1"]
    assert gsteps == ["batch 1/1, chunk 1/1"]
    for l in range(2):
        for e in range(m.experts[l]):
            g = gen.grads[l][e][fast.rows[l][e]]
            assert (fast.grads[l][e] - g).abs().max() < 1e-5 * (1 + float(g.abs().max()))


def test_log_tensorboard_logs_the_heatmaps(tmp_path, monkeypatch):
    """issue 13 item 13: --log tensorboard puts every heatmap PNG (HWC uint8) and the summary numbers
    into OUT/tensorboard; CSV/PNG output unchanged."""
    import sys
    import types

    import numpy as np

    calls = {"image": [], "scalar": [], "dir": []}

    class Writer:
        def __init__(self, log_dir):
            calls["dir"].append(log_dir)

        def add_image(self, tag, arr, step=0, dataformats="CHW"):
            calls["image"].append((tag, arr.shape, arr.dtype, dataformats))

        def add_scalar(self, tag, v, step=0):
            calls["scalar"].append((tag, v))

        def close(self):
            pass

    stub = types.ModuleType("torch.utils.tensorboard")
    stub.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", stub)
    runs = [fake_explainer_run(tmp_path, o, i) for i, o in enumerate(("ce", "kd"))]
    out = tmp_path / "ana"
    res = CliRunner().invoke(app, ["analyze-conflicts", *map(str, runs), "--images", "32", "--batch-size", "32",
                                   "--out", str(out), "--device", "cpu", "--no-conflicts", "--log", "tensorboard"])
    assert res.exit_code == 0, res.output
    assert calls["dir"] == [str(out / "tensorboard")]
    tags = {t for t, *_ in calls["image"]}
    for lab in ("ce", "kd"):
        for l in (1, 2, 3):
            assert f"{lab}/attention_{lab}_layer{l}" in tags
    assert "all/entropy" in tags
    for tag, shape, dtype, fmt in calls["image"]:
        assert fmt == "HWC" and len(shape) == 3 and shape[2] == 3 and dtype == np.uint8 and min(shape[:2]) > 50, tag
    assert any(t.startswith("kd/") for t, _ in calls["scalar"])
    assert (out / "summary.csv").is_file() and (out / "plots" / "attention_ce_layer1.png").is_file()


def test_log_tensorboard_analysis_without_the_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    runs = [fake_explainer_run(tmp_path, "ce", 0)]
    res = CliRunner().invoke(app, ["analyze-conflicts", *map(str, runs), "--images", "32", "--batch-size", "32",
                                   "--out", str(tmp_path / "a"), "--device", "cpu", "--no-conflicts", "--log", "tensorboard"])
    assert res.exit_code == 2 and "pip install 'kdx[tensorboard]'" in res.output
    assert "Traceback" not in res.output
