"""KD methods with trained connectors, memory banks or initialisation phases: crd, cc, vid, ft, fsp.

Oracles are numpy transcriptions of RepDistiller's code (crd/memory.py + crd/criterion.py,
distiller_zoo/CC.py, VID.py, FT.py, FSP.py, models/util.py, helper/pretrain.py), written with
explicit loops, on fixed tiny tensors with the connectors' weights set by the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdx.distill.methods import all_methods
from kdx.distill.methods.base import MethodContext, StepOutputs
from kdx.distill.methods.cc import CC, correlation_congruence
from kdx.distill.methods.crd import CRD, draw_contrast_indices, momentum_update, nce_loss
from kdx.distill.methods.fsp import fsp_loss, fsp_matrix
from kdx.distill.methods.ft import factor_loss
from kdx.distill.methods.repdistiller import FINAL, Tap, feature_taps, final_tap
from kdx.distill.methods.vid import VIDRegressor
from kdx.distill.task import MethodTask, build_methods
from kdx.errors import KdxError
from kdx.models import create_model, extract_features
from test_methods_simple import make_task  # tests/ is on sys.path: resnet8 student, resnet14 teacher

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

NAMES = ["crd", "cc", "vid", "ft", "fsp"]


def npy(t):
    return t.detach().double().numpy()


def block_mean(a, size):
    """Average-pool (N, C, H, H) numpy maps to (N, C, size, size) by equal blocks (H divisible)."""
    n, c, h, _ = a.shape
    k = h // size
    out = np.zeros((n, c, size, size))
    for i in range(size):
        for j in range(size):
            out[:, :, i, j] = a[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k].mean(axis=(2, 3))
    return out


# ---------------------------------------------------------------- registry and defaults


def test_registered_with_the_authors_defaults():
    methods = all_methods()
    defaults = {o.name: o.default for n in NAMES for o in methods[n].options}
    assert defaults["crd_weight"] == 0.8 and defaults["crd_feat_dim"] == 128 and defaults["crd_nce_k"] == 16384
    assert defaults["crd_nce_t"] == 0.07 and defaults["crd_nce_m"] == 0.5
    assert defaults["cc_weight"] == 0.02 and defaults["cc_feat_dim"] == 128
    assert defaults["vid_weight"] == 1.0
    assert (defaults["ft_weight"], defaults["ft_p1"], defaults["ft_p2"], defaults["ft_init_epochs"]) == (50, 2, 1, 30)
    assert defaults["ft_init_lr"] == 0.01 and defaults["fsp_init_lr"] == 0.05
    assert defaults["fsp_weight"] == 50 and defaults["fsp_init_epochs"] == 30 and defaults["fsp_main"] is False
    assert all(methods[n].needs_teacher and methods[n].uses_features for n in NAMES)
    assert all(methods[n].paper for n in NAMES)


# ---------------------------------------------------------------- feature taps (RepDistiller's feat list)


def read_taps(m, x):
    """``[f0, f1, ..., fk]`` as kdx reads them: ``feature_taps(m)`` through forward hooks."""
    f0_tap, taps = feature_taps(m)
    names = sorted({t.source for t in [f0_tap] + taps if t.source != FINAL})
    _, feats = extract_features(m, x, names)
    final = m.forward_features(x)
    return [f0_tap.read(feats, final)] + [t.read(feats, final) for t in taps]


def test_taps_read_repdistillers_features_wrn_and_vgg():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    for arch in ("wrn_16_1", "vgg8", "resnet8"):
        m = create_model(arch, num_classes=10).eval()
        with torch.no_grad():
            got = read_taps(m, x)
            # transcriptions of RepDistiller's forward(is_feat=True, preact=False)
            if arch == "wrn_16_1":
                f0 = m.conv1(x)
                f1 = m.block1(f0)
                f2 = m.block2(f1)
                ref = [f0, f1, f2, m.block3(f2)]  # wrn.py: f3 = block3 output, BN+ReLU after
            elif arch == "vgg8":
                ref, h = [], x
                for i in range(5):
                    h = F.relu(getattr(m, f"block{i}")(h))
                    ref.append(h)
                    if i < 3:
                        h = F.max_pool2d(h, 2)
            else:
                f0 = F.relu(m.bn1(m.conv1(x)))
                f1 = m.layer1(f0)
                f2 = m.layer2(f1)
                ref = [f0, f1, f2, m.layer3(f2)]
        assert len(got) == len(ref), arch
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r)
    assert feature_taps(create_model("vgg8", num_classes=10))[0] == Tap("block0", relu=True)


def _repdistiller_feats(arch, m, x):
    """RepDistiller's ``forward(x, is_feat=True, preact=False)[0][:-1]`` transcribed per family
    (models/resnetv2.py, mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py, wrn.py)."""
    if arch == "ResNet18":
        f = [F.relu(m.bn1(m.conv1(x)))]
        for name in ("layer1", "layer2", "layer3", "layer4"):
            f.append(getattr(m, name)(f[-1]))
        return f
    if arch == "MobileNetV2":
        f, h = [m.conv1(x)], m.conv1(x)
        for i in range(7):
            h = m.blocks[i](h)
            if i in (1, 2, 4, 6):
                f.append(h)
        return f
    if arch in ("ShuffleV1", "ShuffleV2"):
        f = [F.relu(m.bn1(m.conv1(x)))]
        for name in ("layer1", "layer2", "layer3"):
            f.append(getattr(m, name)(f[-1]))
        return f  # ShuffleV2's conv2-bn2-relu comes after f3 (only in the pooled f4)
    f0 = m.conv1(x)  # wrn_40_1: raw block outputs, BN+ReLU only before the pooling
    return [f0, m.block1(f0), m.block2(m.block1(f0)), m.block3(m.block2(m.block1(f0)))]


@pytest.mark.parametrize("arch", ["ResNet18", "MobileNetV2", "ShuffleV1", "ShuffleV2", "wrn_40_1"])
def test_taps_read_repdistillers_features_other_families(arch):
    torch.manual_seed(0)
    m = create_model(arch, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = read_taps(m, x)
        ref = _repdistiller_feats(arch, m, x)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("arch", ["resnet8", "ResNet18", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_final_tap_reads_forward_features(arch):
    torch.manual_seed(0)
    m = create_model(arch, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    tap = final_tap(m)
    assert tap.source != FINAL
    with torch.no_grad():
        _, feats = extract_features(m, x, [tap.source])
        torch.testing.assert_close(tap.read(feats, None), m.forward_features(x))


# ---------------------------------------------------------------- CRD


def contrast_loss_oracle(x, n_data):
    """RepDistiller ContrastLoss, one term at a time."""
    eps = 1e-7
    bsz, m = x.shape[0], x.shape[1] - 1
    pn = 1.0 / n_data
    total = 0.0
    for i in range(bsz):
        total += math.log(x[i, 0] / (x[i, 0] + m * pn + eps))
        for j in range(1, m + 1):
            total += math.log((m * pn) / (x[i, j] + m * pn + eps))
    return -total / bsz


def test_nce_loss_matches_contrast_loss():
    scores = torch.rand(3, 6, dtype=torch.float64) * 2 + 0.01
    assert float(nce_loss(scores, 40)) == pytest.approx(contrast_loss_oracle(npy(scores), 40), rel=1e-12)


def test_momentum_update_formula():
    torch.manual_seed(1)
    mem = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    before = npy(mem).copy()
    v = F.normalize(torch.randn(2, 4, dtype=torch.float64), dim=1)
    idx = torch.tensor([4, 1])
    momentum_update(mem, idx, v, 0.3)
    expect = before.copy()
    for r, i in enumerate([4, 1]):
        row = 0.3 * before[i] + 0.7 * npy(v)[r]
        expect[i] = row / math.sqrt((row ** 2).sum())
    np.testing.assert_allclose(npy(mem), expect, rtol=1e-12)


def _crd_case(n_data=12, k=5, b=3, mode="uniform"):
    torch.manual_seed(2)
    ctx = MethodContext(params={"crd_nce_k": k, "crd_feat_dim": 4, "seed": 0, "crd_mode": mode}, num_samples=n_data,
                        train_labels=torch.arange(n_data) % 3)
    m = CRD(ctx)
    out = StepOutputs(x=torch.zeros(b), y=torch.zeros(b, dtype=torch.long), logits=torch.zeros(b, 10), model=None,
                      feat_s=torch.randn(b, 6, 2, 2), feat_t=torch.randn(b, 8, 2, 2), index=torch.tensor([7, 0, 11]))
    m.setup(out)
    with torch.no_grad():  # fixed connector weights and memories
        m.embed_s.linear.weight.copy_(torch.linspace(-1, 1, 24).view(4, 6))
        m.embed_s.linear.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        m.embed_t.linear.weight.copy_(torch.linspace(1, -0.5, 32).view(4, 8).sin())
        m.embed_t.linear.bias.zero_()
        m.memory_s.copy_(torch.rand(n_data, 4) - 0.5)
        m.memory_t.copy_(torch.rand(n_data, 4) - 0.5)
    return m, out


def crd_oracle(m, out, idx):
    """RepDistiller CRDLoss.forward (+ ContrastMemory.forward) with contrast indices ``idx``."""
    T, mom, n = 0.07, 0.5, m.n_data

    def embed(feat, lin):
        pooled = npy(feat).mean(axis=(2, 3))
        e = pooled @ npy(lin.weight).T + npy(lin.bias)
        return e / np.sqrt((e ** 2).sum(1, keepdims=True))

    v1, v2 = embed(out.feat_s, m.embed_s.linear), embed(out.feat_t, m.embed_t.linear)
    mem_v1, mem_v2 = npy(m.memory_s).copy(), npy(m.memory_t).copy()  # v1 = student side
    bsz, kk = idx.shape
    out_v1, out_v2 = np.zeros((bsz, kk)), np.zeros((bsz, kk))
    for i in range(bsz):
        for j in range(kk):
            out_v2[i, j] = math.exp(mem_v1[idx[i, j]] @ v2[i] / T)
            out_v1[i, j] = math.exp(mem_v2[idx[i, j]] @ v1[i] / T)
    z1, z2 = out_v1.mean() * n, out_v2.mean() * n
    loss = contrast_loss_oracle(out_v1 / z1, n) + contrast_loss_oracle(out_v2 / z2, n)
    y = npy(out.index).astype(int)
    for mem, v in ((mem_v1, v1), (mem_v2, v2)):
        for r, i in enumerate(y):
            row = mem[i] * mom + v[r] * (1 - mom)
            mem[i] = row / np.sqrt((row ** 2).sum())
    return loss, mem_v1, mem_v2, (z1, z2)


def test_crd_loss_and_memory_against_repdistiller_transcription():
    m, out = _crd_case()
    torch.manual_seed(123)
    idx = torch.randint(0, m.n_data, (3, m.k + 1))  # the negatives: uniform, from the global RNG
    idx[:, 0] = out.index
    expect, mem_s, mem_t, z = crd_oracle(m, out, npy(idx).astype(int))
    torch.manual_seed(123)
    got = m.loss(out)["crd"].detach()
    assert float(got) == pytest.approx(0.8 * expect, rel=1e-4)
    np.testing.assert_allclose(npy(m.memory_s), mem_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npy(m.memory_t), mem_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npy(m.z), z, rtol=1e-4)
    rows_untouched = [i for i in range(m.n_data) if i not in (7, 0, 11)]
    assert torch.allclose(m.memory_s[rows_untouched], torch.tensor(mem_s[rows_untouched], dtype=torch.float32))


def test_crd_clamps_negatives_and_needs_indices():
    m, out = _crd_case(n_data=4, k=16384)
    assert m.k == 3
    assert m.record()["negatives"] == 3
    out.index = None
    with pytest.raises(KdxError, match="dataset indices"):
        m.loss(out)
    with pytest.raises(KdxError, match="training-split size"):
        CRD(MethodContext(params={}, num_samples=0))
    with pytest.raises(KdxError, match="needs the labels of the 12 training samples"):
        CRD(MethodContext(params={"crd_mode": "exact"}, num_samples=12))


def cifar_instance_sample_oracle(index, labels, k, mode, rng):
    """RepDistiller ``CIFAR100InstanceSample.__init__`` + ``__getitem__``'s ``sample_idx``."""
    n_cls = int(labels.max()) + 1
    cls_positive = [[i for i in range(len(labels)) if labels[i] == c] for c in range(n_cls)]
    cls_negative = [[j for c2 in range(n_cls) if c2 != c for j in cls_positive[c2]] for c in range(n_cls)]
    target = labels[index]
    pos_idx = index if mode == "exact" else rng.choice(cls_positive[target], 1)[0]
    replace = k > len(cls_negative[target])
    neg_idx = rng.choice(cls_negative[target], k, replace=replace)
    return np.hstack((np.asarray([pos_idx]), neg_idx)), cls_positive, cls_negative


