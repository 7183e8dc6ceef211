"""Batched, on-device augmentation and normalisation of uint8 image batches.

Random crop with zero padding ``p`` (= shift each image by (dy, dx) in [-p, p]) and horizontal
flip are fused into ONE vectorised gather from the zero-padded batch:
output[n, c, i, j] = pad(x)[n, c, p + i + dy, p + j' + dx] with j' = W-1-j for flipped images,
i.e. exactly ``flip(crop(pad(x, p)))`` with crop offsets (p + dy, p + dx).
"""

from __future__ import annotations


import torch

from kdx.seeding import derive_seed  # noqa: F401  (the loaders' streams)
import torch.nn.functional as F

AUG_KEYS = {"crop_padding", "hflip"}


def sample_params(n: int, augment: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU random draws for a batch of ``n``: shifts dy, dx (int64 N) and flip mask (bool N)."""
    p = int(augment.get("crop_padding", 0) or 0)
    if p > 0:
        dy, dx = torch.randint(-p, p + 1, (2, n), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.long)
    if augment.get("hflip"):
        flip = torch.rand(n, generator=generator) < 0.5
    else:
        flip = torch.zeros(n, dtype=torch.bool)
    return dy, dx, flip


def apply_shift_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Shift each image of ``x`` (N,C,H,W) by (dy, dx) with zero fill, then flip where ``flip``.

    ``dy``, ``dx``, ``flip`` are CPU tensors of length N (moved to ``x.device`` here).
    """
    n, c, h, w = x.shape
    p = int(max(dy.abs().max(), dx.abs().max())) if n else 0
    dev = x.device
    dy, dx, flip = dy.to(dev, non_blocking=True), dx.to(dev, non_blocking=True), flip.to(dev, non_blocking=True)
    xp = F.pad(x, (p, p, p, p)) if p else x  # zero padding: out-of-image sources read zeros
    hp, wp = h + 2 * p, w + 2 * p
    rows = (torch.arange(h, device=dev)[None, :] + (dy + p)[:, None]) * wp  # (N,H) source row offsets
    cols = torch.arange(w, device=dev)[None, :].expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + (dx + p)[:, None]  # (N,W) source cols
    index = (rows[:, :, None] + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(xp.reshape(n, c, hp * wp), 2, index).reshape(n, c, h, w)


def augment_batch(x: torch.Tensor, augment: dict | None, generator: torch.Generator) -> torch.Tensor:
    """Apply random crop/flip (per ``augment``) to a uint8 batch; no-op for an empty dict/None."""
    if not augment or not (augment.get("crop_padding") or augment.get("hflip")):
        return x
    return apply_shift_flip(x, *sample_params(len(x), augment, generator))


class Normalizer:
    """uint8 -> float32 ``(x/255 - mean) / std`` on a fixed device, as one fused multiply-add."""

    def __init__(self, mean, std, device):
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std)).to(device)
        self.bias = (-mean / std).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale).add_(self.bias)
