"""Per-subtask gradient components on every expert, and their cosines (gradient conflicts).

For a loss L(z) of the logits z (N x C) the gradient w.r.t. the parameters theta_e of expert e
splits over the logits::

    dL/dtheta_e = sum_c g_c,   g_c = sum_n dL/dz_nc * dz_nc/dtheta_e

``g_c`` (the part of the training gradient that flows through logit c, i.e. through subtask c)
is a vector-Jacobian product of the logits with the cotangent ``G * onehot(c)`` (G = dL/dz,
computed once by autograd). All C (times the number of loss signals) cotangents go through
the network together, batched with ``torch.func.vjp`` + ``vmap``, chunked over classes and images.

Two implementations, same numbers (tested against each other and against a per-class loop):

* :func:`_explainer_components` (KDExplainer): one plain forward (the model's own, in its
  public parts), then an expert-by-expert
  backward from the leaves down. Each expert's vjp is batched over only the subtasks that reach
  it (under hard routing: the classes routed through it), so the cost is about C backward passes
  along one root-to-leaf path, not C full backward passes.
* :func:`generic_components` (any routed model with ``expert_param_groups()``):
  ``torch.autograd.grad(..., is_grads_batched=True)`` on the whole model, chunked over classes.

The model runs in eval mode (BN running statistics, no dropout) under its own routing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import vjp, vmap

from kdx.analysis.attention import compose
from kdx.errors import KdxError
from kdx.models.routed.explainer import KDExplainer, expert_block, mix

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


def loss_for(objective, params: dict | None):
    """The training loss of ``objective`` (method names of :mod:`kdx.distill.methods`, a list or
    ``"kd+at"``, with their recorded option values) as ``fn(logits, y, teacher_logits)``.

    [kdx] Of a run distilled with feature methods, the signal is its logit part (``kd+at`` ->
    ``kd``; ``at`` alone -> ``ce``): a feature loss does not split into per-class subtask losses.
    ``fn.dropped`` names the methods left out."""
    from kdx.distill.methods import all_methods
    from kdx.distill.task import logit_loss

    names = [n for n in (objective if isinstance(objective, (list, tuple)) else str(objective).split("+")) if n]
    registry = all_methods()
    logit = [n for n in names if n not in registry or not registry[n].uses_features]
    fn = logit_loss("+".join(logit or ["ce"]), params)
    fn.dropped = [n for n in names if n not in logit]
    return fn


def subtask_components(model, batches, losses: dict, total: int, progress=None) -> Components:
    """Gradient components of every subtask for every loss in ``losses`` ({signal: fn}).

    ``batches``: list of ``(x, y, teacher_logits or None)`` on the model's device; ``total``:
    the number of images over all batches (each batch's mean loss is weighted by n / total, so
    the components sum to the gradient of the mean loss over all images). ``progress``: called
    with a short text ("batch 1/2, chunk 3/4, layer 2") as the work advances."""
    model.eval()
    progress = progress or (lambda text: None)
    if isinstance(model, KDExplainer):
        return _explainer_components(model, batches, losses, total, progress)
    if not hasattr(model, "expert_param_groups"):
        raise KdxError(f"{type(model).__name__} has no expert_param_groups(): no gradient conflicts")
    return generic_components(model, batches, losses, total, progress)


def _cotangents(z, y, t, losses, scale):
    """dL/dz for every signal -> (S, N, C)."""
    gs = []
    for fn in losses.values():
        loss = fn(z, y, t) * scale
        gs.append(torch.autograd.grad(loss, z, retain_graph=True)[0])
    return torch.stack(gs)


# ---------------------------------------------------------------- KDExplainer: expert by expert
# The forward is the model's own, in its public parts (KDExplainer.expert_pass, leaf_features,
# leaf_head_weight, head_logits, and kdx.models.routed.explainer.expert_block / mix): one implementation.
def _chunk_size(m, W, rows, x) -> tuple[int, list[tuple[int, int]]]:
    """Images per chunk (the widest per-layer temporary within BUDGET) and, per layer, the activation
    elements per image of (an expert's output, its widest conv input)."""
    with torch.no_grad():
        inputs, outs = m.expert_pass(x[:1], W)
    probe = [(o[0, 0].numel(), max(layer.mid, layer.cin, layer.cout) * i.shape[-1] * i.shape[-2])
             for layer, i, o in zip(m.layers, inputs, outs)]
    width = max(sum(len(r) for r in rows[l]) * probe[l][0] for l in range(len(m.layers)))
    return int(max(1, min(x.shape[0], BUDGET // max(width, 1)))), probe


def _leaf_cotangents(m, last, a, dfeat, rows, cls_rows) -> list[torch.Tensor]:
    """Cotangent at every last-layer expert's output, per row: a[c, e] x dfeat[row] pulled back
    through the (linear) ``leaf_features`` of that expert; (len(rows[e]), N, ch, h, w) each."""
    cot = []
    for e in range(last.shape[0]):
        r = rows[e]
        coef = a[cls_rows[r].to(a.device), e].to(dfeat.dtype)
        d = coef[:, None, None] * dfeat[r.to(dfeat.device)]
        _, back = vjp(lambda t: m.leaf_features(t.unsqueeze(0))[0], last[e])
        cot.append(vmap(back)(d)[0])
    return cot


def _layer_components(m, l, inputs, cot, W, rows, acc, probe_l, R):
    """Accumulate the gradient components of every expert of layer ``l`` from the cotangents at
    their outputs (rows[l][e] each); return the cotangents at layer l-1's outputs (None for l = 0)."""
    layer, x = m.layers[l], inputs[l]
    n = x.shape[1] if l > 0 else x.shape[0]  # (E, N, ...) mixed inputs, or the (N, ...) shared input
    nxt = pos = None
    if l > 0:
        nxt = [torch.zeros((len(rows[l - 1][p]), *x.shape[1:]), dtype=x.dtype, device=x.device)
               for p in range(m.experts[l - 1])]
        pos = [torch.full((R,), -1, dtype=torch.long) for _ in range(m.experts[l - 1])]
        for p in range(m.experts[l - 1]):
            pos[p][rows[l - 1][p]] = torch.arange(len(rows[l - 1][p]))
    for e in range(layer.experts):
        r = rows[l][e]
        if len(r) == 0:
            continue
        params, bufs = layer.expert_tensors(e)
        params = tuple(p.detach() for p in params)
        if l == 0:
            _, fn = vjp(lambda p: expert_block(p, bufs, x), params)
        else:
            _, fn = vjp(lambda p, xi: expert_block(p, bufs, xi), params, x[e])
        k = int(max(1, BUDGET // max(1, n * probe_l[1])))
        for j0 in range(0, len(r), k):
            out = vmap(fn)(cot[e][j0:j0 + k])
            flat = torch.cat([g.reshape(g.shape[0], -1) for g in out[0]], dim=1).float()
            if acc[l][e] is None:
                acc[l][e] = torch.zeros((len(r), flat.shape[1]), dtype=torch.float64, device=flat.device)
            acc[l][e][j0:j0 + k] += flat.double()
            if l > 0:
                rr = r[j0:j0 + k]
                for p in range(m.experts[l - 1]):
                    w = float(W[l - 1][e, p])
                    if w != 0.0:
                        nxt[p].index_add_(0, pos[p][rr].to(x.device), out[1] * w)
    return nxt


def _explainer_components(m, batches, losses, total, progress) -> Components:
    S, C, L = len(losses), m.num_classes, len(m.layers)
    R = S * C
    W = [w.detach() for w in m.routing_weights()]
    att = compose([w.cpu() for w in W])  # (C x E_l) per layer, same zero pattern as the products below
    cls_rows = torch.arange(R) % C
    rows = [[torch.nonzero(att[l][cls_rows, e] > 0).flatten() for e in range(m.experts[l])] for l in range(L)]
    acc = [[None] * m.experts[l] for l in range(L)]
    for b, (x, y, t) in enumerate(batches, start=1):
        step, probe = _chunk_size(m, W, rows, x)
        chunks = -(-x.shape[0] // step)
        for i0 in range(0, x.shape[0], step):
            xs, ys = x[i0:i0 + step], y[i0:i0 + step]
            ts = None if t is None else t[i0:i0 + step]
            n = xs.shape[0]
            with torch.no_grad():
                inputs, outs = m.expert_pass(xs, W)
                last = outs[-1]
                feat = mix(W[-1], m.leaf_features(last)).view(C, n, -1)
                w1 = m.leaf_head_weight(*last.shape[-2:])
            feat = feat.detach().requires_grad_(True)
            with torch.enable_grad():
                z = m.head_logits(feat, w1)
                G = _cotangents(z, ys, ts, losses, n / total)  # (S, n, C)
                # heads are per class: one plain backward gives every subtask's feature gradient
                dfeat = torch.stack([torch.autograd.grad(z, feat, G[s], retain_graph=True)[0] for s in range(S)])
            dfeat = dfeat.reshape(R, n, -1)  # row r = (signal r // C, class r % C)
            cot = _leaf_cotangents(m, last, W[-1], dfeat, rows[-1], cls_rows)
            for l in range(L - 1, -1, -1):
                progress(f"batch {b}/{len(batches)}, chunk {i0 // step + 1}/{chunks}, layer {l + 1}")
                cot = _layer_components(m, l, inputs, cot, W, rows, acc, probe[l], R)
    grads = [[a if a is not None else torch.zeros((0, 0), dtype=torch.float64) for a in layer] for layer in acc]
    return Components(list(losses), C, [[r.cpu() for r in lr] for lr in rows],
                      [[g.cpu() for g in lg] for lg in grads])


# ---------------------------------------------------------------- generic: batched autograd
def _view_of(grad_base: torch.Tensor, view: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """(k, *base.shape) batched gradient -> (k, *view.shape), read through the view's geometry."""
    if view is base:
        return grad_base
    g = grad_base.contiguous()
    return g.as_strided((g.shape[0], *view.shape), (g.stride(0), *view.stride()),
                        g.storage_offset() + view.storage_offset() - base.storage_offset())


def generic_components(model, batches, losses, total, progress=lambda text: None) -> Components:
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
        for b, (x, y, t) in enumerate(batches, start=1):
            n = x.shape[0]
            with torch.enable_grad():
                z = model(x)
                G = _cotangents(z, y, t, losses, n / total)
                eye = torch.eye(C, dtype=z.dtype, device=z.device)
                cots = (G[:, None] * eye[None, :, None, :]).reshape(R, n, C)  # row r: signal r//C, class r%C
                k = int(max(1, min(R, 8)))
                for j0 in range(0, R, k):
                    progress(f"batch {b}/{len(batches)}, chunk {j0 // k + 1}/{-(-R // k)}")
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
                    "class_i": ci.numpy(), "class_j": cj.numpy(),
                    "cosine": cos[iu[0], iu[1]].numpy(),
                    "shared_weight": torch.minimum(a[ci], a[cj]).numpy()}))
    cols = ["run", "signal", "layer", "expert", "class_i", "class_j", "cosine", "shared_weight"]
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