@pytest.mark.parametrize("mode", ["exact", "relax"])
@pytest.mark.parametrize("k", [6, 9])  # 6: without replacement (pools of 8-9), 9: with it for the classes of 9
def test_crd_contrast_rows_follow_repdistiller_sampling(mode, k):
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 2])  # classes of 5, 4, 4: pools of 8, 9, 9
    index = torch.tensor([0, 4, 12, 9, 0])
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    counts, oracle_counts = np.zeros(13), np.zeros(13)
    for _ in range(400):
        rows = draw_contrast_indices(index, labels, 13, k, mode)
        assert rows.shape == (5, k + 1) and rows.dtype == torch.long
        for r, i in enumerate(index.tolist()):
            want, cls_pos, cls_neg = cifar_instance_sample_oracle(i, labels.numpy(), k, mode, rng)
            row = rows[r].tolist()
            if mode == "exact":
                assert row[0] == i
            else:
                assert row[0] in cls_pos[int(labels[i])]
            assert set(row[1:]) <= set(cls_neg[int(labels[i])])  # never the anchor's class
            if k <= len(cls_neg[int(labels[i])]):
                assert len(set(row[1:])) == k  # without replacement, as np.random.choice(replace=False)
            if r == 0:
                np.add.at(counts, row[1:], 1)
                np.add.at(oracle_counts, want[1:], 1)
    # the anchor 0 (class 0, pool of the 8 samples of classes 1 and 2) draws its pool uniformly, as the oracle
    pool = [j for j in range(13) if labels[j] != 0]
    assert counts[labels.numpy() == 0].sum() == 0
    expected = 400 * k / len(pool)
    assert np.abs(counts[pool] - expected).max() < 0.15 * expected
    assert np.abs(oracle_counts[pool] - expected).max() < 0.15 * expected


