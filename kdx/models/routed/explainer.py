"""KDExplainer: the hierarchical mixture of experts (HME) of KDEXPLAINER.md section 2, vectorised.

Tree (32x32 inputs, official): 3 expert layers of 2, 4 and 8 experts, then C leaves.
Expert block: conv3x3(bias) -> BN -> ReLU -> conv3x3(bias) -> BN -> ReLU -> maxpool 2;
widths (mid, out): (64, 64), (64, 64), (64, 32). All layer-1 experts read the image. A
routing matrix R (children x parents) sits between consecutive layers and between the
last layer and the C leaves; child input = sum_j a_ij * out_j with ``a = route(R, tau,
mode)`` (see :mod:`kdx.models.routed.routing`). Leaf head per class: adaptive avg pool 7x7
-> flatten -> Linear(hidden) -> ReLU -> Dropout -> Linear(hidden) -> ReLU -> Dropout ->
Linear(1) ("ce") or Linear(2) + max ("nce").

Inputs larger than 32 px (official code, ``LEARNTOBRANCH_Deep`` outside CIFAR): the stem
``conv1_0`` = Conv2d(3, 64, kernel_size=7) (stride 1, no padding, with bias) -> BN -> ReLU
-> maxpool 2 is applied first (an H-px image becomes (H - 6) // 2 px: 64 -> 29), and the
tree has a 4th layer of 16 experts. Widths of that tree, as the official code: (64, 64)
for layers 1-3, (64, 32) for layer 4 (the last expert layer ends at 32 channels).
The stem parameters always exist (the CIFAR state dict carries them, unused).

Vectorisation
-------------
* Parameters of all experts of a layer are stored stacked (leading dim = expert), the C
  leaf heads too (leading dim = class); activations between layers are stacked as
  ``(E, N, ch, h, w)`` with every ``[e]`` slice a dense tensor in the input's memory
  format (so channels_last survives).
* Mixing of a layer is one ``mm`` of the (children x parents) weights with the stacked
  parent outputs (the leaves too). Pooling is linear and commutes with the mixing; for
  CIFAR (4x4 maps pooled UP to 7x7) it is folded into the first head Linear instead, so the
  heads multiply 512 instead of 1568 features (see ``leaf_features``). Equal to the
  official mix-then-pool up to float rounding (tests: <= 1e-5 relative).
* The C heads run as three ``baddbmm`` calls; nothing loops over classes or expert pairs.
* Small things that measurably matter on CPU: stacked parameters are ``unbind``-ed once per
  forward (indexing ``p[e]`` per expert makes the backward scatter into full-size zero
  tensors, O(E^2) memory traffic); max-pool runs before the second ReLU (they commute);
  CPU dropout draws its mask 4x cheaper than ``F.dropout`` (see ``leaf_dropout``).
* Expert convs: one Python loop over the E experts of a layer (stacked weights unbound).
  Candidates, one expert layer's training step (forward + backward, batch 128, median ms),
  this dev CPU (2-core Xeon VM, AVX-512 + AMX-bf16), ``benchmarks/explainer_throughput.py
  --conv``; bf16 = ``torch.autocast("cpu", dtype=torch.bfloat16)``, CL = channels_last
  input, grouped = one grouped conv per conv of the layer (layer 1: one dense conv with
  stacked output channels, since all its experts read the same image)::

      2 threads (machine otherwise idle)  loop fp32   grouped fp32  loop bf16   grouped bf16
                                          NCHW   CL   NCHW   CL     NCHW   CL   NCHW   CL
      layer 1 (2, 3-64-64, 32 px)          629  474    647  461      249  159    367  191
      layer 2 (4, 64-64-64, 16 px)         276  238    404  292      140   88    156   84
      layer 3 (8, 64-64-32, 8 px)          111   92    124  103       66   50     56   37
      1 thread (--threads 1)
      layer 1                             1301  970   1358  872      569  267    654  350
      layer 2                              881  677   1016  822      494  332    485  292
      layer 3                              275  251    341  287      192  112    207  160

  In fp32 too, channels_last beats NCHW in every layer (the CL columns); since issue 22 the
  trainer uses it on CPU in both precisions, with torch's fused optimizers.
  bf16 autocast + channels_last is the fastest training configuration by far. There the
  loop wins layer 1 and the grouped conv layers 2-3 (2 threads: 297 vs 312 ms in all; a
  mix would save <= 17 ms of a ~290 ms step), but grouped convs need the activations as
  (N, E*ch, h, w), where the routing mix is no longer one cheap matmul over a leading
  expert dim; kdx keeps the loop (simplest, and as fast within measurement noise).
  Note: with other processes busy on the 2 cores, 2-thread timings become erratic
  (OpenMP threads waiting for each other, 5-30x slower); one thread per process is
  then much faster.

Expert parameters for analysis: ``model.layers[l]`` holds the stacked parameters of layer
``l``; ``KDExplainer.per_expert(tensors)`` turns them (or their gradients) into an
``(E, n)`` matrix whose row e belongs to expert e.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdx.errors import KdxError
from kdx.models.routed.routing import route, routing_mode
from kdx.models.taps import Tap

HEADS = ("ce", "nce")
STEM_CHANNELS, STEM_KERNEL = 64, 7
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


def stem_size(image_size: int) -> int:
    """Side of the stem's output map: 7x7 conv without padding (H - 6), then maxpool 2 (floor)."""
    return (image_size - STEM_KERNEL + 1) // 2


