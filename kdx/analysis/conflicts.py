"""Per-subtask gradient components on every expert, and their cosines (gradient conflicts).

For a loss L(z) of the logits z (N x C) the gradient w.r.t. the parameters theta_e of expert e
splits over the logits::

    dL/dtheta_e = sum_c g_c,   g_c = sum_n dL/dz_nc * dz_nc/dtheta_e

``g_c`` (the part of the training gradient that flows through logit c, i.e. through subtask c)
is a vector-Jacobian product of the logits with the cotangent ``G * onehot(c)`` (G = dL/dz,
computed once by autograd). All C (times the number of loss signals) cotangents go through
the network together, batched with ``torch.func.vjp`` + ``vmap``, chunked over classes and images.

Two implementations, same numbers (tested against each other and against a per-class loop):

* :func:`_explainer_components` (KDExplainer): one plain forward, then an expert-by-expert
  backward from the leaves down. Each expert's vjp is batched over only the subtasks that reach
  it (under hard routing: the classes routed through it), so the cost is about C backward passes
  along one root-to-leaf path, not C full backward passes.
* :func:`_generic_components` (any routed model with ``expert_param_groups()``):
  ``torch.autograd.grad(..., is_grads_batched=True)`` on the whole model, chunked over classes.

The model runs in eval mode (BN running statistics, no dropout) under its own routing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import vjp, vmap

from kdx.analysis.attention import compose
from kdx.analysis.routed import ExplainerAdapter
from kdx.errors import KdxError

# float elements per big temporary (16 MiB). Measured (benchmarks/analysis_time.py, C=100, 2 cores):
# 2^22 ran the gradient components 1.6x faster than 2^25, whose large temporaries are
# mmap'd and page-faulted afresh every chunk; 2^19 is slower again (too many small vmaps).
BUDGET = 1 << 22


@dataclass
class Components:
    """``grads[l][e]``: (len(rows[l][e]), P_e) gradient components of the rows ``rows[l][e]``;
    row r is signal ``r // C``, subtask ``r % C``; rows that cannot reach the expert are absent."""

    signals: list[str]
    num_classes: int
    rows: list[list[torch.Tensor]]
    grads: list[list[torch.Tensor]]


def loss_for(objective: str, params: dict | None):
    """The training loss of ``objective`` (a method name of :mod:`kdx.distill.methods`, with its
    recorded option values) as ``fn(logits, y, teacher_logits)``."""
    from kdx.distill.task import logit_loss

    return logit_loss(objective, params)


def subtask_components(model, batches, losses: dict, total: int) -> Components:
    """Gradient components of every subtask for every loss in ``losses`` ({signal: fn}).

    ``batches``: iterable of ``(x, y, teacher_logits or None)`` on the model's device; ``total``:
    the number of images over all batches (each batch's mean loss is weighted by n / total, so
    the components sum to the gradient of the mean loss over all images)."""
    model.eval()
    if isinstance(model, ExplainerAdapter):
        return _explainer_components(model.model, batches, losses, total)
    if not hasattr(model, "expert_param_groups"):
        raise KdxError(f"{type(model).__name__} has no expert_param_groups(): no gradient conflicts")
    return _generic_components(model, batches, losses, total)


def _cotangents(z, y, t, losses, scale):
    """dL/dz for every signal -> (S, N, C)."""
    gs = []
    for fn in losses.values():
        loss = fn(z, y, t) * scale
        gs.append(torch.autograd.grad(loss, z, retain_graph=True)[0])
    return torch.stack(gs)


# ---------------------------------------------------------------- KDExplainer: expert by expert
def _expert_block(params, buffers, x, eps):
    """One expert of an ExpertLayer in eval mode (conv-BN-ReLU-conv-BN-ReLU-maxpool)."""
    w1, b1, g1, be1, w2, b2, g2, be2 = params
    rm1, rv1, rm2, rv2 = buffers
    y = F.relu(F.batch_norm(F.conv2d(x, w1, b1, padding=1), rm1, rv1, g1, be1, False, 0.0, eps))
    y = F.relu(F.batch_norm(F.conv2d(y, w2, b2, padding=1), rm2, rv2, g2, be2, False, 0.0, eps))
    return F.max_pool2d(y, 2)


