"""KDExplainer network, routing and official-checkpoint import, checked against an oracle.

The oracle is ``reference.authors_explainer.AuthorsExplainer``: the authors' ``LEARNTOBRANCH_Deep``
(LEARNTOBRANCH.py) transcribed loop by loop, with the official module names, so its
``state_dict()`` IS an official one; its CIFAR path is the 32-px model, its other path the
large-input one. benchmarks/explainer_throughput.py times the same transcription.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdx.errors import KdxError
from kdx.models.routed import KDExplainer, from_official_state_dict, route, routing_entropy, routing_probs, tau_at
from kdx.models.routed.explainer import stem_size, to_official_state_dict
from reference.authors_explainer import AuthorsExplainer, routing_weights  # the repo root: tests/conftest.py

TSV = Path(__file__).parent / "data" / "explainer_state_dict_layout.tsv"


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- oracle
# AuthorsExplainer: reference/authors_explainer.py (the one transcription of the authors' network)


def randomize(model, seed):
    """Random weights everywhere, BN running stats and counters included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith("num_batches_tracked"):
                t.copy_(torch.randint(0, 1000, t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1:  # BN weight
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.startswith("branch"):
                t.copy_(torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel()))
    return model


def tsv_rows(classes, head):
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines()[1:]]
    return [(r[2], r[3]) for r in rows if r[0] == str(classes) and r[1] == head]


def layout(sd):
    return [(k, "scalar" if v.dim() == 0 else "x".join(map(str, v.shape))) for k, v in sd.items()]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# --------------------------------------------------------------------------- layout
@pytest.mark.parametrize("classes,head", [(10, "ce"), (10, "nce"), (100, "ce"), (100, "nce")])
def test_official_layout_matches_tsv(classes, head):
    rows = tsv_rows(classes, head)
    assert len(rows) == (266 if classes == 10 else 806)
    assert layout(AuthorsExplainer(classes, head).state_dict()) == rows
    assert layout(to_official_state_dict(KDExplainer(classes, head=head))) == rows


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("classes,head", [(10, "ce"), (10, "nce"), (100, "ce"), (100, "nce")])
def test_import_matches_oracle(classes, head):
    torch.manual_seed(0)
    oracle = randomize(AuthorsExplainer(classes, head), seed=classes).eval()
    sd = oracle.state_dict()
    model = from_official_state_dict(sd).eval()
    assert (model.num_classes, model.head_type, model.experts) == (classes, head, (2, 4, 8))
    x = torch.randn(2 if classes == 100 else 3, 3, 32, 32)
    with torch.no_grad():
        for mode, tau in (("soft", 10.0), ("soft", 10.0 / 7), ("hard", 1.0)):
            model.routing, model.tau = mode, tau
            ref, out = oracle(x, tau, mode == "soft"), model(x)
            assert out.shape == (x.shape[0], classes)
            assert rel_err(out, ref) <= 1e-5, (mode, tau)
    # exact round trip, same key order, dtypes and values
    back = to_official_state_dict(model)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape and torch.equal(back[k], sd[k]), k


def test_small_grayscale_and_two_layer_inputs_match_oracle():
    torch.manual_seed(1)
    # 28 px: 3x3 leaf maps; 2 layers: 8x8 maps pooled DOWN to 7x7
    for in_ch, size, experts in ((1, 28, (2, 4, 8)), (3, 32, (2, 3))):
        oracle = randomize(AuthorsExplainer(10, "ce", experts=experts, in_channels=in_ch), seed=size).eval()
        model = from_official_state_dict(oracle.state_dict()).eval()
        assert not model.use_stem and model.experts == experts
        ref_model = KDExplainer(10, in_channels=in_ch, image_size=size, experts=None if size != 32 else experts)
        assert ref_model.experts == experts and not ref_model.use_stem
        assert layout(to_official_state_dict(ref_model)) == layout(oracle.state_dict())
        x = torch.randn(2, in_ch, size, size)
        with torch.no_grad():
            assert rel_err(model(x), oracle(x)) <= 1e-5  # soft routing at tau 10 (the authors' defaults)


def large_input_max_abs_diff(head, seed=64, dtype=torch.float32):
    """Max |kdx - authors| of the logits of an imported 64-px ``LEARNTOBRANCH_Deep`` state dict (its path
    off CIFAR: the stem, 4 expert layers),
    per routing (soft at tau 10 and 10/7, hard), eval mode."""
    torch.manual_seed(seed)
    oracle = randomize(AuthorsExplainer(10, head, cifar=False), seed=seed).eval()
    model = from_official_state_dict(oracle.state_dict()).eval().to(dtype)
    oracle.to(dtype)
    assert model.use_stem and model.experts == (2, 4, 8, 16) and model.head_type == head
    assert model.widths == [[64, 64], [64, 64], [64, 64], [64, 32]]
    assert layout(to_official_state_dict(KDExplainer(10, image_size=64, head=head))) == layout(oracle.state_dict())
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(seed)).to(dtype)
    diffs = {}
    with torch.no_grad():
        for mode, tau, soft in (("soft", 10.0, True), ("soft", 10.0 / 7, True), ("hard", 1.0, False)):
            model.routing, model.tau = mode, tau
            ref, out = oracle(x, tau, soft), model(x)
            assert out.shape == ref.shape == (3, 10) and ref.abs().max() > 1e-3
            diffs[(mode, tau)] = (out - ref).abs().max().item()
    return diffs


