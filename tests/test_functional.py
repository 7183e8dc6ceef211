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


from oracles_numpy import np_pool, np_at, np_sp, np_pkt, np_rkd, np_nst, np_dkd  # noqa: E402


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
    assert got == pytest.approx(np_at(fs, ft, p), rel=1e-5)
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
    assert float(KF.sp(_t(fs), _t(ft))) == pytest.approx(np_sp(fs, ft), rel=1e-5)
    # scaling the activations does not change the normalised Gram matrix
    assert float(KF.sp(_t(fs), _t(3 * fs))) == pytest.approx(0.0, abs=1e-6)


def test_pkt_matches_transcription():
    fs, ft = _rng(7).normal(size=(5, 6)), _rng(8).normal(size=(5, 4))
    got = float(KF.pkt(_t(fs), _t(ft)))
    assert got == pytest.approx(np_pkt(fs, ft), rel=1e-4)
    assert float(KF.pkt(_t(ft), _t(ft))) == pytest.approx(0.0, abs=1e-6)


def test_pkt_zero_vector_stays_finite():
    fs = torch.zeros(3, 4)
    ft = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(KF.pkt(fs, ft))


def test_rkd_matches_transcription():
    fs, ft = _rng(9).normal(size=(4, 3)), _rng(10).normal(size=(4, 5))
    got = float(KF.rkd(_t(fs), _t(ft), 25.0, 50.0))
    assert got == pytest.approx(np_rkd(fs, ft, 25.0, 50.0), rel=1e-4)
    only_dist = float(KF.rkd(_t(fs), _t(ft), 1.0, 0.0))
    assert only_dist == pytest.approx(np_rkd(fs, ft, 1.0, 0.0), rel=1e-4)


def test_rkd_gradient_reaches_student_only():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    KF.rkd(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("hs,ht", [(4, 4), (8, 4), (2, 4)])
def test_nst_matches_transcription(hs, ht):
    fs, ft = _rng(11).normal(size=(2, 3, hs, hs)), _rng(12).normal(size=(2, 4, ht, ht))
    assert float(KF.nst(_t(fs), _t(ft))) == pytest.approx(np_nst(fs, ft), rel=1e-4)


def test_nst_identical_maps_zero():
    f = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert float(KF.nst(f, f)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("c,alpha,beta,temp", [(5, 1.0, 8.0, 4.0), (10, 0.5, 2.0, 1.0), (3, 1.0, 8.0, 4.0)])
def test_dkd_matches_mdistiller_transcription(c, alpha, beta, temp):
    zs, zt = _rng(13).normal(size=(4, c)) * 3, _rng(14).normal(size=(4, c)) * 3
    y = np.array([0, 1, 2, 1]) % c
    got = float(KF.dkd(_t(zs), _t(zt), torch.tensor(y), alpha, beta, temp))
    assert got == pytest.approx(np_dkd(zs, zt, y, alpha, beta, temp), rel=1e-4)


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