def _stack(ts: Sequence[Tensor]) -> Tensor:
    """Stack 4-d tensors on a new dim 0, each slice keeping the memory format of ``ts[0]``."""
    if not ts[0].is_contiguous() and ts[0].is_contiguous(memory_format=torch.channels_last):
        return torch.stack([t.permute(0, 2, 3, 1) for t in ts]).permute(0, 1, 4, 2, 3)
    return torch.stack(list(ts))


def mix(a: Tensor, x: Tensor) -> Tensor:
    """The routing mix ``y[i] = sum_p a[i, p] * x[p]`` (a: children x parents, x: (P, ...)), as one
    matmul over x's physical layout. Used between expert layers and into the leaves."""
    order = [0] + sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    xp = x.permute(order)
    y = torch.mm(a.to(x.dtype), xp.reshape(x.shape[0], -1)).view(a.shape[0], *xp.shape[1:])
    return y.permute([order.index(d) for d in range(x.dim())])


@functools.lru_cache(maxsize=64)
def _pool_matrix(h: int, w: int, pool: int, device: torch.device) -> Tensor:
    """``adaptive_avg_pool2d(., pool)`` of an h x w map as an (h*w, pool*pool) matrix (fp32,
    cached, never modified): the Kronecker product of the per-axis bin-averaging matrices."""
    def axis(n: int) -> Tensor:
        m = torch.zeros(n, pool, device=device)
        for p in range(pool):
            lo, hi = (p * n) // pool, -((-(p + 1) * n) // pool)  # floor, ceil: torch's adaptive bins
            m[lo:hi, p] = 1.0 / (hi - lo)
        return m
    return torch.kron(axis(h), axis(w))