def test_crd_uniform_rows_and_method_mode():
    torch.manual_seed(1)
    rows = draw_contrast_indices(torch.tensor([3, 5]), None, 40, 7, "uniform")
    torch.manual_seed(1)
    ref = torch.randint(0, 40, (2, 8))
    ref[:, 0] = torch.tensor([3, 5])
    assert torch.equal(rows, ref)  # RepDistiller's ContrastMemory sampler without contrast_idx
    m, out = _crd_case(mode="exact")
    assert m.record()["mode"] == "exact" and "labels" not in dict(m.named_buffers())
    loss = m.loss(out)["crd"].detach()
    assert torch.isfinite(loss) and float(loss) > 0


# ---------------------------------------------------------------- CC


def test_cc_against_transcription():
    torch.manual_seed(3)
    e_s, e_t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    d = np.abs(npy(e_s) - npy(e_t))
    expect = np.mean([sum(d[i, k] * d[i + 1, k] for k in range(4)) for i in range(4)])
    assert float(correlation_congruence(e_s, e_t)) == pytest.approx(expect, rel=1e-12)

    m = CC(MethodContext(params={"cc_feat_dim": 3, "seed": 0}))
    out = StepOutputs(x=torch.zeros(4), y=torch.zeros(4, dtype=torch.long), logits=torch.zeros(4, 2), model=None,
                      feat_s=torch.randn(4, 5, 2, 2), feat_t=torch.randn(4, 6, 2, 2))
    m.setup(out)
    with torch.no_grad():
        m.embed_s.weight.copy_(torch.linspace(-1, 1, 15).view(3, 5))
        m.embed_t.weight.copy_(torch.linspace(0.5, -1, 18).view(3, 6))
        m.embed_s.bias.fill_(0.1)
        m.embed_t.bias.fill_(-0.2)
    es = npy(out.feat_s).mean(axis=(2, 3)) @ npy(m.embed_s.weight).T + 0.1
    et = npy(out.feat_t).mean(axis=(2, 3)) @ npy(m.embed_t.weight).T - 0.2
    d = np.abs(es - et)
    expect = np.mean([(d[i] * d[i + 1]).sum() for i in range(3)])
    assert float(m.loss(out)["cc"].detach()) == pytest.approx(0.02 * expect, rel=1e-5)


