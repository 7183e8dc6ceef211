"""Devices, precision (autocast) and determinism."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kdx.errors import KdxError
from kdx.seeding import seed_everything  # noqa: F401  (the engine seeds each run once)


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto|cpu|cuda|cuda:N|mps`` -> a torch.device; clear error when the device is absent."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KdxError(f"--device {name} was asked for, but CUDA is not available on this machine "
                           f"(use --device cpu or auto)")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise KdxError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise KdxError("--device mps was asked for, but MPS is not available on this machine")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise KdxError(f"unknown device '{name}'; valid devices: auto, cpu, cuda, cuda:N, mps")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    device: torch.device

    @property
    def dtype(self):
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self):
        enabled = self.name == "fp16"
        return torch.amp.GradScaler(self.device.type, enabled=enabled)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto`` is bf16 where the hardware has it (CPU with AVX512-BF16/AMX, Ampere+ GPUs), else fp32."""
    if name == "auto":
        name = "bf16" if bf16_supported(device) else "fp32"
    if name == "bf16" and not bf16_supported(device) and device.type != "cpu":
        raise KdxError(f"--precision bf16 is not supported on {device}")
    if name not in ("fp32", "bf16", "fp16"):
        raise KdxError(f"unknown precision '{name}'; valid: auto, fp32, bf16, fp16")
    return Precision(name, device)


def resolve_channels_last(setting: str, device: torch.device, precision: Precision) -> bool:
    """``auto``: channels_last on CUDA and on CPU (fp32 and bf16), off elsewhere (MPS).

    On CPU oneDNN's NHWC convolutions beat NCHW in fp32 too, not only in bf16: with the fused
    optimizer, 1.1-1.8x a whole fp32 training step (explainer, students, resnet56; AVX-512 and
    AVX2 kernels alike; docs/benchmarks.md, "Roofline after issue 22").
    """
    if setting in ("on", "true", True):
        return True
    if setting in ("off", "false", False):
        return False
    return device.type in ("cuda", "cpu")


def fused_optimizer_kwargs(groups) -> dict:
    """``{"fused": True}`` where torch's fused SGD/Adam/AdamW kernels apply, else ``{}``.

    The fused kernels update every parameter of a group in one call instead of a handful of
    element-wise ops per tensor: the same update (within 1e-5 relative, tests/test_fast_paths.py);
    it pays most where there are many parameters per FLOP (the explainer's C = 100 leaf heads:
    1.46x a bf16 step; near 1.0x for the zoo models). They need every parameter floating-point and on one
    CPU or CUDA device; anything else (MPS, mixed devices, meta tensors) keeps the default loop.
    """
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if not params:
        return {}
    devices = {p.device for p in params}
    if len(devices) != 1 or next(iter(devices)).type not in ("cpu", "cuda"):
        return {}
    if not all(torch.is_floating_point(p) for p in params):
        return {}
    return {"fused": True}
