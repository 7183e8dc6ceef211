"""Dataset splits: in-memory uint8 tensors, or lists of image files decoded on the fly."""

from __future__ import annotations

from pathlib import Path

import torch

from kdx.errors import KdxError
from kdx.seeding import generator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class TensorSplit:
    """A split held in memory: ``images`` uint8 N×C×H×W, ``labels`` int64 N."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 N×C×H×W tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be a 1-d tensor of {len(images)} entries, got {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()
        self.default_augment: dict = {}  # set by load_dataset (the bundle's augmentation defaults)
        self.mean = self.std = None  # ditto (normalisation constants)
        self._on_device: dict = {}

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "TensorSplit":
        out = TensorSplit(self.images.index_select(0, index), self.labels.index_select(0, index))
        out.default_augment, out.mean, out.std = self.default_augment, self.mean, self.std
        return out

    def to_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (images, labels) pair on ``device``, copied there once and cached."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (self.images.to(device), self.labels.to(device))
        return self._on_device[key]


class FolderSplit(torch.utils.data.Dataset):
    """A split of image files, each decoded with PIL to an RGB uint8 3×S×S tensor (S = ``image_size``)."""

    def __init__(self, files: list[str], labels: torch.Tensor, image_size: int):
        self.files, self.labels, self.image_size = list(files), labels.long(), int(image_size)
        self.default_augment: dict = {}
        self.mean = self.std = None

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, index: torch.Tensor) -> "FolderSplit":
        out = FolderSplit([self.files[i] for i in index.tolist()], self.labels[index], self.image_size)
        out.default_augment, out.mean, out.std = self.default_augment, self.mean, self.std
        return out

    def __getitem__(self, i: int):
        return decode_image(self.files[i], self.image_size), self.labels[i]


def decode_image(path: str, size: int | None) -> torch.Tensor:
    """Decode an image file to RGB uint8 3×size×size (bilinear resize; ``size=None`` keeps it)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise KdxError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified split into (keep, held_out) index tensors, each in ascending order.

    Each class of ``count`` samples contributes ``floor(fraction * count + 0.5)`` to ``held_out``,
    but at least 1 and at most ``count - 1`` when ``fraction > 0`` and ``count >= 2``.
    """
    if not 0.0 <= fraction < 1.0:
        raise KdxError(f"val_fraction must be in [0, 1), got {fraction}")
    g = generator(seed)
    held = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n_val = int(fraction * len(idx) + 0.5)
        if fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        held.append(idx[torch.randperm(len(idx), generator=g)[:n_val]])
    held_out = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def images_in(d) -> list[str]:
    """The image files directly in folder ``d`` (``IMAGE_EXTENSIONS``), sorted."""
    return sorted(str(p) for p in Path(d).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
