"""Tiny ImageNet (``tiny-imagenet-200.zip`` unzipped by the user; kdx cannot download it):
200 classes of 64 px, decoded on the fly by DataLoader workers (1.2 GB in memory otherwise),
the official val split as test."""

from __future__ import annotations

from pathlib import Path

import torch

from kdx.data.registry import DatasetSpec, register_dataset
from kdx.data.splits import FolderSplit, images_in
from kdx.errors import KdxError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_tiny_imagenet(root: Path, download, image_size, path):
    base = next((d for d in (root, root / "tiny-imagenet-200", root / "tiny-imagenet") if (d / "wnids.txt").is_file()),
                None)
    if base is None:
        raise KdxError(f"tiny-imagenet: expected {root / 'tiny-imagenet-200'}/wnids.txt with train/<wnid>/images/, "
                       "val/images/ and val/val_annotations.txt (unzip tiny-imagenet-200.zip there; kdx "
                       "cannot download it)")
    wnids = sorted(w for w in (base / "wnids.txt").read_text().split() if w)
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (base / "words.txt").is_file():
        for line in (base / "words.txt").read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    size = image_size or 64
    tr_files, tr_labels = [], []
    for w in wnids:
        d = base / "train" / w / "images"
        if not d.is_dir():
            raise KdxError(f"tiny-imagenet: missing training folder {d}")
        imgs = images_in(d)
        tr_files += imgs
        tr_labels += [index[w]] * len(imgs)
    ann = base / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise KdxError(f"tiny-imagenet: missing {ann} (labels of the official val split, used as test)")
    te_files, te_labels = [], []
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            if parts[1] not in index:
                raise KdxError(f"tiny-imagenet: {ann} names class {parts[1]!r}, which is not in wnids.txt")
            te_files.append(str(base / "val" / "images" / parts[0]))
            te_labels.append(index[parts[1]])
    return (FolderSplit(tr_files, torch.tensor(tr_labels), size), FolderSplit(te_files, torch.tensor(te_labels), size),
            names)


register_dataset(DatasetSpec(
    "tiny-imagenet", load_tiny_imagenet, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    augment={"crop_padding": 8, "hflip": True},
    description="Tiny ImageNet: 100,000 + 10,000 colour images of 64 px, 200 classes (unzip it into the data root)",
    num_classes=200, input_shape=(3, 64, 64)))
