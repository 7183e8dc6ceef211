"""Fashion-MNIST (Xiao et al., 2017) and MNIST (LeCun et al., 1998) from their four IDX files
(``.gz`` or not), held in memory as uint8 tensors; ``--download`` fetches them with torchvision."""

from __future__ import annotations

from pathlib import Path

from kdx.data.idx import read_idx_pair
from kdx.data.registry import DatasetSpec, download_error, register_dataset
from kdx.data.splits import TensorSplit
from kdx.errors import KdxError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))


def find_idx_dir(dirs: list[Path]) -> Path | None:
    """The first folder of ``dirs`` holding all four IDX files."""
    for d in dirs:
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in IDX_FILES):
            return d
    return None


def load_idx_dir(d: Path) -> tuple[TensorSplit, TensorSplit]:
    paths = [d / f if (d / f).is_file() else d / f"{f}.gz" for f in IDX_FILES]
    return TensorSplit(*read_idx_pair(paths[0], paths[1])), TensorSplit(*read_idx_pair(paths[2], paths[3]))


def load_mnist_like(name: str, tv_name: str, root: Path, download: bool) -> tuple[TensorSplit, TensorSplit]:
    """The IDX files in ``root``, ``root/<name>`` or torchvision's ``<TvName>/raw`` below either."""
    dirs = [root, root / name, root / tv_name / "raw", root / name / tv_name / "raw"]
    d = find_idx_dir(dirs)
    if d is None and download:
        import torchvision

        try:
            getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
        except Exception as e:  # network or checksum failure
            raise download_error(name, e) from None
        d = find_idx_dir(dirs)
    if d is None:
        missing = [f for f in IDX_FILES if not any((x / f).is_file() or (x / f"{f}.gz").is_file() for x in dirs)]
        raise KdxError(f"{name}: expected {missing[0]}[.gz] (and {', '.join(IDX_FILES[1:])}) in {root} or "
                       f"{root / tv_name / 'raw'}; pass --download to fetch them")
    return load_idx_dir(d)


def _loader(name: str, tv_name: str, classes: tuple):
    def load(root, download, image_size, path):
        return (*load_mnist_like(name, tv_name, root, download), list(classes))
    return load


register_dataset(DatasetSpec(
    "fashion-mnist", _loader("fashion-mnist", "FashionMNIST", FASHION_CLASSES),
    mean=(0.2860,), std=(0.3530,), augment={"crop_padding": 2, "hflip": True},
    description="Fashion-MNIST: 60,000 + 10,000 grey images of 28 px, 10 classes",
    num_classes=10, input_shape=(1, 28, 28), class_names=FASHION_CLASSES))

register_dataset(DatasetSpec(
    "mnist", _loader("mnist", "MNIST", DIGITS),
    mean=(0.1307,), std=(0.3081,), augment={"crop_padding": 2, "hflip": False},
    description="MNIST: 60,000 + 10,000 grey digits of 28 px, 10 classes (no flips)",
    num_classes=10, input_shape=(1, 28, 28), class_names=DIGITS))
