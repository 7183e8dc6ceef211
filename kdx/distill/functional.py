"""Parameter-free distillation losses as pure functions on single tensors.

Each function follows the scale conventions of its reference implementation; the sum over
stages and the method's weight are the method's job (``kdx.distill.methods``), not the
function's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd(logits_s: Tensor, logits_t: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``KL(p_t^T || p_s^T) * T^2`` averaged over the batch ("batchmean"), in fp32.

    ``p^T = softmax(logits / T)``; the ``T^2`` keeps the gradient scale independent of T.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(logits_s.float() / t, dim=1)
    log_p_t = F.log_softmax(logits_t.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def ce(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy (mean over the batch) in fp32, with optional label smoothing epsilon."""
    return F.cross_entropy(logits.float(), target, label_smoothing=float(label_smoothing))



def pool_to_smaller(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the map of larger height to the other's height (square output), as the
    reference AT/NST code and RepDistiller's VID, FT and FSP do; maps of equal height pass
    unchanged."""
    hs, ht = f_s.shape[2], f_t.shape[2]
    if hs > ht:
        f_s = F.adaptive_avg_pool2d(f_s, (ht, ht))
    elif hs < ht:
        f_t = F.adaptive_avg_pool2d(f_t, (hs, hs))
    return f_s, f_t


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """AT's spatial attention of an (N, C, H, W) map: ``a = mean_c(f^p)`` flattened to (N, H*W)
    and L2-normalised per sample (``F.normalize``, eps 1e-12)."""
    return F.normalize(f.float().pow(p).mean(1).reshape(f.shape[0], -1), dim=1)


def at(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko and Komodakis, ICLR 2017) on one pair of maps, in fp32.

    The larger map is average-pooled to the smaller one's height, then
    ``mean over (n, j) of (a_s[n, j] - a_t[n, j])^2`` with ``a`` = :func:`attention_map`
    (RepDistiller's scale: a mean, not the paper's p-norm; the method's weight 1000 assumes it).
    """
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def sp(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Similarity preserving KD (Tung and Mori, ICCV 2019) on one pair of activations, in fp32.

    ``G = normalize_rows(A A^T)`` with ``A`` the (N, -1) flattened activations, and
    ``||G_t - G_s||_F^2 / N^2``. Student and teacher may have any (different) widths.
    """
    n = f_s.shape[0]
    a_s = f_s.float().reshape(n, -1)
    a_t = f_t.float().reshape(n, -1)
    g_s = F.normalize(a_s @ a_s.t(), dim=1)
    g_t = F.normalize(a_t @ a_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (n * n)


def _pkt_conditional(f: Tensor, eps: float) -> Tensor:
    """PKT's conditional probabilities: cosine similarities mapped to [0, 1] and normalised per row."""
    f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    f = torch.nan_to_num(f, nan=0.0)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis and Tefas, ECCV 2018) on (N, D) features, fp32.

    ``P[i, j] = (1 + cos(x_i, x_j)) / 2`` normalised over j, for the student (P_s) and the
    teacher (P_t), and ``mean over (i, j) of P_t * log((P_t + eps) / (P_s + eps))``
    (the authors' code: a mean over all N^2 pairs, diagonal included).
    """
    n = f_s.shape[0]
    p_s = _pkt_conditional(f_s.float().reshape(n, -1), eps)
    p_t = _pkt_conditional(f_t.float().reshape(n, -1), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _pdist(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix with ``sqrt(max(d^2, eps))`` off the diagonal and 0 on it."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(e.shape[0], dtype=d.dtype, device=d.device))


def _rkd_angles(e: Tensor) -> Tensor:
    """``cos`` of the angle at vertex i between x_j and x_k: ``<u_ij, u_ik>`` with
    ``u_ij = normalize(x_j - x_i)``, flattened over all (i, j, k)."""
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(u, u.transpose(1, 2)).reshape(-1)


def rkd(f_s: Tensor, f_t: Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> Tensor:
    """Relational KD (Park et al., CVPR 2019) on (N, D) features, in fp32.

    Distance term: pairwise distances divided by their mean over positive entries, compared by
    the smooth L1 loss (mean); angle term: the cosines of every triplet's angle
    (:func:`_rkd_angles`), smooth L1 (mean). Returns ``w_dist * L_dist + w_angle * L_angle``;
    the teacher side carries no gradient.
    """
    n = f_s.shape[0]
    s = f_s.float().reshape(n, -1)
    t = f_t.float().reshape(n, -1).detach()
    d_t = _pdist(t)
    d_t = d_t / d_t[d_t > 0].mean()
    d_s = _pdist(s)
    d_s = d_s / d_s[d_s > 0].mean()
    loss_d = F.smooth_l1_loss(d_s, d_t)
    loss_a = F.smooth_l1_loss(_rkd_angles(s), _rkd_angles(t))
    return w_dist * loss_d + w_angle * loss_a


def nst(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Neuron selectivity transfer (Huang and Wang, 2017) on one pair of maps, in fp32: squared
    MMD with the polynomial kernel ``k(a, b) = (a . b)^2``.

    The larger map is average-pooled to the smaller height; each channel's H*W map is
    L2-normalised; ``mean k(t, t) + mean k(s, s) - 2 mean k(s, t)`` over all channel pairs and
    samples (the teacher-only term carries no gradient).
    """
    f_s, f_t = pool_to_smaller(f_s, f_t)
    s = F.normalize(f_s.float().flatten(2), dim=2)
    t = F.normalize(f_t.float().flatten(2), dim=2).detach()

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return k(t, t) + k(s, s) - 2 * k(s, t)


def _binary_log_probs(z: Tensor, gt: Tensor) -> Tensor:
    """``log [p_target, 1 - p_target]`` of ``softmax(z)`` per row, computed in log space:
    finite for any logits and any C >= 2 (no ``log(0)``)."""
    lse_all = torch.logsumexp(z, dim=1)
    lse_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1)
    z_gt = z.masked_select(gt)
    return torch.stack([z_gt - lse_all, lse_other - lse_all], dim=1)


def _kl_rows(log_p: Tensor, log_q: Tensor, keep: Tensor | None = None) -> Tensor:
    """``sum over rows and kept entries of p * (log p - log q)`` (0 where p = 0)."""
    term = log_p.exp() * (log_p - log_q)
    if keep is not None:
        term = torch.where(keep, term, torch.zeros_like(term))
    return term.sum()


def dkd(logits_s: Tensor, logits_t: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0,
        temperature: float = 4.0) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022), in fp32: ``alpha * TCKD + beta * NCKD``.

    With ``p = softmax(z / T)``: TCKD = ``KL([p_t^gt, 1 - p_t^gt] || [p_s^gt, 1 - p_s^gt])``
    (target vs. all other classes); NCKD = ``KL(q_t || q_s)`` with ``q`` the softmax over the
    non-target classes only; each times ``T^2`` and summed over the batch divided by N
    (mdistiller's scale). Computed in log space, so it stays finite with two classes (NCKD is
    then 0) and when the target logit is far ahead (mdistiller's ``log(softmax)`` and
    ``-1000 * mask`` are not).
    """
    t = float(temperature)
    z_s, z_t = logits_s.float() / t, logits_t.float() / t
    gt = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, target.reshape(-1, 1), True)
    n = z_s.shape[0]
    tckd = _kl_rows(_binary_log_probs(z_t, gt), _binary_log_probs(z_s, gt))
    log_q_s = F.log_softmax(z_s.masked_fill(gt, float("-inf")), dim=1)
    log_q_t = F.log_softmax(z_t.masked_fill(gt, float("-inf")), dim=1)
    nckd = _kl_rows(log_q_t.masked_fill(gt, 0.0), log_q_s.masked_fill(gt, 0.0), keep=~gt)
    return (alpha * tckd + beta * nckd) * (t * t) / n


__all__ = ["kd", "ce", "at", "sp", "pkt", "rkd", "nst", "dkd", "attention_map"]
