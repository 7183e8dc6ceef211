"""``crd``: Tian, Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020.

As RepDistiller's ``crd/`` (``CRDLoss``, ``ContrastMemory``, ``ContrastLoss``):

* embeddings ``e_s = l2norm(W_s pooled_s + b_s)``, ``e_t = l2norm(W_t pooled_t + b_t)``
  (``crd_feat_dim``, trained), ``pooled`` the global average of the final feature maps;
* two memory banks of ``N`` (training-split size) unit-norm rows, ``M_s`` of student and
  ``M_t`` of teacher embeddings, initialised uniform in ``[-s, s]``, ``s = 1/sqrt(D/3)``;
* for each sample ``i`` of the batch (``StepOutputs.index``: its dataset index, label ``y_i``)
  a row of ``K + 1`` memory indices, the positive first, then ``K`` negatives, drawn as
  RepDistiller's ``CIFAR100InstanceSample`` (``--crd-mode``, default ``exact``, its CIFAR
  default): the positive is ``i``; the negatives are drawn from the samples of the *other*
  classes, without replacement, with replacement when ``K`` exceeds their number. ``relax``:
  the positive is a random sample of class ``y_i``. ``uniform`` [kdx]: the positive is ``i``,
  the negatives uniform over all ``0..N-1`` with replacement (``ContrastMemory``'s own sampler
  when it is given no indices). All draws use torch's global RNG (deterministic under the
  run's seed);
* scores ``P_s[i, j] = exp(M_t[idx_ij] . e_s_i / T) / Z_s`` (student anchor against the
  teacher memory) and ``P_t[i, j] = exp(M_s[idx_ij] . e_t_i / T) / Z_t``; ``Z = mean(exp(.)) * N``
  fixed on the first step (kept in the state, so resumed);
* NCE loss of each side (Eq. 18): with ``m = K`` and ``Pn = 1/N``,
  ``-(1/B) * sum_i [log(P_i0 / (P_i0 + m Pn + eps)) + sum_j>0 log(m Pn / (P_ij + m Pn + eps))]``,
  ``eps = 1e-7``; the method's loss is ``crd_weight * (L_s + L_t)``;
* after scoring, the memories move towards the batch:
  ``M[i] <- normalize(m * M[i] + (1 - m) * e_i)`` with momentum ``m = crd_nce_m``.

Defaults are RepDistiller's (weight 0.8 as its CRD runs: ``-a 0 -b 0.8``; D 128, K 16384,
T 0.07, momentum 0.5, mode exact). Differences, marked [kdx]: a split with ``N <= K``
samples gets ``K = N - 1`` negatives (RepDistiller keeps K and draws with replacement; the
clamp keeps the scored rows at most ``N`` per sample on small CPU splits). Under DDP the
memories follow rank 0 (DDP broadcasts buffers before every forward), so only rank 0's batches
move them; the reference trains in a single process.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from kdx.distill.methods.base import MethodContext, register_method
from kdx.distill.methods.repdistiller import TapMethod, final_tap
from kdx.errors import KdxError
from kdx.options import Option

EPS = 1e-7


def l2_normalize(x: Tensor) -> Tensor:
    """``x / ||x||_2`` per row (RepDistiller's ``Normalize(2)``, no epsilon)."""
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """RepDistiller's ``ContrastLoss`` (Eq. 18) on ``scores`` (B, K+1): column 0 the positive.

    ``-(sum_i log(P_i0/(P_i0 + K/N + eps)) + sum_i,j>0 log((K/N)/(P_ij + K/N + eps))) / B``.
    """
    b, m = scores.shape[0], scores.shape[1] - 1
    mpn = m / float(n_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + mpn + EPS))
    log_d0 = torch.log(mpn / (neg + mpn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / b


def momentum_update(memory: Tensor, index: Tensor, v: Tensor, momentum: float) -> None:
    """In place: ``memory[index] <- normalize(momentum * memory[index] + (1 - momentum) * v)``."""
    rows = memory.index_select(0, index) * momentum + v.to(memory.dtype) * (1.0 - momentum)
    memory.index_copy_(0, index, l2_normalize(rows))


def draw_contrast_indices(index: Tensor, labels: Optional[Tensor], n_data: int, k: int,
                          mode: str = "exact") -> Tensor:
    """Rows ``[positive, K negatives]`` of memory indices for a batch of dataset ``index``.

    ``labels`` (N,): the training split's labels (``exact``/``relax``; unused by ``uniform``).
    ``exact``: positive ``index_i``; negatives a uniform K-subset of ``{j : labels_j != y_i}``
    (uniform K-tuple with replacement when that set has fewer than K members), as
    ``np.random.choice(cls_negative[y], K, replace=K > len(cls_negative[y]))``.
    ``relax``: the positive uniform over ``{j : labels_j == y_i}``. ``uniform``: negatives
    uniform over ``0..N-1`` with replacement.
    """
    b, dev = index.shape[0], index.device
    if mode == "uniform":
        idx = torch.randint(0, n_data, (b, k + 1), device=dev)
        idx[:, 0] = index
        return idx
    labels = labels.to(dev)
    y = labels.index_select(0, index)
    same = labels.unsqueeze(0) == y.unsqueeze(1)  # (B, N): the anchor's own class
    pool = n_data - same.sum(1)  # negatives available per anchor
    idx = torch.empty(b, k + 1, dtype=torch.long, device=dev)
    if mode == "relax":  # a random same-class sample as the positive
        idx[:, 0] = torch.rand(b, n_data, device=dev).masked_fill(~same, -1.0).argmax(1)
    else:
        idx[:, 0] = index
    # without replacement: the K largest of N uniform keys, the anchor's own class keyed below all
    rank = torch.rand(b, n_data, device=dev).masked_fill(same, -1.0)
    short = pool < k  # RepDistiller's replace=True rows
    if bool((~short).any()):
        rows = (~short).nonzero().squeeze(1)
        idx[rows, 1:] = rank.index_select(0, rows).topk(k, dim=1, sorted=False).indices
    if bool(short.any()):
        rows = short.nonzero().squeeze(1)
        # with replacement: a uniform position in the pool -> that index among the other classes
        order = torch.argsort(same.index_select(0, rows).to(torch.int8), dim=1, stable=True)  # other classes first
        pos = (torch.rand(rows.shape[0], k, device=dev) * pool.index_select(0, rows).unsqueeze(1)).long()
        idx[rows, 1:] = torch.gather(order, 1, pos)
    return idx


def contrast_scores(memory: Tensor, idx: Tensor, anchor: Tensor, temperature: float) -> Tensor:
    """``exp(memory[idx[i, j]] . anchor_i / T)``, shape (B, K+1); the memory rows are constants."""
    rows = memory.index_select(0, idx.reshape(-1)).detach().view(idx.shape[0], idx.shape[1], -1)
    return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / temperature)


class Embed(nn.Module):
    """RepDistiller's CRD ``Embed``: flatten, Linear(dim_in, dim_out), L2-normalise."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(self.linear(x.flatten(1)))


@register_method
class CRD(TapMethod):
    name = "crd"
    help = "contrastive representation distillation (embeddings + memory bank over dataset indices)"
    paper = "Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020"
    options = (
        Option("crd_weight", float, 0.8, "Weight of the CRD loss (RepDistiller).", low=0, panel="Method"),
        Option("crd_feat_dim", int, 128, "CRD embedding size.", low=1, panel="Method"),
        Option("crd_nce_k", int, 16384, "CRD negatives per sample (at most the split size - 1).", low=1,
               panel="Method"),
        Option("crd_nce_t", float, 0.07, "CRD temperature.", low=0, low_open=True, panel="Method"),
        Option("crd_nce_m", float, 0.5, "CRD memory momentum.", low=0, high=1, panel="Method"),
        Option("crd_mode", str, "exact", "CRD contrast rows: exact (positive = the sample, negatives from the other "
               "classes; RepDistiller's CIFAR default), relax (positive = a random sample of its class), uniform "
               "(negatives from all samples)", choices=("exact", "relax", "uniform"), panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.n_data = int(ctx.num_samples)
        if self.n_data < 2:
            raise KdxError(f"crd needs the training-split size (a memory bank row per sample); got {self.n_data}")
        self.k = min(int(self.params["crd_nce_k"]), self.n_data - 1)  # [kdx] clamp for small splits
        self.mode = str(self.params.get("crd_mode", "exact"))
        self.labels = None
        if self.mode != "uniform":
            if ctx.train_labels is None or len(ctx.train_labels) != self.n_data:
                raise KdxError(f"crd --crd-mode {self.mode} needs the labels of the {self.n_data} training samples; "
                               "use --crd-mode uniform without them")
            self.labels = torch.as_tensor(ctx.train_labels).long().flatten()  # not a buffer: not checkpointed
        self.use_taps([final_tap(ctx.student)], [final_tap(ctx.teacher)])
        self.embed_s = self.embed_t = None

    def _pooled(self, out):
        p_s, p_t = self.pooled_pair(out)
        return p_s.float(), p_t.float()

    def setup(self, probe):
        d = int(self.params["crd_feat_dim"])
        p_s, p_t = self._pooled(probe)
        s_dim, t_dim = p_s.shape[1], p_t.shape[1]
        with self.connector_rng():
            self.embed_s = Embed(s_dim, d)
            self.embed_t = Embed(t_dim, d)
            stdv = 1.0 / math.sqrt(d / 3)
            self.register_buffer("memory_s", torch.rand(self.n_data, d).mul_(2 * stdv).add_(-stdv))
            self.register_buffer("memory_t", torch.rand(self.n_data, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z_s, Z_t; < 0: not yet set
        self.to(p_s.device)

    def loss(self, out):
        self.check_setup(self.embed_s)
        if out.index is None:
            raise KdxError("crd needs the dataset indices of each batch; this training loop does not provide them")
        p_s, p_t = self._pooled(out)
        with torch.autocast(p_s.device.type, enabled=False):
            return {"crd": self.params["crd_weight"] * self._contrast(p_s, p_t, out.index)}

    def _contrast(self, p_s: Tensor, p_t: Tensor, index: Tensor) -> Tensor:
        e_s, e_t = self.embed_s(p_s), self.embed_t(p_t)
        index = index.to(self.memory_s.device).long()
        if self.labels is not None and self.labels.device != index.device:
            self.labels = self.labels.to(index.device)  # once: the labels live where the indices do
        idx = draw_contrast_indices(index, self.labels, self.n_data, self.k, self.mode)
        t = float(self.params["crd_nce_t"])
        scores_s = contrast_scores(self.memory_t, idx, e_s, t)  # student anchor, teacher memory
        scores_t = contrast_scores(self.memory_s, idx, e_t, t)  # teacher anchor, student memory
        with torch.no_grad():
            if self.z[0] < 0:
                self.z[0] = scores_s.mean() * self.n_data
            if self.z[1] < 0:
                self.z[1] = scores_t.mean() * self.n_data
        loss = nce_loss(scores_s / self.z[0], self.n_data) + nce_loss(scores_t / self.z[1], self.n_data)
        with torch.no_grad():
            m = float(self.params["crd_nce_m"])
            momentum_update(self.memory_s, index, e_s.detach(), m)
            momentum_update(self.memory_t, index, e_t.detach(), m)
        return loss

    def record(self) -> dict:
        """``params.crd_nce_k`` is the number of negatives used (clamped to the split), ``crd_nce_k_asked``
        the option's value (config.json keeps what was asked)."""
        rec = super().record() | {"negatives": self.k, "n_data": self.n_data, "mode": self.mode}
        rec["params"] = dict(rec["params"], crd_nce_k=self.k, crd_nce_k_asked=int(self.params["crd_nce_k"]))
        return rec

    def warnings(self) -> list[str]:
        asked = int(self.params["crd_nce_k"])
        if asked <= self.k:
            return []
        return [f"--crd-nce-k {asked} is more than the training split allows ({self.n_data} samples): crd uses "
                f"{self.k} negatives per sample (recorded as crd_nce_k in the checkpoint's methods; config.json "
                f"keeps {asked})"]