@pytest.mark.parametrize("head", ["ce", "nce"])
def test_large_input_import_matches_authors_forward(head):
    """64 px: stem conv 7x7 (stride 1, no padding) + 4 expert layers, against the transcription
    of the authors' forward; also the import under the old stride-2 stem reading would differ."""
    diffs = large_input_max_abs_diff(head)
    assert max(diffs.values()) <= 1e-5, diffs  # measured: <= 7.2e-6 (fp32 rounding; logits up to ~10)
    diffs = large_input_max_abs_diff(head, dtype=torch.float64)  # kdx computes routing weights in fp32
    assert max(diffs.values()) <= 1e-6 and diffs[("hard", 1.0)] <= 1e-12, diffs
    assert stem_size(64) == 29 and KDExplainer(10, image_size=64).stem[0].stride == (1, 1)


def test_large_input_model_routes_16_experts():
    # the 4-layer model routes 16 experts and uses the stem (its weights get gradients)
    model = KDExplainer(10, image_size=64)
    assert [tuple(r.shape) for r in model.routing_logits()] == [(4, 2), (8, 4), (16, 8), (10, 16)]
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0
    small = KDExplainer(10)
    small(torch.randn(2, 3, 32, 32)).sum().backward()
    assert small.stem[0].weight.grad is None


def test_import_errors():
    sd = AuthorsExplainer(10, "nce").state_dict()
    with pytest.raises(KdxError, match="ce"):
        from_official_state_dict(sd, head="ce")
    bad = dict(sd)
    del bad["conv3_1.1.running_var"]
    with pytest.raises(KdxError, match=r"missing key 'conv3_1\.1\.running_var'"):
        from_official_state_dict(bad)
    bad = dict(sd, **{"branch_3.0": torch.zeros(8, 5)})
    with pytest.raises(KdxError, match="branch_3.0"):
        from_official_state_dict(bad)
    bad = dict(sd, extra=torch.zeros(1))
    with pytest.raises(KdxError, match="unexpected key 'extra'"):
        from_official_state_dict(bad)
    m = from_official_state_dict({f"module.{k}": v for k, v in sd.items()})
    assert m.head_type == "nce"


# --------------------------------------------------------------------------- routing
def test_routing_function():
    g = torch.Generator().manual_seed(0)
    R = torch.randn(7, 5, generator=g)
    p = routing_probs(R)
    assert torch.allclose(p, torch.softmax(R / 0.5, dim=1))
    for mode in ("soft", "hard", "gumbel"):
        a = route(R, 2.0, mode, generator=g)
        assert a.shape == R.shape and torch.allclose(a.sum(1), torch.ones(7))
    hard = route(R, 1.0, "hard")
    assert torch.equal(hard, F.one_hot(p.argmax(1), 5).float())
    assert torch.allclose(route(R, 1e-3, "soft"), hard, atol=1e-4)  # tau -> 0 approaches hard
    assert torch.allclose(route(R, 10.0, "soft"), routing_weights(R, 10.0, soft=True), atol=1e-6)
    assert torch.equal(route(R, 1.0, "hard"), routing_weights(R, 1.0, soft=False))
    assert torch.equal(route(R, 3.0, "gumbel", training=False), route(R, 3.0, "soft"))
    assert not torch.allclose(route(R, 3.0, "gumbel", generator=g), route(R, 3.0, "soft"))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(route(R, 3.0, "gumbel", generator=g1), route(R, 3.0, "gumbel", generator=g2))
    Rg = R.clone().requires_grad_()
    (route(Rg, 2.0, "soft") * torch.randn(7, 5, generator=g)).sum().backward()
    assert Rg.grad is not None and Rg.grad.abs().sum() > 0
    ent = routing_entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert torch.allclose(ent, torch.tensor([0.0, math.log(2)]))
    assert routing_entropy(route(R, 1.0, "soft")).shape == (7,)
    with pytest.raises(KdxError):
        route(R, 1.0, "sparse")
    assert tau_at(1) == 10.0 and tau_at(4) == 2.5 and tau_at(2, tau0=1.0) == 0.5
    with pytest.raises(KdxError):
        tau_at(0)