# ---------------------------------------------------------------- VID


def test_vid_against_transcription():
    torch.manual_seed(4)
    reg = VIDRegressor(3, 2, 2).double()
    with torch.no_grad():
        for conv, w in zip([reg.regressor[0], reg.regressor[2], reg.regressor[4]],
                           [torch.linspace(-1, 1, 6).view(2, 3), torch.tensor([[0.5, -0.3], [0.2, 0.8]]),
                            torch.tensor([[1.0, -1.0], [0.4, 0.6]])]):
            conv.weight.copy_(w.view(*w.shape, 1, 1))
        reg.log_scale.copy_(torch.tensor([0.3, -0.7]))
    f_s = torch.randn(2, 3, 4, 4, dtype=torch.float64)  # larger: pooled to the teacher's 2x2
    f_t = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    x = block_mean(npy(f_s), 2)
    w = [npy(reg.regressor[i].weight)[:, :, 0, 0] for i in (0, 2, 4)]
    var = np.log(1.0 + np.exp(npy(reg.log_scale))) + 1e-5
    terms = []
    for n in range(2):
        for i in range(2):
            for j in range(2):
                h = np.maximum(w[0] @ x[n, :, i, j], 0)
                h = np.maximum(w[1] @ h, 0)
                mu = w[2] @ h
                for c in range(2):
                    terms.append(0.5 * ((mu[c] - npy(f_t)[n, c, i, j]) ** 2 / var[c] + math.log(var[c])))
    assert float(reg(f_s, f_t).detach()) == pytest.approx(np.mean(terms), rel=1e-10)
    fresh = VIDRegressor(3, 2, 2)  # initial variance 5
    assert float(F.softplus(fresh.log_scale[0].detach()) + 1e-5) == pytest.approx(5.0, rel=1e-5)


