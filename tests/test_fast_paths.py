"""The fp32 fast paths of issue 22 change speed, not results: channels_last on CPU and the fused
optimizers give the outputs, gradients and parameter updates of the plain NCHW / per-tensor
reference within 1e-5 relative (explainer and a zoo model).

Adam is checked on equal gradients rather than end to end: its update m / sqrt(v) is not
Lipschitz in the gradient where the gradient is near zero (a BN bias after a few steps), so
gradients that differ by rounding (1e-7) can move such an element by more than 1e-5 of its
small value, whatever the two code paths are."""

from __future__ import annotations

import copy

import pytest
import torch

from kdx.engine.device import Precision, fused_optimizer_kwargs, resolve_channels_last
from kdx.engine.trainer import to_channels_last
from kdx.models import create_model
from kdx.models.routed.explainer import KDExplainer

RTOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|, the scale floored at 1e-6: a conv bias in front of a BN has a zero
    gradient in exact arithmetic, so after a few steps it holds only rounding noise (about 1e-12)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def models():  # built fresh for every test (the training steps change them)
    torch.manual_seed(0)
    yield "explainer", KDExplainer(10, in_channels=3, image_size=16, widths=[(8, 8), (8, 8), (8, 8)], hidden=16,
                                   routing="soft", tau=4.0)
    torch.manual_seed(0)
    yield "resnet8", create_model("resnet8", num_classes=10, in_channels=3)


def test_channels_last_auto_is_on_for_cpu_fp32_and_cuda_not_mps():
    cpu = torch.device("cpu")
    assert resolve_channels_last("auto", cpu, Precision("fp32", cpu)) is True
    assert resolve_channels_last("auto", cpu, Precision("bf16", cpu)) is True
    assert resolve_channels_last("off", cpu, Precision("fp32", cpu)) is False
    assert resolve_channels_last("auto", torch.device("mps"), Precision("fp32", cpu)) is False


def test_fused_only_for_floating_parameters_on_one_cpu_or_cuda_device():
    w = torch.nn.Parameter(torch.zeros(3))
    assert fused_optimizer_kwargs([{"params": [w]}]) == {"fused": True}
    assert fused_optimizer_kwargs([w]) == {"fused": True}
    assert fused_optimizer_kwargs([]) == {}
    assert fused_optimizer_kwargs([{"params": [w]}, {"params": [torch.zeros(2, device="meta")]}]) == {}
    assert fused_optimizer_kwargs([{"params": [torch.zeros(2, dtype=torch.int64)]}]) == {}


def step(model, x, y, seed):
    torch.manual_seed(seed)  # the same routing noise (if any) for every copy
    logits = model(x)
    logits = logits[0] if isinstance(logits, tuple) else logits
    torch.nn.functional.cross_entropy(logits, y).backward()
    return logits.detach()


def batch():
    torch.manual_seed(1)
    return torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))


@pytest.mark.parametrize("name", ["explainer", "resnet8"])
def test_channels_last_gives_the_nchw_outputs_and_gradients(name):
    ref = dict(models())[name].train()
    fast = to_channels_last(copy.deepcopy(ref))
    x, y = batch()
    a, b = step(ref, x, y, 0), step(fast, x.contiguous(memory_format=torch.channels_last), y, 0)
    assert rel(b, a) < RTOL
    pairs = [(k, pa.grad, pb.grad) for (k, pa), pb in zip(ref.named_parameters(), fast.parameters())]
    assert all((ga is None) == (gb is None) for _, ga, gb in pairs)
    pairs = [(k, ga, gb) for k, ga, gb in pairs if ga is not None]
    top = max(float(ga.abs().max()) for _, ga, _ in pairs)
    checked = 0
    for k, ga, gb in pairs:
        if float(ga.abs().max()) < 1e-6 * top:  # zero in exact arithmetic (a bias before a BN): noise in both
            assert float(gb.abs().max()) < 1e-6 * top, k
        else:
            assert rel(gb, ga) < RTOL, k
            checked += 1
    assert checked > len(pairs) // 2


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_fused_optimizer_gives_the_per_tensor_update(opt):
    """Same parameters, same gradients: the fused kernel's three updates equal the default loop's."""
    ref = dict(models())["explainer"]
    fast = copy.deepcopy(ref)

    def optimizer(m, **kw):
        if opt == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, **kw)
        cls = torch.optim.Adam if opt == "adam" else torch.optim.AdamW
        return cls(m.parameters(), lr=1e-3, weight_decay=5e-4, **kw)

    o_ref, o_fast = optimizer(ref), optimizer(fast, **fused_optimizer_kwargs(list(fast.parameters())))
    assert o_fast.defaults.get("fused") is True and not o_ref.defaults.get("fused")
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        for pa, pb in zip(ref.parameters(), fast.parameters()):
            pa.grad = torch.randn(pa.shape, generator=gen)
            pb.grad = pa.grad.clone()
        o_ref.step()
        o_fast.step()
    start = dict(models())["explainer"].state_dict()
    moved = 0
    for (k, pa), pb in zip(ref.named_parameters(), fast.parameters()):
        assert rel(pb, pa) < RTOL, k
        moved += int(not torch.equal(pa, start[k]))
    assert moved > 0  # the steps changed the parameters


@pytest.mark.parametrize("name", ["explainer", "resnet8"])
def test_sgd_steps_with_both_equal_the_reference(name):
    """The trainer's default fp32 CPU path (channels_last + fused SGD) against NCHW + per-tensor SGD:
    the logits of two steps and the parameters after them. (Over more steps the two drift apart as
    any two roundings do: a BN over a small batch amplifies a 1e-7 difference by about 10 a step.)"""
    ref = dict(models())[name].train()
    fast = to_channels_last(copy.deepcopy(ref))
    x, y = batch()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    o_ref = torch.optim.SGD(ref.parameters(), **kw)
    o_fast = torch.optim.SGD(fast.parameters(), **kw, **fused_optimizer_kwargs(list(fast.parameters())))
    for s in range(2):
        o_ref.zero_grad(), o_fast.zero_grad()
        a, b = step(ref, x, y, s), step(fast, x.contiguous(memory_format=torch.channels_last), y, s)
        o_ref.step(), o_fast.step()
        assert rel(b, a) < RTOL
    for (k, a), b in zip(ref.state_dict().items(), fast.state_dict().values()):
        if a.is_floating_point():
            assert rel(b, a) < RTOL, k


def test_resumed_state_takes_the_parameters_strides():
    """A momentum buffer read back from disk is NCHW; with a channels_last parameter torch's fused SGD
    would step wrongly on it (test_engine's resume test caught that). match_state_layout restrides it."""
    from kdx.engine.checkpoint import match_state_layout

    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    buf, g = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    after = []
    for fused in (False, True):
        p = torch.nn.Parameter(w.clone().contiguous(memory_format=torch.channels_last))
        o = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=fused)
        sd = o.state_dict()
        sd["state"] = {0: {"momentum_buffer": buf.clone()}}
        o.load_state_dict(sd)
        match_state_layout(o)
        assert o.state[p]["momentum_buffer"].stride() == p.stride()
        p.grad = g.clone()
        o.step()
        after.append(p.detach())
    assert rel(after[1], after[0]) < RTOL
