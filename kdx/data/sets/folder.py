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


MIN_SIDE = 8  # smaller than this cannot be a training image of a zoo model (and would shrink every image to it)


def _common_side(files) -> int:
    """The side images are read at: the most common side among the first training images when they
    are square (else 32); refused below ``MIN_SIDE`` rather than resizing a whole folder to 1 px."""
    from collections import Counter

    from PIL import Image

    sides = []
    for f in files:
        try:
            with Image.open(f) as img:
                w, h = img.size
        except OSError as e:
            raise KdxError(f"cannot read image {f}: {e}") from None
        sides.append(w if w == h else 32)
    side = Counter(sides).most_common(1)[0][0]
    if side < MIN_SIDE:
        raise KdxError(f"folder dataset: its first training images are {side}x{side} px (e.g. {files[0]}); images "
                       f"must be at least {MIN_SIDE} px, since every image is read at that side")
    return side


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
        image_size = _common_side(tr_files[:16])
    return FolderSplit(tr_files, tr_labels, image_size), FolderSplit(te_files, te_labels, image_size), classes


register_dataset(DatasetSpec(
    "folder", load_folder, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=None,
    description="your images: PATH/train/<class>/* and PATH/val/<class>/* (test), RGB, ImageNet statistics",
    takes_path=True))
