"""``fashion-mnist-mini``: the embedded CPU set, a stratified part of Fashion-MNIST shipped
inside the package as IDX files (``kdx/data/embedded``); it ignores the data root."""

from __future__ import annotations

from pathlib import Path

from kdx.data.registry import DatasetSpec, register_dataset
from kdx.data.sets.mnist import FASHION_CLASSES, load_idx_dir

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "embedded"


def load_mini(root, download, image_size, path):
    return (*load_idx_dir(EMBEDDED_DIR), list(FASHION_CLASSES))


register_dataset(DatasetSpec(
    "fashion-mnist-mini", load_mini, mean=(0.2860,), std=(0.3530,), augment={"crop_padding": 2, "hflip": True},
    description="embedded Fashion-MNIST subset for CPU runs (no files needed; the quick preset's defaults)",
    num_classes=10, input_shape=(1, 28, 28), class_names=FASHION_CLASSES, family="fashion-mnist"))