# ---------------------------------------------------------------- FT


@pytest.mark.parametrize("p2", [1.0, 2.0])
def test_factor_loss_against_transcription(p2):
    torch.manual_seed(5)
    fs = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ft = torch.randn(2, 5, 2, 2, dtype=torch.float64)

    def factor(a):  # F.normalize(a.pow(2).mean(1).view(B, -1))
        v = (a ** 2).mean(axis=1).reshape(a.shape[0], -1)
        return v / np.maximum(np.sqrt((v ** 2).sum(1, keepdims=True)), 1e-12)

    d = factor(block_mean(npy(fs), 2)) - factor(npy(ft))
    expect = np.abs(d).mean() if p2 == 1 else (d ** 2).mean()
    assert float(factor_loss(fs, ft, 2.0, p2)) == pytest.approx(expect, rel=1e-12)


# ---------------------------------------------------------------- FSP


def test_fsp_against_transcription():
    torch.manual_seed(6)
    s = [torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64),
         torch.randn(2, 2, 2, 2, dtype=torch.float64)]
    t = [torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 3, 2, 2, dtype=torch.float64),
         torch.randn(2, 2, 2, 2, dtype=torch.float64)]

    def gram(bot, top):
        if bot.shape[2] > top.shape[2]:
            bot = block_mean(bot, top.shape[2])
        elif bot.shape[2] < top.shape[2]:
            top = block_mean(top, bot.shape[2])
        g = np.zeros((bot.shape[0], bot.shape[1], top.shape[1]))
        for n in range(bot.shape[0]):
            for c in range(bot.shape[1]):
                for d in range(top.shape[1]):
                    g[n, c, d] = (bot[n, c] * top[n, d]).mean()
        return g

    np.testing.assert_allclose(npy(fsp_matrix(s[0], s[1])), gram(npy(s[0]), npy(s[1])), rtol=1e-12)
    expect = sum(((gram(npy(s[i]), npy(s[i + 1])) - gram(npy(t[i]), npy(t[i + 1]))) ** 2).mean() for i in range(2))
    assert float(fsp_loss(s, t)) == pytest.approx(expect, rel=1e-12)