# --------------------------------------------------------------------------- model API
def test_model_api():
    torch.manual_seed(0)
    model = KDExplainer(10)
    cfg = json.loads(json.dumps(model.config_dict()))
    clone = KDExplainer(**cfg)
    clone.load_state_dict(model.state_dict())
    routing = [r.detach().clone() for r in model.routing_logits()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.reset_parameters()
    for r, r0 in zip(model.routing_logits(), routing):
        assert torch.equal(r, r0 + 1.0)
    assert not torch.equal(model.layers[0].conv1_weight, before["layers.0.conv1_weight"] + 1)
    assert torch.all(model.layers[1].bn1_weight == 1) and torch.all(model.heads.b1 == 0)
    model.reset_parameters(keep_routing=False)
    assert all(0 <= r.min() and r.max() < 1 for r in model.routing_logits())
    assert not torch.equal(model.routing_logits()[0], routing[0] + 1.0)
    ids = {id(p) for p in model.routing_logits()}
    assert len(ids) == 3 and all(id(p) not in ids for p in model.non_routing_parameters())
    assert len(ids) + len(model.non_routing_parameters()) == len(list(model.parameters()))
    with pytest.raises(KdxError):
        model.routing = "sparse"
    model.routing = "hard"
    assert all(torch.all((w == 0) | (w == 1)) for w in model.routing_weights())
    assert [tuple(w.shape) for w in model.routing_weights(mode="soft", tau=1.0)] == [(4, 2), (8, 4), (10, 8)]


def test_gumbel_noise_only_in_training():
    model = KDExplainer(10, routing="gumbel", tau=1.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        model.routing = "soft"
        assert torch.equal(model(x), a)
        model.train()
        model.routing = "gumbel"
        w1, w2 = model.routing_weights(), model.routing_weights()
    assert not torch.equal(w1[0], w2[0])


def test_experts_gradients_and_formats():
    torch.manual_seed(0)
    model = KDExplainer(10).eval()
    x = torch.randn(4, 3, 32, 32)
    logits, experts = model(x, return_experts=True)
    assert [tuple(e.shape) for e in experts] == [(4, 2, 64, 16, 16), (4, 4, 64, 8, 8), (4, 8, 32, 4, 4)]
    # per-subtask gradient w.r.t. every expert of layer 2 (conflict analysis use)
    params = list(model.layers[2].parameters())
    g0 = KDExplainer.per_expert(torch.autograd.grad(logits[:, 0].sum(), params, retain_graph=True))
    g1 = KDExplainer.per_expert(torch.autograd.grad(logits[:, 1].sum(), params))
    assert g0.shape == (8, sum(p[0].numel() for p in params)) and g0.abs().sum() > 0
    assert torch.isfinite(F.cosine_similarity(g0, g1, dim=1)).all()
    with torch.no_grad():
        ref = model(x)
        cl = model(x.to(memory_format=torch.channels_last))
        assert rel_err(cl, ref) <= 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x.to(memory_format=torch.channels_last))
        assert rel_err(bf.float(), ref) <= 0.1
    # training step bookkeeping: BN counters advance for every expert
    model.train()
    model(x).sum().backward()
    assert torch.all(model.layers[0].bn1_num_batches_tracked == 1)
    assert model.branches[2].grad is not None


def test_dropout_statistics():
    from kdx.models.routed.explainer import leaf_dropout

    x = torch.ones(400, 1000)
    y = leaf_dropout(x, 0.15, True)
    assert abs((y == 0).float().mean().item() - 0.15) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(leaf_dropout(x, 0.15, False), x) and torch.equal(leaf_dropout(x, 0.0, True), x)


def test_import_checkpoint_command_with_official_pth(tmp_path):
    """`kdx import-checkpoint FILE --kind explainer` end to end: an official-layout .pth in, a kdx
    checkpoint out whose outputs equal the oracle's under soft (tau 10, 10/7) and hard routing."""
    from typer.testing import CliRunner

    import kdx
    from kdx.cli import app

    oracle = randomize(AuthorsExplainer(10, "nce"), seed=3).eval()
    pth, out = tmp_path / "official.pth", tmp_path / "imported.safetensors"
    torch.save({"model": oracle.state_dict()}, pth)
    result = CliRunner().invoke(app, ["import-checkpoint", str(pth), "--kind", "explainer", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, meta = kdx.load(out)
    assert meta["kind"] == "explainer" and meta["num_classes"] == 10 and model.head_type == "nce"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for mode, tau in (("soft", 10.0), ("soft", 10.0 / 7), ("hard", 1.0)):
            model.routing, model.tau = mode, tau
            assert rel_err(model.eval()(x), oracle(x, tau, mode == "soft")) <= 1e-5, (mode, tau)
