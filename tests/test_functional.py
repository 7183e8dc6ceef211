"""kdx.distill.functional against independent transcriptions of each reference formula
(numpy, float64, explicit loops) or numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdx.distill import functional as KF


def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- oracles (numpy, loops)

def _np_pool(f, h):
    """Adaptive average pooling of (N, C, H, H) to (h, h) when H is a multiple of h."""
    k = f.shape[2] // h
    return f.reshape(f.shape[0], f.shape[1], h, k, h, k).mean(axis=(3, 5))


def _np_at(fs, ft, p):
    hs, ht = fs.shape[2], ft.shape[2]
    if hs > ht:
        fs = _np_pool(fs, ht)
    elif ht > hs:
        ft = _np_pool(ft, hs)

    def att(f):
        out = []
        for n in range(f.shape[0]):
            a = (f[n] ** p).mean(axis=0).reshape(-1)
            out.append(a / max(np.sqrt((a * a).sum()), 1e-12))
        return np.array(out)

    return ((att(fs) - att(ft)) ** 2).mean()


def _np_sp(fs, ft):
    n = fs.shape[0]
    total = 0.0
    gs = fs.reshape(n, -1) @ fs.reshape(n, -1).T
    gt = ft.reshape(n, -1) @ ft.reshape(n, -1).T
    for i in range(n):
        rs = gs[i] / np.linalg.norm(gs[i])
        rt = gt[i] / np.linalg.norm(gt[i])
        total += ((rt - rs) ** 2).sum()
    return total / (n * n)


def _np_pkt(fs, ft, eps=1e-7):
    def cond(f):
        n = f.shape[0]
        f = f / (np.sqrt((f ** 2).sum(1, keepdims=True)) + eps)
        p = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                p[i, j] = (1 + f[i] @ f[j]) / 2
            p[i] /= p[i].sum()
        return p

    ps, pt = cond(fs), cond(ft)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def _huber(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d * d, d - 0.5).mean()


def _np_rkd(fs, ft, wd, wa):
    def dist(e):
        n = e.shape[0]
        d = np.array([[np.linalg.norm(e[i] - e[j]) if i != j else 0.0 for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def angles(e):
        n = e.shape[0]
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = max(np.linalg.norm(u), 1e-12), max(np.linalg.norm(v), 1e-12)
                    out.append((u / nu) @ (v / nv))
        return np.array(out)

    return wd * _huber(dist(fs), dist(ft)) + wa * _huber(angles(fs), angles(ft))


def _np_nst(fs, ft):
    hs, ht = fs.shape[2], ft.shape[2]
    if hs > ht:
        fs = _np_pool(fs, ht)
    elif ht > hs:
        ft = _np_pool(ft, hs)
    s = fs.reshape(fs.shape[0], fs.shape[1], -1)
    t = ft.reshape(ft.shape[0], ft.shape[1], -1)
    s = s / np.linalg.norm(s, axis=2, keepdims=True)
    t = t / np.linalg.norm(t, axis=2, keepdims=True)

    def mmd_term(a, b):
        vals = [(a[n, i] @ b[n, j]) ** 2 for n in range(a.shape[0]) for i in range(a.shape[1])
                for j in range(b.shape[1])]
        return np.mean(vals)

    return mmd_term(t, t) + mmd_term(s, s) - 2 * mmd_term(s, t)


def _np_dkd(zs, zt, y, alpha, beta, temp):
    """mdistiller's dkd_loss transcribed: masks, cat_mask, the -1000 * gt trick, sum / N."""
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    n, c = zs.shape
    gt = np.zeros((n, c))
    gt[np.arange(n), y] = 1
    ps, pt = softmax(zs / temp), softmax(zt / temp)
    bs = np.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = np.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum() * temp ** 2 / n
    qt = softmax(zt / temp - 1000.0 * gt)
    with np.errstate(divide="ignore"):  # the target entry underflows to 0; it is not summed
        log_qs = np.log(softmax(zs / temp - 1000.0 * gt))
    keep = qt > 0
    nckd = (qt[keep] * (np.log(qt[keep]) - log_qs[keep])).sum() * temp ** 2 / n
    return alpha * tckd + beta * nckd


# ---------------------------------------------------------------- tests

