"""Issue 20: every registered feature method distils an explainer through its own method file.

The explainer declares its stages as zoo models do (kdx.models.taps: its expert layers, each the
experts' outputs concatenated along channels); each method here trains an explainer two steps
in stage 1 and two in stage 2 and, stopped after one step and resumed, ends bit-identical.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from kdx.cli import app
from kdx.distill.methods import methods_for
from kdx.models.routed import KDExplainer
from kdx.models.taps import Tap

runner = CliRunner()
FEATURE_METHODS = sorted(n for n, c in methods_for("explainer").items() if c.uses_features)
TINY = ["--widths", "8:8,8:8,8:8", "--stage1-epochs", "1", "--stage2-epochs", "1", "--max-train-samples", "100",
        "--batch-size", "50", "--device", "cpu", "--quiet", "--eval-batch-size", "500", "--threads", "1",
        "--ft-init-epochs", "1"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "teacher"
    r = invoke("train-teacher", "--arch", "resnet8", "--epochs", "1", "--max-train-samples", "100", "--batch-size", "50",
               "--device", "cpu", "--quiet", "--threads", "1", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_the_explainer_offers_every_feature_method_but_fsp():
    assert set(FEATURE_METHODS) == {"at", "cc", "crd", "fitnet", "ft", "nst", "pkt", "rkd", "sp", "vid"}
    assert "fsp" not in methods_for("explainer")  # needs a stem and equal channels (docs/method-decisions.md)


def test_explainer_stages_are_the_expert_layers_concatenated():
    torch.manual_seed(0)
    m = KDExplainer(10, in_channels=1, image_size=28, widths=[(8, 8), (8, 6), (8, 4)], hidden=16)
    assert m.stage_names == ["layers.0", "layers.1", "layers.2"] and m.stage_channels == [16, 24, 32]
    stem, taps = m.feature_taps()
    assert stem is None and taps == [Tap(f"layers.{i}", experts=True) for i in range(3)]
    assert m.final_tap() == taps[-1] and m.feat_modules() == list(m.layers)
    x = torch.randn(3, 1, 28, 28)
    _, experts = m(x, return_experts=True)  # (N, E, c, h, w) views
    seen = {}
    hooks = [m.get_submodule(t.source).register_forward_hook(lambda mod, i, o, n=t.source: seen.__setitem__(n, o))
             for t in taps]
    m(x)
    for h in hooks:
        h.remove()
    for t, ref in zip(taps, experts):
        got = t.read(seen, None)
        assert got.shape == (3, ref.shape[1] * ref.shape[2], *ref.shape[3:])
        assert torch.equal(got, ref.reshape(3, -1, *ref.shape[3:]))  # expert 0's channels first


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_feature_method_distils_an_explainer_and_resumes_identically(method, teacher, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    r = invoke("distill-explainer", "--method", f"kd,{method}", "--teacher", teacher, "--out", full, *TINY)
    assert r.exit_code == 0, r.output
    for stage in (1, 2):
        rows = pd.read_csv(full / f"stage{stage}" / "metrics.csv")
        assert f"train_loss_{method}" in rows.columns and rows[f"train_loss_{method}"].notna().all()
    r = invoke("distill-explainer", "--method", f"kd,{method}", "--teacher", teacher, "--out", part, "--max-steps", "1",
               *TINY)
    assert not (part / "results.json").exists() and not (part / "stage2").exists()  # stopped inside stage 1
    r = invoke("distill-explainer", "--resume", part, "--max-steps", "100", "--quiet", "--threads", "1")
    assert r.exit_code == 0, r.output
    for stage in (1, 2):
        a = load_file(full / f"stage{stage}" / "model.safetensors")
        b = load_file(part / f"stage{stage}" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"stage {stage} differs"


def test_the_method_list_is_structured_in_metadata_and_old_strings_still_read():
    """issue 19 item 3: metadata records ``method`` as a list; the joined strings of older
    checkpoints (and ``objective``) read the same."""
    from kdx.engine.metadata import method_label, method_names, validate_metadata

    assert method_names({"method": ["kd", "at"]}) == ["kd", "at"] == method_names({"method": "kd+at"})
    assert method_names({"objective": "ls"}) == ["ls"] and method_names({}) == []
    assert method_label({"method": ["kd", "at"]}) == "kd+at" and method_label({"kind": "explainer"}) == "explainer"
    validate_metadata({"kind": "classifier", "arch": "resnet8", "num_classes": 10, "method": ["kd"]}, "x")
    with pytest.raises(Exception, match="list of method names"):
        validate_metadata({"kind": "classifier", "arch": "resnet8", "num_classes": 10, "method": [1]}, "x")
