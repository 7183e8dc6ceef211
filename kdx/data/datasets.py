"""``load_dataset(name, ...)`` -> :class:`DatasetBundle`, for every registered dataset alike.

The datasets themselves are one file each in :mod:`kdx.data.sets`, registered in
:mod:`kdx.data.registry`. Data root: ``root`` if given, else ``$KDX_DATA``, else
``~/.cache/kdx/data``; each dataset's file says where below the root it looks.
``fashion-mnist-mini`` (the default) ships inside the package and ignores the root.

Storage: cifar*, (fashion-)mnist and the mini set are held in memory as uint8 tensors
(fast on-device loader). ``tiny-imagenet`` and ``folder:PATH`` are file lists decoded on the
fly by DataLoader workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdx.data.registry import find_dataset, list_datasets  # noqa: F401  (re-exported)
from kdx.data.sets.mini import EMBEDDED_DIR  # noqa: F401  (re-exported)
from kdx.data.sets.mnist import FASHION_CLASSES as _FASHION
from kdx.data.splits import FolderSplit, TensorSplit, stratified_split
from kdx.errors import KdxError

DEFAULT_DATASET = "fashion-mnist-mini"
FASHION_CLASSES = list(_FASHION)


@dataclass
class DatasetBundle:
    name: str
    class_names: list[str]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: TensorSplit | FolderSplit
    val: TensorSplit | FolderSplit | None
    test: TensorSplit | FolderSplit
    augment: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def meta(self) -> dict:
        return {"dataset": self.name, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "input_shape": [self.in_channels, self.image_size, self.image_size],
                "mean": list(self.mean), "std": list(self.std)}


def default_root() -> Path:
    return Path(os.environ.get("KDX_DATA") or Path.home() / ".cache" / "kdx" / "data").expanduser()


def check_split(name: str, part: str, split, num_classes: int) -> None:
    """Refuse a split kdx cannot train or evaluate on: no samples, a label outside
    ``[0, num_classes)``, or images with a zero or non-square side."""
    if len(split) == 0:
        raise KdxError(f"{name}: the {part} split has no images")
    labels = split.labels
    bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if len(bad):
        i = int(bad[0])
        raise KdxError(f"{name}: {part} label {int(labels[i])} at index {i} is outside 0..{num_classes - 1} "
                       f"({len(bad)} such label{'s' if len(bad) > 1 else ''})")
    if isinstance(split, TensorSplit):
        h, w = split.images.shape[-2:]
        if h == 0 or w == 0 or h != w:
            raise KdxError(f"{name}: {part} images are {h}x{w}; kdx needs square images of side >= 1")


def load_dataset(name: str = DEFAULT_DATASET, root=None, download: bool = False, val_fraction: float = 0.1,
                 seed: int = 0, image_size: int | None = None) -> DatasetBundle:
    """Load a dataset; validation = seeded stratified ``val_fraction`` of the official train split
    (``val_fraction=0`` -> ``val`` is None), test = the official test split.

    ``image_size`` only applies to file-backed datasets (folder:, tiny-imagenet)."""
    if not 0 <= val_fraction < 1:
        raise KdxError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root).expanduser() if root else default_root()
    spec, path = find_dataset(name)
    train, test, classes = spec.load(root, download, image_size, path)
    size = train.image_size if isinstance(train, FolderSplit) else train.images.shape[-1]
    augment = spec.augment if spec.augment is not None else {"crop_padding": max(1, size // 8), "hflip": True}
    for s in (train, test):
        s.default_augment, s.mean, s.std = augment, spec.mean, spec.std
    check_split(name, "train", train, len(classes))
    check_split(name, "test", test, len(classes))
    val = None
    if val_fraction > 0:
        keep, held = stratified_split(train.labels, val_fraction, seed)
        train, val = train.subset(keep), train.subset(held)
        for part, s in (("train", train), ("validation", val)):
            if len(s) == 0:
                raise KdxError(f"{name}: val_fraction {val_fraction} of {len(keep) + len(held)} training images "
                               f"leaves the {part} split empty; change --val-fraction")
    channels = 3 if isinstance(train, FolderSplit) else train.images.shape[1]
    return DatasetBundle(name=name, class_names=list(classes), in_channels=channels, image_size=int(size),
                         mean=tuple(spec.mean), std=tuple(spec.std), train=train, val=val, test=test,
                         augment=dict(augment))


def get_dataset_info(name: str) -> dict:
    """What a checkpoint's metadata records about a dataset, without reading its files
    (datasets whose files alone know their classes, such as ``folder:PATH``, are refused)."""
    spec, _ = find_dataset(name)
    if spec.num_classes is None or spec.input_shape is None:
        raise KdxError(f"dataset '{name}': its classes and image size are known only from its files; "
                       "name a dataset with fixed classes")
    info = {"dataset": name, "num_classes": spec.num_classes, "input_shape": list(spec.input_shape),
            "mean": list(spec.mean), "std": list(spec.std)}
    if spec.class_names:
        info["class_names"] = list(spec.class_names)
    return info