def test_kd_unchanged_against_hand_formula():
    zs, zt = _rng(1).normal(size=(3, 5)), _rng(2).normal(size=(3, 5))
    t = 4.0
    ps = np.exp(zs / t) / np.exp(zs / t).sum(1, keepdims=True)
    pt = np.exp(zt / t) / np.exp(zt / t).sum(1, keepdims=True)
    want = (pt * np.log(pt / ps)).sum() / 3 * t * t
    assert float(KF.kd(_t(zs), _t(zt), t)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("hs,ht,p", [(4, 4, 2), (8, 4, 2), (4, 8, 2), (4, 4, 1)])
def test_at_matches_transcription(hs, ht, p):
    fs, ft = _rng(3).normal(size=(2, 3, hs, hs)), _rng(4).normal(size=(2, 5, ht, ht))
    got = float(KF.at(_t(fs), _t(ft), p))
    assert got == pytest.approx(_np_at(fs, ft, p), rel=1e-5)
    assert got > 0


def test_at_by_hand():
    # one sample, one channel, 1x2 maps: a_s = normalize([1, 1]) = [r, r], a_t = normalize([1, 0]) = [1, 0]
    fs = torch.tensor([[[[1.0, 1.0]]]])
    ft = torch.tensor([[[[1.0, 0.0]]]])
    r = 1 / math.sqrt(2)
    assert float(KF.at(fs, ft, 2)) == pytest.approx(((r - 1) ** 2 + r ** 2) / 2, rel=1e-6)
    assert float(KF.at(ft, ft, 2)) == 0.0


def test_sp_matches_transcription_and_ignores_width():
    fs, ft = _rng(5).normal(size=(4, 3, 2, 2)), _rng(6).normal(size=(4, 7, 2, 2))
    assert float(KF.sp(_t(fs), _t(ft))) == pytest.approx(_np_sp(fs, ft), rel=1e-5)
    # scaling the activations does not change the normalised Gram matrix
    assert float(KF.sp(_t(fs), _t(3 * fs))) == pytest.approx(0.0, abs=1e-6)


def test_pkt_matches_transcription():
    fs, ft = _rng(7).normal(size=(5, 6)), _rng(8).normal(size=(5, 4))
    got = float(KF.pkt(_t(fs), _t(ft)))
    assert got == pytest.approx(_np_pkt(fs, ft), rel=1e-4)
    assert float(KF.pkt(_t(ft), _t(ft))) == pytest.approx(0.0, abs=1e-6)


def test_pkt_zero_vector_stays_finite():
    fs = torch.zeros(3, 4)
    ft = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(KF.pkt(fs, ft))


def test_rkd_matches_transcription():
    fs, ft = _rng(9).normal(size=(4, 3)), _rng(10).normal(size=(4, 5))
    got = float(KF.rkd(_t(fs), _t(ft), 25.0, 50.0))
    assert got == pytest.approx(_np_rkd(fs, ft, 25.0, 50.0), rel=1e-4)
    only_dist = float(KF.rkd(_t(fs), _t(ft), 1.0, 0.0))
    assert only_dist == pytest.approx(_np_rkd(fs, ft, 1.0, 0.0), rel=1e-4)


def test_rkd_gradient_reaches_student_only():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    KF.rkd(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("hs,ht", [(4, 4), (8, 4), (2, 4)])
def test_nst_matches_transcription(hs, ht):
    fs, ft = _rng(11).normal(size=(2, 3, hs, hs)), _rng(12).normal(size=(2, 4, ht, ht))
    assert float(KF.nst(_t(fs), _t(ft))) == pytest.approx(_np_nst(fs, ft), rel=1e-4)


def test_nst_identical_maps_zero():
    f = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert float(KF.nst(f, f)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("c,alpha,beta,temp", [(5, 1.0, 8.0, 4.0), (10, 0.5, 2.0, 1.0), (3, 1.0, 8.0, 4.0)])
def test_dkd_matches_mdistiller_transcription(c, alpha, beta, temp):
    zs, zt = _rng(13).normal(size=(4, c)) * 3, _rng(14).normal(size=(4, c)) * 3
    y = np.array([0, 1, 2, 1]) % c
    got = float(KF.dkd(_t(zs), _t(zt), torch.tensor(y), alpha, beta, temp))
    assert got == pytest.approx(_np_dkd(zs, zt, y, alpha, beta, temp), rel=1e-4)


def test_dkd_by_hand_two_classes():
    # C = 2: NCKD is KL over one class = 0, TCKD is the full binary KL at T
    zs = torch.tensor([[1.0, 0.0]])
    zt = torch.tensor([[2.0, 0.0]])
    t = 2.0
    ps, pt = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(-1.0))
    want = (pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))) * t * t
    got = KF.dkd(zs, zt, torch.tensor([0]), alpha=1.0, beta=8.0, temperature=t)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(KF.dkd(zs, zt, torch.tensor([0]), alpha=0.0, beta=8.0, temperature=t)) == 0.0


@pytest.mark.parametrize("gap", [50.0, 1e3, 1e5])
def test_dkd_two_classes_target_far_ahead_stays_finite(gap):
    zs = torch.tensor([[gap, -gap], [0.0, 1.0]], requires_grad=True)
    zt = torch.tensor([[-gap, gap], [gap, 0.0]])
    y = torch.tensor([0, 0])
    loss = KF.dkd(zs, zt, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()
    # row 0 (student sure of class 0, teacher sure of class 1): TCKD ~ 2 * gap / T * T^2 / N
    assert float(loss.detach()) > gap


def test_dkd_many_classes_target_far_ahead_finite_gradient():
    zs = torch.zeros(2, 6)
    zs[:, 0] = 1e4
    zs.requires_grad_(True)
    zt = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    loss = KF.dkd(zs, zt, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


def test_functions_are_pure_on_inputs():
    f = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    g = f.clone()
    for fn in (KF.at, KF.sp, KF.nst):
        fn(f, f.flip(0))
    KF.pkt(f.flatten(1), f.flatten(1).flip(0))
    KF.rkd(f.flatten(1), f.flatten(1).flip(0))
    assert torch.equal(f, g)
