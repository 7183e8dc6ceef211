"""The dataset registry: one :class:`DatasetSpec` per dataset, registered by its own file in
:mod:`kdx.data.sets` (or by another package through the entry-point group ``kdx.datasets``).

A spec says how to read the official train and test splits (``load``) and what kdx needs to
know without reading them: normalisation, default augmentation, and for checkpoints the class
count, input shape and class names. :func:`kdx.data.load_dataset` does the rest for every
dataset alike (validation split, checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from kdx.errors import KdxError, did_you_mean
from kdx.plugins import load_entry_points

ENTRY_POINT_GROUP = "kdx.datasets"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset.

    ``load(root, download, image_size, path)`` -> ``(train, test, class_names)``: the official
    splits as :class:`~kdx.data.splits.TensorSplit` or :class:`~kdx.data.splits.FolderSplit`;
    ``root`` the data root, ``path`` the ``PATH`` of ``name:PATH`` (``takes_path`` datasets
    only, else None), ``image_size`` the side file-backed datasets resize to (None: theirs).
    ``augment``: ``{"crop_padding": int, "hflip": bool}``; None means padding side // 8 and
    flips. ``num_classes``, ``input_shape`` and ``class_names``: the facts a checkpoint's metadata
    records, known without reading files (None where only the files know, e.g. a folder).
    ``family``: datasets of one family share classes and image statistics, so a teacher of one
    serves a student of another (``fashion-mnist-mini`` is a part of ``fashion-mnist``); None:
    the dataset is its own family. ``fake(root)``: writes a tiny copy of the dataset's files
    under ``root`` (a few images per class) for the registry's contract tests; None for a
    dataset that needs no files (or whose fake the tests know).
    """

    name: str
    load: Callable
    mean: tuple
    std: tuple
    augment: Optional[dict]
    description: str = ""
    num_classes: Optional[int] = None
    input_shape: Optional[tuple] = None
    class_names: Optional[tuple] = None
    takes_path: bool = False
    family: Optional[str] = None
    fake: Optional[Callable] = None

    @property
    def label(self) -> str:
        """The name as users type it (``folder:PATH`` for a dataset that takes a path)."""
        return f"{self.name}:PATH" if self.takes_path else self.name


_DATASETS: dict[str, DatasetSpec] = {}
_loaded = False


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` under ``spec.name`` (unique; no ``:`` in the name)."""
    if not spec.name or ":" in spec.name:
        raise ValueError(f"dataset name {spec.name!r} must be non-empty and without ':'")
    old = _DATASETS.get(spec.name)
    if old is not None and old.load is not spec.load:
        raise ValueError(f"two datasets are named {spec.name!r}")
    _DATASETS[spec.name] = spec
    return spec


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # the built-in dataset files are wired by kdx/data/__init__.py (imported before this module)

    load_entry_points(ENTRY_POINT_GROUP, "dataset", "a kdx DatasetSpec",
                      lambda obj: isinstance(obj, DatasetSpec), register_dataset)


def same_family(a: str, b: str) -> bool:
    """Whether datasets ``a`` and ``b`` (names as typed) are one family (see :class:`DatasetSpec`)."""
    def family(name: str) -> str:
        spec = all_datasets().get(str(name).partition(":")[0])
        return (spec.family or spec.name) if spec is not None else str(name)

    return family(a) == family(b)


def all_datasets() -> dict[str, DatasetSpec]:
    _load_all()
    return dict(_DATASETS)


def list_datasets() -> list[str]:
    """Registered dataset names as users type them (``folder:PATH`` stands for any image folder)."""
    return [s.label for s in all_datasets().values()]


def find_dataset(name: str) -> tuple[DatasetSpec, Optional[str]]:
    """``(spec, path)`` for a ``--dataset`` value; an unknown name fails with the known ones."""
    specs = all_datasets()
    base, sep, path = name.partition(":")
    spec = specs.get(base)
    if spec is None or spec.takes_path != bool(sep) or (sep and path == "PATH"):
        raise did_you_mean("dataset", name, list_datasets())
    if spec.takes_path and not path:
        raise KdxError(f"{base} dataset needs a path: {base}:PATH")
    return spec, (str(Path(path).expanduser()) if spec.takes_path else None)


def download_error(name: str, e: Exception) -> KdxError:
    """One line for a failed download (network, checksum): the first 300 characters of the cause."""
    msg = " ".join(str(e).split()) or type(e).__name__
    return KdxError(f"downloading {name} failed: {msg[:300]}")
