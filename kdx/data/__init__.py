"""Datasets and fast loaders: ``load_dataset(name) -> DatasetBundle``, ``make_loader(split, ...)``."""

from kdx.data.augment import augment_batch
from kdx.data.datasets import DEFAULT_DATASET, DatasetBundle, default_root, get_dataset_info, list_datasets, load_dataset
from kdx.data.loaders import FolderLoader, TensorLoader, make_loader
from kdx.data.splits import FolderSplit, TensorSplit, stratified_split
from kdx.data import sets  # noqa: E402,F401  isort:skip  (wiring: importing the files registers the built-in datasets)

__all__ = ["DEFAULT_DATASET", "DatasetBundle", "FolderLoader", "FolderSplit", "TensorLoader", "TensorSplit",
           "augment_batch", "default_root", "get_dataset_info", "list_datasets", "load_dataset", "make_loader", "stratified_split"]
