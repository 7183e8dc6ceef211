"""Numpy transcriptions (loops, no torch) of the logit and feature losses of RepDistiller and
mdistiller: the oracles that tests/test_functional.py and tests/test_methods_simple.py hold
kdx.distill.functional against. Each function names the reference it transcribes."""

from __future__ import annotations


import numpy as np


def np_pool(f, h):
    """Adaptive average pooling of (N, C, H, H) to (h, h) when H is a multiple of h."""
    k = f.shape[2] // h
    return f.reshape(f.shape[0], f.shape[1], h, k, h, k).mean(axis=(3, 5))


def np_at(fs, ft, p):
    hs, ht = fs.shape[2], ft.shape[2]
    if hs > ht:
        fs = np_pool(fs, ht)
    elif ht > hs:
        ft = np_pool(ft, hs)

    def att(f):
        out = []
        for n in range(f.shape[0]):
            a = (f[n] ** p).mean(axis=0).reshape(-1)
            out.append(a / max(np.sqrt((a * a).sum()), 1e-12))
        return np.array(out)

    return ((att(fs) - att(ft)) ** 2).mean()


def np_sp(fs, ft):
    n = fs.shape[0]
    total = 0.0
    gs = fs.reshape(n, -1) @ fs.reshape(n, -1).T
    gt = ft.reshape(n, -1) @ ft.reshape(n, -1).T
    for i in range(n):
        rs = gs[i] / np.linalg.norm(gs[i])
        rt = gt[i] / np.linalg.norm(gt[i])
        total += ((rt - rs) ** 2).sum()
    return total / (n * n)


def np_pkt(fs, ft, eps=1e-7):
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


def np_rkd(fs, ft, wd, wa):
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


def np_nst(fs, ft):
    hs, ht = fs.shape[2], ft.shape[2]
    if hs > ht:
        fs = np_pool(fs, ht)
    elif ht > hs:
        ft = np_pool(ft, hs)
    s = fs.reshape(fs.shape[0], fs.shape[1], -1)
    t = ft.reshape(ft.shape[0], ft.shape[1], -1)
    s = s / np.linalg.norm(s, axis=2, keepdims=True)
    t = t / np.linalg.norm(t, axis=2, keepdims=True)

    def mmd_term(a, b):
        vals = [(a[n, i] @ b[n, j]) ** 2 for n in range(a.shape[0]) for i in range(a.shape[1])
                for j in range(b.shape[1])]
        return np.mean(vals)

    return mmd_term(t, t) + mmd_term(s, s) - 2 * mmd_term(s, t)


def np_dkd(zs, zt, y, alpha, beta, temp):
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
