"""Dataset registry: ``load_dataset(name, ...)`` -> :class:`DatasetBundle`.

Data root: ``root`` if given, else ``$KDX_DATA``, else ``~/.cache/kdx/data``. Each dataset is
looked up in the root itself, in ``root/<name>`` and in torchvision's layout (see the loaders).
``fashion-mnist-mini`` (the default) ships inside the package and ignores the root.

Storage: cifar*, (fashion-)mnist and the mini set are held in memory as uint8 tensors
(fast on-device loader). ``tiny-imagenet`` and ``folder:PATH`` are file lists decoded on the
fly by DataLoader workers (tiny-imagenet would be 1.2 GB in memory and ~1 min to decode).
They are normalised with the ImageNet statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdx.data.idx import read_idx_pair
from kdx.data.splits import IMAGE_EXTENSIONS, FolderSplit, TensorSplit, stratified_split
from kdx.errors import KdxError, did_you_mean

DEFAULT_DATASET = "fashion-mnist-mini"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def _fail_download(name: str, e: Exception) -> KdxError:
    msg = " ".join(str(e).split()) or type(e).__name__
    return KdxError(f"downloading {name} failed: {msg[:300]}")


# ---------------------------------------------------------------- (fashion-)mnist and the mini set
def _find_idx_dir(dirs: list[Path]) -> Path | None:
    for d in dirs:
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in IDX_FILES):
            return d
    return None


def _load_idx_dir(d: Path):
    paths = [d / f if (d / f).is_file() else d / f"{f}.gz" for f in IDX_FILES]
    return read_idx_pair(paths[0], paths[1]), read_idx_pair(paths[2], paths[3])


def _load_mnist_like(name: str, tv_name: str, root: Path, download: bool):
    dirs = [root, root / name, root / tv_name / "raw", root / name / tv_name / "raw"]
    d = _find_idx_dir(dirs)
    if d is None and download:
        import torchvision

        try:
            getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
        except Exception as e:  # network or checksum failure
            raise _fail_download(name, e) from None
        d = _find_idx_dir(dirs)
    if d is None:
        missing = [f for f in IDX_FILES if not any((x / f).is_file() or (x / f"{f}.gz").is_file() for x in dirs)]
        raise KdxError(f"{name}: expected {missing[0]}[.gz] (and {', '.join(IDX_FILES[1:])}) in {root} or "
                       f"{root / tv_name / 'raw'}; pass --download to fetch them")
    return _load_idx_dir(d)


# ---------------------------------------------------------------- cifar
def _load_cifar(name: str, root: Path, download: bool):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if root.name == cls.base_folder:  # root points at the folder itself
        root = root.parent
    try:
        train, test = cls(str(root), train=True, download=download), cls(str(root), train=False)
    except RuntimeError as e:
        if download:
            raise _fail_download(name, e) from None
        raise KdxError(f"{name}: expected torchvision's python-version folder {root / cls.base_folder} "
                       f"(missing or corrupt files); pass --download to fetch it") from None
    except Exception as e:  # includes download errors (URLError, ...)
        raise _fail_download(name, e) if download else KdxError(f"{name}: cannot read {root}: {e}") from None

    def split(ds):
        return TensorSplit(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return split(train), split(test), list(train.classes)


# ---------------------------------------------------------------- image folders
def _images_in(d: Path) -> list[str]:
    return sorted(str(p) for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _load_folder(path: Path, image_size: int | None):
    """``path/train/<class>/*`` (train+val) and ``path/val/<class>/*`` (test), RGB, resized to
    ``image_size`` (default: the first training image's side if it is square, else 32)."""
    train_dir, val_dir = path / "train", path / "val"
    classes = _class_dirs(train_dir)
    if not classes or not _class_dirs(val_dir):
        raise KdxError(f"folder dataset: expected image folders {path}/train/<class>/* and {path}/val/<class>/*")
    extra = sorted(set(_class_dirs(val_dir)) - set(classes))
    if extra:
        raise KdxError(f"folder dataset: classes {extra} in {val_dir} have no folder in {train_dir}")

    def collect(root):
        files, labels = [], []
        for i, c in enumerate(classes):
            if (root / c).is_dir():
                imgs = _images_in(root / c)
                files += imgs
                labels += [i] * len(imgs)
        if not files:
            raise KdxError(f"folder dataset: no images ({'/'.join(IMAGE_EXTENSIONS)}) under {root}/<class>/")
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


def _load_tiny_imagenet(root: Path, image_size: int | None):
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
        imgs = _images_in(d)
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


# ---------------------------------------------------------------- registry
_SPECS = {  # name -> (mean, std, augment)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), {"crop_padding": 4, "hflip": True}),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), {"crop_padding": 4, "hflip": True}),
    "fashion-mnist": ((0.2860,), (0.3530,), {"crop_padding": 2, "hflip": True}),
    "fashion-mnist-mini": ((0.2860,), (0.3530,), {"crop_padding": 2, "hflip": True}),
    "mnist": ((0.1307,), (0.3081,), {"crop_padding": 2, "hflip": False}),
    "tiny-imagenet": (IMAGENET_MEAN, IMAGENET_STD, {"crop_padding": 8, "hflip": True}),
    "folder:PATH": (IMAGENET_MEAN, IMAGENET_STD, None),  # crop padding image_size // 8, hflip
}


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


def list_datasets() -> list[str]:
    """Registered dataset names (``folder:PATH`` stands for any image folder)."""
    return list(_SPECS)


def load_dataset(name: str = DEFAULT_DATASET, root=None, download: bool = False, val_fraction: float = 0.1,
                 seed: int = 0, image_size: int | None = None) -> DatasetBundle:
    """Load a dataset; validation = seeded stratified ``val_fraction`` of the official train split
    (``val_fraction=0`` -> ``val`` is None), test = the official test split.

    ``image_size`` only applies to file-backed datasets (folder:, tiny-imagenet)."""
    if not 0 <= val_fraction < 1:
        raise KdxError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root).expanduser() if root else default_root()
    key = "folder:PATH" if name.startswith("folder:") else name
    if key not in _SPECS or name == "folder:PATH":
        raise did_you_mean("dataset", name, list_datasets())
    if key == "folder:PATH":
        if not name[len("folder:"):]:
            raise KdxError("folder dataset needs a path: folder:PATH")
        train, test, classes = _load_folder(Path(name[len("folder:"):]).expanduser(), image_size)
    elif name == "tiny-imagenet":
        train, test, classes = _load_tiny_imagenet(root, image_size)
    elif name in ("cifar10", "cifar100"):
        train, test, classes = _load_cifar(name, root, download)
    else:  # IDX-based
        if name == "fashion-mnist-mini":
            tr, te = _load_idx_dir(EMBEDDED_DIR)
        else:
            tr, te = _load_mnist_like(name, "FashionMNIST" if name == "fashion-mnist" else "MNIST", root, download)
        train, test = TensorSplit(*tr), TensorSplit(*te)
        classes = [str(i) for i in range(10)] if name == "mnist" else FASHION_CLASSES
    mean, std, augment = _SPECS[key]
    size = train.image_size if isinstance(train, FolderSplit) else train.images.shape[-1]
    if augment is None:
        augment = {"crop_padding": max(1, size // 8), "hflip": True}
    for s in (train, test):
        s.default_augment, s.mean, s.std = augment, mean, std
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
                         mean=tuple(mean), std=tuple(std), train=train, val=val, test=test, augment=dict(augment))


_STATIC_SHAPES = {"cifar10": (10, [3, 32, 32]), "cifar100": (100, [3, 32, 32]), "fashion-mnist": (10, [1, 28, 28]),
                  "fashion-mnist-mini": (10, [1, 28, 28]), "mnist": (10, [1, 28, 28]), "tiny-imagenet": (200, [3, 64, 64])}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def get_dataset_info(name: str) -> dict:
    """What a checkpoint's metadata records about a dataset, without reading its files."""
    if name not in _STATIC_SHAPES:
        raise did_you_mean("dataset", name, list(_STATIC_SHAPES))
    n, shape = _STATIC_SHAPES[name]
    mean, std, _ = _SPECS[name]
    info = {"dataset": name, "num_classes": n, "input_shape": shape, "mean": list(mean), "std": list(std)}
    names = {"cifar10": CIFAR10_CLASSES, "fashion-mnist": FASHION_CLASSES, "fashion-mnist-mini": FASHION_CLASSES,
             "mnist": [str(i) for i in range(10)]}.get(name)
    if names:
        info["class_names"] = list(names)
    return info