def leaf_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout. On CPU the keep-mask is drawn as 16-bit integers (4 per 64-bit random number;
    torch's CPU bernoulli draws one serial random number per element, several times slower):
    drop probability round(p * 2^16) / 2^16 (within 8e-6 of p), survivors scaled to stay unbiased."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    t = round(p * 65536)
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= t - 32768
    return x * keep * (65536 / (65536 - t))


EXPERT_PARAMS = ("conv1_weight", "conv1_bias", "bn1_weight", "bn1_bias", "conv2_weight", "conv2_bias",
                 "bn2_weight", "bn2_bias")
EXPERT_BUFFERS = ("bn1_running_mean", "bn1_running_var", "bn2_running_mean", "bn2_running_var")


def expert_block(params: Sequence[Tensor], buffers: Sequence[Tensor], x: Tensor, training: bool = False) -> Tensor:
    """One expert as a pure function: conv3x3(bias) -> BN -> ReLU -> conv3x3(bias) -> BN -> maxpool 2 -> ReLU.

    ``params``: the expert's tensors in ``EXPERT_PARAMS`` order, ``buffers``: its BN statistics
    in ``EXPERT_BUFFERS`` order (updated in place when ``training``). Max-pool runs before the
    second ReLU (they commute, in values and gradients): the ReLU then touches 1/4 of the map."""
    w1, b1, g1, be1, w2, b2, g2, be2 = params
    rm1, rv1, rm2, rv2 = buffers
    y = F.conv2d(x, w1, b1, padding=1)
    y = F.relu(F.batch_norm(y, rm1, rv1, g1, be1, training, BN_MOMENTUM, BN_EPS), inplace=True)
    y = F.batch_norm(F.conv2d(y, w2, b2, padding=1), rm2, rv2, g2, be2, training, BN_MOMENTUM, BN_EPS)
    return F.relu(F.max_pool2d(y, 2), inplace=True)


class ExpertLayer(nn.Module):
    """E expert blocks with stacked parameters; every tensor here has the expert as dim 0."""

    def __init__(self, experts: int, cin: int, mid: int, cout: int):
        super().__init__()
        self.experts, self.cin, self.mid, self.cout = experts, cin, mid, cout
        for i, (co, ci) in enumerate(((mid, cin), (cout, mid)), start=1):
            setattr(self, f"conv{i}_weight", nn.Parameter(torch.empty(experts, co, ci, 3, 3)))
            setattr(self, f"conv{i}_bias", nn.Parameter(torch.empty(experts, co)))
            setattr(self, f"bn{i}_weight", nn.Parameter(torch.empty(experts, co)))
            setattr(self, f"bn{i}_bias", nn.Parameter(torch.empty(experts, co)))
            self.register_buffer(f"bn{i}_running_mean", torch.zeros(experts, co))
            self.register_buffer(f"bn{i}_running_var", torch.ones(experts, co))
            self.register_buffer(f"bn{i}_num_batches_tracked", torch.zeros(experts, dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for i in (1, 2):
                w = getattr(self, f"conv{i}_weight")  # kaiming normal, fan_out of ONE expert, relu
                w.normal_(0.0, math.sqrt(2.0 / (w.shape[1] * w.shape[3] * w.shape[4])))
                getattr(self, f"conv{i}_bias").zero_()
                getattr(self, f"bn{i}_weight").fill_(1.0)
                getattr(self, f"bn{i}_bias").zero_()
                getattr(self, f"bn{i}_running_mean").zero_()
                getattr(self, f"bn{i}_running_var").fill_(1.0)
                getattr(self, f"bn{i}_num_batches_tracked").zero_()

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, cin, h, w) shared by all experts, or (E, N, cin, h, w) one input per expert.
        Returns (E, N, cout, h/2, w/2)."""
        # unbind once: per-expert views whose backward is a single stack (indexing p[e] would
        # scatter into a zero tensor of the full stacked size for every expert)
        t = {k: v.unbind(0) for k, v in (*self.named_parameters(), *self.named_buffers())}
        xs = [x] * self.experts if x.dim() == 4 else x.unbind(0)
        outs = [expert_block([t[k][e] for k in EXPERT_PARAMS], [t[k][e] for k in EXPERT_BUFFERS], xs[e],
                             self.training) for e in range(self.experts)]
        if self.training:
            self.bn1_num_batches_tracked.add_(1)
            self.bn2_num_batches_tracked.add_(1)
        return _stack(outs)

    def expert_tensors(self, e: int) -> tuple[list[Tensor], list[Tensor]]:
        """Expert e's parameters (views ``p[e]``, ``EXPERT_PARAMS`` order) and BN statistics
        (``EXPERT_BUFFERS`` order): the arguments of :func:`expert_block`."""
        return [getattr(self, k)[e] for k in EXPERT_PARAMS], [getattr(self, k)[e] for k in EXPERT_BUFFERS]


class LeafHeads(nn.Module):
    """C per-class MLP heads stored stacked in ``x @ W`` layout: w1 (C, features, hidden),
    w2 (C, hidden, hidden), w3 (C, hidden, k); biases (C, hidden) / (C, k).
    (The official ``fc1_c.0.weight`` is ``w1[c].t()``.)"""

    def __init__(self, classes: int, features: int, hidden: int, outputs: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.w1 = nn.Parameter(torch.empty(classes, features, hidden))
        self.b1 = nn.Parameter(torch.empty(classes, hidden))
        self.w2 = nn.Parameter(torch.empty(classes, hidden, hidden))
        self.b2 = nn.Parameter(torch.empty(classes, hidden))
        self.w3 = nn.Parameter(torch.empty(classes, hidden, outputs))
        self.b3 = nn.Parameter(torch.empty(classes, outputs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for w, b in ((self.w1, self.b1), (self.w2, self.b2), (self.w3, self.b3)):
                w.normal_(0.0, 0.01)
                b.zero_()

    def forward(self, z: Tensor, w1: Tensor | None = None) -> Tensor:
        """z: (C, N, features) -> (C, N, k); ``w1`` replaces ``self.w1`` (pool folded into it)."""
        h = F.relu(torch.baddbmm(self.b1.unsqueeze(1), z, self.w1 if w1 is None else w1))
        h = leaf_dropout(h, self.dropout, self.training)
        h = F.relu(torch.baddbmm(self.b2.unsqueeze(1), h, self.w2))
        h = leaf_dropout(h, self.dropout, self.training)
        return torch.baddbmm(self.b3.unsqueeze(1), h, self.w3)


class KDExplainer(nn.Module):
    """The KDExplainer HME. ``forward(x) -> (N, C)`` class logits.

    ``experts=None`` means (2, 4, 8) for ``image_size <= 32`` and (2, 4, 8, 16) above.
    ``widths``: one (mid, out) pair per expert layer (a 3-tuple (in, mid, out) is accepted,
    its ``in`` must match); default (64, 64) everywhere but (64, 32) for the last layer.
    ``routing`` ("soft" | "hard" | "gumbel") and ``tau`` are plain attributes read by every
    forward: any checkpoint can be evaluated under any routing.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 experts: Sequence[int] | None = None, widths: Sequence[Sequence[int]] | None = None,
                 head: str = "ce", routing: str = "soft", tau: float = 10.0, dropout: float = 0.15,
                 hidden: int = 128, pool: int = 7):
        super().__init__()
        if head not in HEADS:
            raise KdxError(f"unknown head '{head}'; valid heads: {', '.join(HEADS)}")
        if num_classes < 1 or in_channels < 1:
            raise KdxError("num_classes and in_channels must be >= 1")
        experts = tuple(int(e) for e in (experts or ((2, 4, 8) if image_size <= 32 else (2, 4, 8, 16))))
        if not experts or min(experts) < 1:
            raise KdxError(f"experts must be a non-empty sequence of positive counts, got {experts}")
        use_stem = image_size > 32
        cin = STEM_CHANNELS if use_stem else in_channels
        if widths is None:
            widths = [(64, 64)] * (len(experts) - 1) + [(64, 32)]
        if len(widths) != len(experts):
            raise KdxError(f"widths has {len(widths)} entries but there are {len(experts)} expert layers")
        pairs = []
        for w in widths:
            w = tuple(int(v) for v in w)
            if len(w) == 3:
                if w[0] != cin:
                    raise KdxError(f"widths {w}: input channels must be {cin}")
                w = w[1:]
            if len(w) != 2:
                raise KdxError(f"widths entries are (mid, out) or (in, mid, out), got {w}")
            pairs.append(w)
            cin = w[1]
        size = stem_size(image_size) if use_stem else image_size
        if size >> len(experts) < 1:
            raise KdxError(f"image_size {image_size} is too small for {len(experts)} expert layers")

        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.experts, self.widths, self.head_type = experts, [list(p) for p in pairs], head
        self.dropout, self.hidden, self.pool, self.use_stem = dropout, hidden, pool, use_stem
        self.routing, self.tau = routing, tau

        self.stem = nn.Sequential(nn.Conv2d(in_channels, STEM_CHANNELS, STEM_KERNEL),  # stride 1, no padding
                                  nn.BatchNorm2d(STEM_CHANNELS), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        cin, layers = (STEM_CHANNELS if use_stem else in_channels), []
        for e, (mid, out) in zip(experts, pairs):
            layers.append(ExpertLayer(e, cin, mid, out))
            cin = out
        self.layers = nn.ModuleList(layers)
        children = list(experts[1:]) + [num_classes]
        self.branches = nn.ParameterList([nn.Parameter(torch.rand(c, p)) for c, p in zip(children, experts)])
        self.heads = LeafHeads(num_classes, cin * pool * pool, hidden, 1 if head == "ce" else 2, dropout)
        self.reset_parameters(keep_routing=True)

    # ---------------------------------------------------------------- config / params
    routing = routing_mode

    def config_dict(self) -> dict:
        """JSON-able constructor arguments: ``KDExplainer(**model.config_dict())`` rebuilds it."""
        return dict(num_classes=self.num_classes, in_channels=self.in_channels, image_size=self.image_size,
                    experts=list(self.experts), widths=[list(w) for w in self.widths], head=self.head_type,
                    routing=self.routing, tau=float(self.tau), dropout=self.dropout, hidden=self.hidden,
                    pool=self.pool)

    def reset_parameters(self, keep_routing: bool = True) -> None:
        """Official init of every conv/BN/Linear (stage 2 re-init); routing U(0,1) unless kept."""
        conv, bn = self.stem[0], self.stem[1]
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        bn.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        self.heads.reset_parameters()
        if not keep_routing:
            with torch.no_grad():
                for r in self.branches:
                    r.uniform_(0.0, 1.0)

    def non_routing_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.branches}
        return [p for p in self.parameters() if id(p) not in ids]

    def routing_logits(self) -> list[nn.Parameter]:
        """The routing matrices R (children x parents), first layer first, leaves (C x E_last) last."""
        return list(self.branches)

    def routing_weights(self, mode: str | None = None, tau: float | None = None) -> list[Tensor]:
        """Routing weights a (children x parents) per routing layer under ``mode``/``tau``
        (default: the model's). Gumbel noise is drawn only in training mode."""
        mode = self.routing if mode is None else mode
        tau = self.tau if tau is None else tau
        return [route(r, tau, mode, training=self.training) for r in self.branches]

    # ---------------------------------------------------------------- features (kdx.models.taps)
    # [kdx] An explainer stage is one expert layer: its E experts' outputs (after the block's
    # max-pool, what the next layer mixes) concatenated along channels, (N, E * c, h, w). The
    # feature methods pair stage l with the teacher's stage l, as for a zoo student; where the
    # sizes differ (each expert layer halves the map, a zoo stage may not) the methods pool the
    # larger map to the smaller as RepDistiller's do, and FitNet's regressor adapts the stride.
    @property
    def stage_names(self) -> list[str]:
        return [f"layers.{i}" for i in range(len(self.layers))]

    @property
    def stage_channels(self) -> list[int]:
        return [layer.experts * layer.cout for layer in self.layers]

    def feature_taps(self) -> tuple[Tap | None, list[Tap]]:
        """``(stem, [expert layers])``: the stem output (inputs over 32 px) or None, then every expert layer."""
        return (Tap("stem") if self.use_stem else None), [Tap(n, experts=True) for n in self.stage_names]

    def final_tap(self) -> Tap:
        """The last expert layer's outputs, concatenated (what the leaf heads read, before routing)."""
        return Tap(self.stage_names[-1], experts=True)

    def feat_modules(self) -> list[nn.Module]:
        """The stem (when used) and the expert layers (not the routing, not the heads)."""
        return ([self.stem] if self.use_stem else []) + list(self.layers)

    @staticmethod
    def per_expert(tensors: Sequence[Tensor]) -> Tensor:
        """Stacked per-expert tensors (e.g. ``layer.parameters()`` or their grads) -> (E, n)."""
        return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)

    def expert_param_groups(self) -> list[list[list[Tensor]]]:
        """Per expert layer, per expert: views ``p[e]`` of the layer's stacked parameters
        (``per_expert`` order); the routed-model interface of :mod:`kdx.analysis.routed`."""
        return [[layer.expert_tensors(e)[0] for e in range(layer.experts)] for layer in self.layers]

    # ---------------------------------------------------------------- forward, in parts
    # forward(x) = head_logits(mix(a_L, leaf_features(outs[-1])), leaf_head_weight(h, w)) with
    # outs = expert_pass(x, a)[1]; the analysis (kdx.analysis.conflicts) calls the same parts.
    def expert_pass(self, x: Tensor, weights: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Run the stem and the expert layers under routing weights ``weights`` (children x parents).

        Returns ``(inputs, outputs)``: ``inputs[0]`` is the (N, ch, H, W) map every layer-1 expert
        reads, ``inputs[l]`` (l > 0) the (E_l, N, ...) mixed inputs of layer l; ``outputs[l]`` the
        (E_l, N, ch, h, w) outputs of layer l."""
        if self.use_stem:
            x = self.stem(x)
        inputs, outs = [], []
        for l, (layer, a) in enumerate(zip(self.layers, weights)):
            inputs.append(x)
            outs.append(layer(x))
            if l < len(self.layers) - 1:
                x = mix(a, outs[-1])
        return inputs, outs

    def leaf_features(self, last: Tensor) -> Tensor:
        """Per-expert leaf features (E, N, F) of the last layer's outputs (E, N, ch, h, w), linear in them.

        Pooling to ``pool x pool`` is linear, so it is applied where it is cheapest: an upsampling
        pool (CIFAR: 4x4 -> 7x7) is folded into the first head Linear (see :meth:`leaf_head_weight`;
        the heads then see F = ch*h*w instead of ch*49 features); a downsampling one is done here,
        on the E parents before mixing, as a matmul (the CPU backward of adaptive pooling is slow)."""
        E, N, ch, h, w = last.shape
        if h * w < self.pool * self.pool:
            return last.reshape(E, N, -1)
        pool = _pool_matrix(h, w, self.pool, last.device)
        return torch.matmul(last.flatten(3), pool.to(last.dtype)).reshape(E, N, -1)

    def leaf_head_weight(self, h: int, w: int) -> Tensor | None:
        """The first head weight for an h x w last map: ``P W1`` (pool folded in, computed in fp32)
        when the pool upsamples, else None (the heads' own W1)."""
        if h * w >= self.pool * self.pool:
            return None
        pool = _pool_matrix(h, w, self.pool, self.heads.w1.device)
        with torch.autocast(pool.device.type, enabled=False):
            ch = self.heads.w1.shape[1] // (self.pool * self.pool)
            w1 = self.heads.w1.view(self.num_classes, ch, self.pool * self.pool, -1)
            return torch.matmul(pool.to(w1.dtype), w1).view(self.num_classes, ch * h * w, -1)

    def head_logits(self, z: Tensor, w1: Tensor | None = None) -> Tensor:
        """Leaf inputs z (C, N, F) -> class logits (N, C) (``ce``: the one output, ``nce``: max of two)."""
        leaf = self.heads(z, w1)
        return (leaf[..., 0] if self.head_type == "ce" else leaf.amax(dim=-1)).t()

    def forward(self, x: Tensor, return_experts: bool = False):
        """x: (N, in_channels, H, W) -> logits (N, C).

        With ``return_experts=True`` returns ``(logits, experts)``; ``experts[l]`` is the
        output of expert layer l as an (N, E_l, ch, h, w) view (part of the graph, so
        autograd through it and through the stacked expert parameters works).
        """
        weights = self.routing_weights()
        _, outs = self.expert_pass(x, weights)
        last = outs[-1]
        z = mix(weights[-1], self.leaf_features(last)).view(self.num_classes, last.shape[1], -1)
        logits = self.head_logits(z, self.leaf_head_weight(*last.shape[-2:]))
        if return_experts:
            return logits, [o.transpose(0, 1) for o in outs]
        return logits


# ---------------------------------------------------------------- official checkpoints
def _official_pairs(model: KDExplainer) -> Iterator[tuple[str, Tensor]]:
    """(official key, view into the kdx parameter/buffer) in the official state-dict order."""
    for i in (0, 1):  # stem conv, stem BN
        for k, v in model.stem[i].state_dict(keep_vars=True).items():
            yield f"conv1_0.{i}.{k}", v
    for l, layer in enumerate(model.layers):
        for e in range(layer.experts):
            for idx, name in ((0, "conv1"), (1, "bn1"), (3, "conv2"), (4, "bn2")):
                keys = ("weight", "bias") if name.startswith("conv") else \
                    ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                for k in keys:
                    yield f"conv{l + 2}_{e}.{idx}.{k}", getattr(layer, f"{name}_{k}")[e]
        yield f"branch_{l + 2}.0", model.branches[l]
    h = model.heads
    for c in range(model.num_classes):
        yield from ((f"fc1_{c}.0.weight", h.w1[c].t()), (f"fc1_{c}.0.bias", h.b1[c]),
                    (f"fc2_{c}.0.weight", h.w2[c].t()), (f"fc2_{c}.0.bias", h.b2[c]),
                    (f"fc2_{c}.3.weight", h.w3[c].t()), (f"fc2_{c}.3.bias", h.b3[c]))


def to_official_state_dict(model: KDExplainer) -> dict[str, Tensor]:
    """The model's weights under the official names and shapes (stem, BN stats and counters included)."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in _official_pairs(model)}


def _get(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise KdxError(f"official KDExplainer state dict: missing key '{key}'")
    return sd[key]


def from_official_state_dict(sd: Mapping[str, Tensor], head: str | None = None,
                             image_size: int | None = None) -> KDExplainer:
    """Build a :class:`KDExplainer` from an official state dict (classes, experts, widths, head,
    stem use inferred from the keys and shapes). ``head`` / ``image_size`` may be given to check
    or override the inference (``image_size`` only decides whether the stem is applied)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    stem_w = _get(sd, "conv1_0.0.weight")
    experts, widths = [], []
    while f"conv{len(experts) + 2}_0.0.weight" in sd:
        L = len(experts) + 2
        experts.append(sum(1 for k in sd if k.startswith(f"conv{L}_") and k.endswith(".0.weight")))
        widths.append((int(sd[f"conv{L}_0.0.weight"].shape[0]), int(_get(sd, f"conv{L}_0.3.weight").shape[0])))
    if not experts:
        raise KdxError("official KDExplainer state dict: missing key 'conv2_0.0.weight'")
    classes = sum(1 for k in sd if k.startswith("fc1_") and k.endswith(".0.weight"))
    if classes == 0:
        raise KdxError("official KDExplainer state dict: missing key 'fc1_0.0.weight'")
    k = int(_get(sd, "fc2_0.3.weight").shape[0])
    inferred = {1: "ce", 2: "nce"}.get(k)
    if inferred is None:
        raise KdxError(f"official KDExplainer state dict: 'fc2_0.3.weight' has {k} outputs; expected 1 (ce) or 2 (nce)")
    if head is not None and head != inferred:
        raise KdxError(f"head '{head}' requested but the state dict holds '{inferred}' heads")
    w1 = _get(sd, "fc1_0.0.weight")
    pool = math.isqrt(int(w1.shape[1]) // widths[-1][1])
    if image_size is None:
        l1_in = int(sd["conv2_0.0.weight"].shape[1])
        image_size = 64 if l1_in == stem_w.shape[0] and l1_in != stem_w.shape[1] else 32
    model = KDExplainer(classes, in_channels=int(stem_w.shape[1]), image_size=image_size, experts=experts,
                        widths=widths, head=inferred, hidden=int(w1.shape[0]), pool=pool)
    pairs = list(_official_pairs(model))
    for key, dst in pairs:
        src = _get(sd, key)
        if tuple(src.shape) != tuple(dst.shape):
            raise KdxError(f"official KDExplainer state dict: '{key}' has shape {tuple(src.shape)}, "
                           f"expected {tuple(dst.shape)}")
    expected = {key for key, _ in pairs}
    extra = [key for key in sd if key not in expected]
    if extra:
        raise KdxError(f"official KDExplainer state dict: unexpected key '{extra[0]}'")
    with torch.no_grad():
        for key, dst in pairs:
            dst.copy_(sd[key])
    return model


__all__ = ["KDExplainer", "ExpertLayer", "LeafHeads", "expert_block", "mix", "from_official_state_dict",
           "to_official_state_dict"]