PARAM_NAMES = ("conv1_weight", "conv1_bias", "bn1_weight", "bn1_bias", "conv2_weight", "conv2_bias",
               "bn2_weight", "bn2_bias")


def _explainer_components(m, batches, losses, total) -> Components:
    from kdx.explainer.model import BN_EPS, _mix

    if [n for n, _ in m.layers[0].named_parameters()] != list(PARAM_NAMES):
        raise KdxError("KDExplainer expert layout changed; analysis adapter needs an update")
    S, C, L = len(losses), m.num_classes, len(m.layers)
    R = S * C
    W = [w.detach() for w in m.routing_weights()]
    att = compose([w.cpu() for w in W])  # (C x E_l) per layer, same zero pattern as the products below
    cls_rows = torch.arange(R) % C
    rows = [[torch.nonzero(att[l][cls_rows, e] > 0).flatten() for e in range(m.experts[l])] for l in range(L)]
    acc = [[None] * m.experts[l] for l in range(L)]
    checked = False
    for x, y, t in batches:
        n_all = x.shape[0]
        with torch.no_grad():
            probe = []  # activation elements per image at every layer's output
            h = m.stem(x[:1]) if m.use_stem else x[:1]
            for l, layer in enumerate(m.layers):
                o = layer(h)
                probe.append((o[0, 0].numel(), max(layer.mid, layer.cin, layer.cout) * h.shape[-1] * h.shape[-2]))
                h = _mix(W[l], o) if l < L - 1 else h
            width = max(sum(len(r) for r in rows[l]) * probe[l][0] for l in range(L))
            step = int(max(1, min(n_all, BUDGET // max(width, 1))))
        for i0 in range(0, n_all, step):
            xs, ys = x[i0:i0 + step], y[i0:i0 + step]
            ts = None if t is None else t[i0:i0 + step]
            n = xs.shape[0]
            with torch.no_grad():
                h = m.stem(xs) if m.use_stem else xs
                inputs, outs = [], []
                for l, layer in enumerate(m.layers):
                    inputs.append(h)
                    o = layer(h)
                    outs.append(o)
                    if l < L - 1:
                        h = _mix(W[l], o)
                yl = outs[-1]
                pooled = F.adaptive_avg_pool2d(yl.flatten(0, 1), m.pool).reshape(yl.shape[0], n, -1)
                feat = _mix(W[-1], pooled).view(C, n, -1)
            feat = feat.detach().requires_grad_(True)
            with torch.enable_grad():
                leaf = m.heads(feat)
                z = (leaf[..., 0] if m.head_type == "ce" else leaf.amax(dim=-1)).t()
                if not checked:
                    ref = m(xs).detach()
                    if not torch.allclose(z, ref, rtol=1e-3, atol=1e-4 * (1 + float(ref.abs().max()))):
                        raise KdxError("analysis adapter does not reproduce KDExplainer.forward; update kdx.analysis")
                    checked = True
                G = _cotangents(z, ys, ts, losses, n / total)  # (S, n, C)
                # heads are per class: one plain backward gives every subtask's feature gradient
                dfeat = torch.stack([torch.autograd.grad(z, feat, G[s], retain_graph=True)[0] for s in range(S)])
            dfeat = dfeat.reshape(R, n, -1)  # row r = (signal r // C, class r % C)
            # cotangent at every last-layer expert's output: leaf weight x pooling backward
            ch, hh, ww = yl.shape[2:]
            cot = []
            for e in range(m.experts[-1]):
                r = rows[-1][e]
                coef = W[-1][cls_rows[r].to(W[-1].device), e].to(dfeat.dtype)
                d = (coef[:, None, None] * dfeat[r.to(dfeat.device)]).reshape(len(r) * n, ch, m.pool, m.pool)
                cot.append(_pool_backward(d, (hh, ww), m.pool).reshape(len(r), n, ch, hh, ww))
            for l in range(L - 1, -1, -1):
                layer = m.layers[l]
                nxt = None
                if l > 0:
                    shape = inputs[l].shape[2:]
                    nxt = [torch.zeros((len(rows[l - 1][p]), n, *shape), dtype=x.dtype, device=x.device)
                           for p in range(m.experts[l - 1])]
                    pos = [torch.full((R,), -1, dtype=torch.long) for _ in range(m.experts[l - 1])]
                    for p in range(m.experts[l - 1]):
                        pos[p][rows[l - 1][p]] = torch.arange(len(rows[l - 1][p]))
                for e in range(layer.experts):
                    r = rows[l][e]
                    if len(r) == 0:
                        continue
                    params = tuple(getattr(layer, k)[e].detach() for k in PARAM_NAMES)
                    bufs = tuple(getattr(layer, f"bn{i}_running_{s}")[e] for i in (1, 2) for s in ("mean", "var"))
                    xin = inputs[l] if l == 0 else inputs[l][e]
                    if l == 0:
                        _, fn = vjp(lambda p: _expert_block(p, bufs, xin, BN_EPS), params)
                    else:
                        _, fn = vjp(lambda p, xi: _expert_block(p, bufs, xi, BN_EPS), params, xin)
                    k = int(max(1, BUDGET // max(1, n * probe[l][1])))
                    for j0 in range(0, len(r), k):
                        out = vmap(fn)(cot[e][j0:j0 + k])
                        gp = out[0]
                        flat = torch.cat([g.reshape(g.shape[0], -1) for g in gp], dim=1).float()
                        if acc[l][e] is None:
                            acc[l][e] = torch.zeros((len(r), flat.shape[1]), dtype=torch.float64, device=flat.device)
                        acc[l][e][j0:j0 + k] += flat.double()
                        if l > 0:
                            dx = out[1]
                            rr = r[j0:j0 + k]
                            for p in range(m.experts[l - 1]):
                                w = float(W[l - 1][e, p])
                                if w != 0.0:
                                    nxt[p].index_add_(0, pos[p][rr].to(x.device), dx * w)
                cot = nxt
    grads = [[a if a is not None else torch.zeros((0, 0), dtype=torch.float64) for a in layer] for layer in acc]
    return Components(list(losses), C, [[r.cpu() for r in lr] for lr in rows],
                      [[g.cpu() for g in lg] for lg in grads])


def _pool_backward(d, size, pool):
    """Backward of ``adaptive_avg_pool2d(., pool)`` from a (B, ch, pool, pool) gradient to (B, ch, *size)."""
    inp = torch.zeros((d.shape[0], d.shape[1], *size), dtype=d.dtype, device=d.device, requires_grad=True)
    with torch.enable_grad():
        out = F.adaptive_avg_pool2d(inp, pool)
        return torch.autograd.grad(out, inp, d)[0]


# ---------------------------------------------------------------- generic: batched autograd
def _view_of(grad_base: torch.Tensor, view: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """(k, *base.shape) batched gradient -> (k, *view.shape), read through the view's geometry."""
    if view is base:
        return grad_base
    g = grad_base.contiguous()
    return g.as_strided((g.shape[0], *view.shape), (g.stride(0), *view.stride()),
                        g.storage_offset() + view.storage_offset() - base.storage_offset())


def _generic_components(model, batches, losses, total) -> Components:
    groups = model.expert_param_groups()
    C, S = model.num_classes, len(losses)
    R = S * C
    bases = []
    for layer in groups:
        for tensors in layer:
            for t in tensors:
                b = t if t._base is None else t._base
                if not b.is_contiguous():
                    raise KdxError("expert_param_groups(): parameters must be contiguous")
                if all(b is not o for o in bases):
                    bases.append(b)
    flags = [b.requires_grad for b in bases]
    for b in bases:
        b.requires_grad_(True)
    acc = [[None] * len(layer) for layer in groups]
    try:
        for x, y, t in batches:
            n = x.shape[0]
            with torch.enable_grad():
                z = model(x)
                G = _cotangents(z, y, t, losses, n / total)
                eye = torch.eye(C, dtype=z.dtype, device=z.device)
                cots = (G[:, None] * eye[None, :, None, :]).reshape(R, n, C)  # row r: signal r//C, class r%C
                k = int(max(1, min(R, 8)))
                for j0 in range(0, R, k):
                    gb = torch.autograd.grad(z, bases, cots[j0:j0 + k], retain_graph=True, is_grads_batched=True,
                                             allow_unused=True)
                    for l, layer in enumerate(groups):
                        for e, tensors in enumerate(layer):
                            parts = []
                            for tt in tensors:
                                b = tt if tt._base is None else tt._base
                                i = next(i for i, o in enumerate(bases) if o is b)
                                g = gb[i] if gb[i] is not None else torch.zeros((cots[j0:j0 + k].shape[0], *b.shape),
                                                                                 dtype=b.dtype, device=b.device)
                                parts.append(_view_of(g, tt, b).reshape(g.shape[0], -1))
                            flat = torch.cat(parts, dim=1).double()
                            if acc[l][e] is None:
                                acc[l][e] = torch.zeros((R, flat.shape[1]), dtype=torch.float64, device=flat.device)
                            acc[l][e][j0:j0 + k] += flat
    finally:
        for b, f in zip(bases, flags):
            b.requires_grad_(f)
    rows = [[torch.arange(R) for _ in layer] for layer in groups]
    return Components(list(losses), C, rows, [[a.cpu() for a in layer] for layer in acc])


# ---------------------------------------------------------------- cosines
def component_matrix(comp: Components, signal: str, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, grads) of one signal at one expert (0-based layer), rows with zero gradient dropped."""
    s = comp.signals.index(signal)
    rows, g = comp.rows[layer][expert], comp.grads[layer][expert]
    if g.numel() == 0:
        return torch.zeros(0, dtype=torch.long), g
    keep = (rows // comp.num_classes) == s
    cls, g = rows[keep] % comp.num_classes, g[keep]
    nz = g.norm(dim=1) > 0
    return cls[nz], g[nz]


def conflict_frame(comp: Components, attention: list[torch.Tensor], run: str) -> pd.DataFrame:
    """Long table: one row per (signal, layer, expert, subtask pair i<j) where both gradient
    components are non-zero. ``shared_weight = min(a_ie, a_je)`` of the composed attention."""
    parts = []
    for signal in comp.signals:
        for l, att in enumerate(attention):
            for e in range(att.shape[1]):
                cls, g = component_matrix(comp, signal, l, e)
                if len(cls) < 2:
                    continue
                gn = g / g.norm(dim=1, keepdim=True)
                cos = gn @ gn.t()
                iu = torch.triu_indices(len(cls), len(cls), offset=1)
                ci, cj = cls[iu[0]], cls[iu[1]]
                a = att[:, e].double()
                parts.append(pd.DataFrame({
                    "run": run, "signal": signal, "layer": l + 1, "expert": e,
                    "subtask_i": ci.numpy(), "subtask_j": cj.numpy(),
                    "cosine": cos[iu[0], iu[1]].numpy(),
                    "shared_weight": torch.minimum(a[ci], a[cj]).numpy()}))
    cols = ["run", "signal", "layer", "expert", "subtask_i", "subtask_j", "cosine", "shared_weight"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def conflict_stats(frame: pd.DataFrame, signal: str) -> dict:
    """conflict_rate: share of shared pairs (shared_weight > 0) with cosine < 0; weighted_conflict:
    sum(w * max(0, -cos)) / sum(w) over shared pairs, w = shared_weight; mean_cosine."""
    f = frame[(frame["signal"] == signal) & (frame["shared_weight"] > 0)]
    if len(f) == 0:
        return {"conflict_rate": math.nan, "weighted_conflict": math.nan, "mean_cosine": math.nan, "pairs": 0}
    w = f["shared_weight"].to_numpy(dtype=np.float64)
    c = f["cosine"].to_numpy(dtype=np.float64)
    return {"conflict_rate": float((c < 0).mean()), "weighted_conflict": float((w * np.maximum(0, -c)).sum() / w.sum()),
            "mean_cosine": float(c.mean()), "pairs": int(len(f))}
