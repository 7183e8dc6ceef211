"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009), torchvision's python-version folders, held in
memory as uint8 tensors; ``--download`` fetches them."""

from __future__ import annotations

from pathlib import Path

import torch

from kdx.data.registry import DatasetSpec, download_error, register_dataset
from kdx.data.splits import TensorSplit
from kdx.errors import KdxError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _split(ds) -> TensorSplit:
    return TensorSplit(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))


def load_cifar(name: str, root: Path, download: bool):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if root.name == cls.base_folder:  # root points at the folder itself
        root = root.parent
    try:
        train, test = cls(str(root), train=True, download=download), cls(str(root), train=False)
    except RuntimeError as e:
        if download:
            raise download_error(name, e) from None
        raise KdxError(f"{name}: expected torchvision's python-version folder {root / cls.base_folder} "
                       f"(missing or corrupt files); pass --download to fetch it") from None
    except Exception as e:  # includes download errors (URLError, ...)
        raise download_error(name, e) if download else KdxError(f"{name}: cannot read {root}: {e}") from None
    return _split(train), _split(test), list(train.classes)


register_dataset(DatasetSpec(
    "cifar10", lambda root, download, image_size, path: load_cifar("cifar10", root, download),
    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), augment={"crop_padding": 4, "hflip": True},
    description="CIFAR-10: 50,000 + 10,000 colour images of 32 px, 10 classes",
    num_classes=10, input_shape=(3, 32, 32), class_names=CIFAR10_CLASSES))

register_dataset(DatasetSpec(
    "cifar100", lambda root, download, image_size, path: load_cifar("cifar100", root, download),
    mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), augment={"crop_padding": 4, "hflip": True},
    description="CIFAR-100: 50,000 + 10,000 colour images of 32 px, 100 classes",
    num_classes=100, input_shape=(3, 32, 32)))