def test_fsp_channel_mismatch_is_one_line_naming_stages_and_sizes():
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet8x4", num_classes=10).eval()
    methods = build_methods(["fsp"], MethodContext(params={"seed": 0}, student=student, teacher=teacher))
    task = MethodTask(student, methods, teacher=teacher)
    with pytest.raises(KdxError) as err:
        task.setup_methods(torch.zeros(2, 3, 16, 16))
    msg = str(err.value)
    assert "\n" not in msg
    assert "student relu(bn1) (16 ch, 16x16) vs teacher relu(bn1) (32 ch, 16x16)" in msg
    assert "student layer3 (64 ch, 4x4) vs teacher layer3 (256 ch, 4x4)" in msg
    with pytest.raises(KdxError, match="as many stages"):
        build_methods(["fsp"], MethodContext(params={}, student=create_model("MobileNetV2", num_classes=10),
                                             teacher=teacher))


# ---------------------------------------------------------------- in a MethodTask


@pytest.mark.parametrize("name", NAMES)
def test_method_task_step_finite_grads_deterministic(name):
    params = {"fsp_main": True, "crd_nce_k": 8}
    losses = []
    for _ in range(2):
        task, x, y = make_task([name], params)
        task.train()
        torch.manual_seed(9)
        _, out = task(x, y, torch.tensor([3, 1, 0, 39]))
        total = out[name]
        assert torch.isfinite(total) and float(total.detach()) != 0
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.parameters())
        assert all(p.grad is None for p in task.teacher.parameters())
        trained = [p for p in task.methods[0].parameters() if p.requires_grad]
        if name != "fsp":  # fsp has no connector
            assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
        assert len(task.method_param_group(0.1)) == (0 if name == "fsp" else 1)
        losses.append(float(total.detach()))
    assert losses[0] == losses[1]


@pytest.mark.parametrize("name", NAMES)
def test_methods_on_a_vam_student(name):
    from kdx.distill.student import StudentTask
    from kdx.models.routed.vam import wrap_student

    torch.manual_seed(0)
    vam = wrap_student("resnet8", num_classes=10, in_channels=3)
    teacher = create_model("resnet14", num_classes=10).eval().requires_grad_(False)
    ctx = MethodContext(params={"seed": 0, "fsp_main": True, "crd_nce_k": 8}, student=vam.student, teacher=teacher,
                        num_classes=10, num_samples=40, train_labels=torch.arange(40) % 10)
    task = StudentTask(vam, build_methods([name], ctx), teacher=teacher, probe_shape=(3, 16, 16))
    assert not task.wants_final  # the final maps come from hooks: the VAM wrapper has no forward_head
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, out = task(x, y, torch.arange(4))
    out[name].backward()
    assert torch.isfinite(out[name]) and vam.student.conv1.weight.grad.abs().sum() > 0


def test_fsp_main_phase_adds_nothing_by_default():
    task, x, y = make_task(["fsp"])
    _, out = task(x, y)
    assert float(out["fsp"]) == 0.0


