"""``folder:PATH``: any image folder laid out as ``PATH/train/<class>/*`` (train and
validation) and ``PATH/val/<class>/*`` (test), decoded on the fly as RGB."""

from __future__ import annotations

from pathlib import Path

import torch

from kdx.data.registry import DatasetSpec, register_dataset
from kdx.data.sets.tiny_imagenet import IMAGENET_MEAN, IMAGENET_STD
from kdx.data.splits import IMAGE_EXTENSIONS, FolderSplit, images_in
from kdx.errors import KdxError


def _class_dirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def load_folder(root, download, image_size, path):
    """Resized to ``image_size`` (default: the first training image's side if it is square, else 32)."""
    path = Path(path)
    train_dir, val_dir = path / "train", path / "val"
    classes = _class_dirs(train_dir)
    if not classes or not _class_dirs(val_dir):
        raise KdxError(f"folder dataset: expected image folders {path}/train/<class>/* and {path}/val/<class>/*")
    extra = sorted(set(_class_dirs(val_dir)) - set(classes))
    if extra:
        raise KdxError(f"folder dataset: classes {extra} in {val_dir} have no folder in {train_dir}")

    def collect(base):
        files, labels = [], []
        for i, c in enumerate(classes):
            if (base / c).is_dir():
                imgs = images_in(base / c)
                files += imgs
                labels += [i] * len(imgs)
        if not files:
            raise KdxError(f"folder dataset: no images ({'/'.join(IMAGE_EXTENSIONS)}) under {base}/<class>/")
        return files, torch.tensor(labels)

    (tr_files, tr_labels), (te_files, te_labels) = collect(train_dir), collect(val_dir)
    if image_size is None:
        from PIL import Image

        try:
            with Image.open(tr_files[0]) as img:
                w, h = img.size
        except OSError as e:
            raise KdxError(f"cannot read image {tr_files[0]}: {e}") from None
        image_size = w if w == h else 32
    return FolderSplit(tr_files, tr_labels, image_size), FolderSplit(te_files, te_labels, image_size), classes


register_dataset(DatasetSpec(
    "folder", load_folder, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=None,
    description="your images: PATH/train/<class>/* and PATH/val/<class>/* (test), RGB, ImageNet statistics",
    takes_path=True))