# ---------------------------------------------------------------- initialisation phases


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ft_initialise_trains_only_the_paraphraser():
    task, x, y = make_task(["ft"], {"ft_init_epochs": 2})
    ft = task.methods[0]
    loader = [(x, y, torch.arange(4)), (x.flip(0), y.flip(0), torch.arange(4, 8))]  # (x, y, index) batches
    para, student, teacher, trans = _state(ft.paraphraser), _state(task.model), _state(task.teacher), _state(
        ft.translator)
    task.train()
    task.initialise(loader, None)
    assert any(not torch.equal(v, ft.paraphraser.state_dict()[k]) for k, v in para.items())
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in student.items())
    assert all(torch.equal(v, task.teacher.state_dict()[k]) for k, v in teacher.items())
    assert all(torch.equal(v, ft.translator.state_dict()[k]) for k, v in trans.items())
    assert len(ft.init_loss) == 2 and all(math.isfinite(v) for v in ft.init_loss)
    assert not any(p.requires_grad for p in ft.paraphraser.parameters())  # frozen again
    assert task.training and not task.teacher.training
    assert all(p.grad is None for p in task.parameters())


def test_ft_initialise_reduces_the_reconstruction_loss():
    task, x, y = make_task(["ft"], {"ft_init_epochs": 6, "ft_init_lr": 0.05})
    task.initialise([(x, y)], None)
    loss = task.methods[0].init_loss
    assert loss[-1] < loss[0]


class BatchesLoader:
    """A kdx-style loader: ``batches(epoch)`` yields (x, y)."""

    def __init__(self, x, y):
        self.x, self.y, self.epochs = x, y, []

    def batches(self, epoch):
        self.epochs.append(epoch)
        yield self.x, self.y


def test_fsp_initialise_trains_the_student_features_not_its_classifier():
    task, x, y = make_task(["fsp"], {"fsp_init_epochs": 3, "fsp_init_lr": 1e-4})
    fsp = task.methods[0]
    loader = BatchesLoader(x, y)
    before, teacher = _state(task.model), _state(task.teacher)
    task.initialise(loader, None)
    after = task.model.state_dict()
    assert loader.epochs == [1, 2, 3]
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["layer3.0.conv2.weight"], after["layer3.0.conv2.weight"])
    assert torch.equal(before["fc.weight"], after["fc.weight"]) and torch.equal(before["fc.bias"], after["fc.bias"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # student BN in train mode
    assert all(torch.equal(v, task.teacher.state_dict()[k]) for k, v in teacher.items())
    assert len(fsp.init_loss) == 3 and fsp.init_loss[-1] < fsp.init_loss[0]
    assert all(p.requires_grad for p in task.model.parameters())


@pytest.mark.parametrize("arch,untouched", [("wrn_16_1", "bn1"), ("MobileNetV2", "conv2.1"), ("ShuffleV2", "bn2")])
def test_fsp_initialise_trains_only_the_feat_modules(arch, untouched):
    """issue 19: RepDistiller's FSP init trains ``model_s.get_feat_modules()`` in train mode, the
    rest of the student in eval mode: the final BN that sits outside them keeps its running
    statistics (WRN's bn1, MobileNetV2's conv2 BN, ShuffleV2's bn2)."""
    from kdx.models import create_model

    torch.manual_seed(0)
    s = create_model(arch, num_classes=10, in_channels=3)
    t = create_model(arch, num_classes=10, in_channels=3)
    ctx = MethodContext(params={"seed": 0, "fsp_init_epochs": 1, "fsp_init_lr": 1e-3}, student=s, teacher=t,
                        num_classes=10, num_samples=8, train_labels=torch.arange(8) % 10)
    task = MethodTask(s, build_methods(["fsp"], ctx), teacher=t)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    task.setup_methods(x)
    bn = s.get_submodule(untouched)
    assert isinstance(bn, torch.nn.BatchNorm2d)
    before = bn.running_mean.clone(), bn.running_var.clone()
    feat_bn = next(m for f in s.feat_modules() for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d))
    feat_before = feat_bn.running_mean.clone()
    task.initialise(BatchesLoader(x, y), None)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert not torch.equal(feat_bn.running_mean, feat_before)  # the feat modules did train (train mode)
