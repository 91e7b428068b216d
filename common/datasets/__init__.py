"""Datasets for every chapter, framework-neutral: a registry of names, and loaders that return
uint8 NHWC RGB images with int64 labels (-1 where there are none).

    from common import datasets
    datasets.names()                        # ['cifar10', 'cifar100', 'digits', ...]
    datasets.info("stl10").splits           # {'train': 5000, 'test': 8000, 'unlabeled': 100000}
    images, labels = datasets.load("cifar10", "train")

Archives are downloaded to (and looked for in) `data_dir()`, or the ``root`` you pass;
``python -m common.datasets`` prints the registry. See docs/datasets.md.
"""

from __future__ import annotations

import os

import numpy as np

from common.datasets.base import Dataset, DatasetInfo, data_dir
from common.datasets.cifar import CIFAR10, CIFAR100, load_cifar100_coarse
from common.datasets.colordigits import COLORDIGITS
from common.datasets.digits import DIGITS
from common.datasets.errors import DatasetError, InvalidDatasetError
from common.datasets.imagefolder import IMAGEFOLDER
from common.datasets.placeddigits import PLACEDDIGITS
from common.datasets.shapes import SHAPES
from common.datasets.stl10 import STL10

__all__ = [
    "DatasetError", "DatasetInfo", "data_dir", "info", "load", "load_cifar100_coarse", "names", "REGISTRY",
]

REGISTRY: dict[str, Dataset] = {
    dataset.info.name: dataset for dataset in (
        CIFAR10, CIFAR100, STL10, IMAGEFOLDER, COLORDIGITS, DIGITS, PLACEDDIGITS, SHAPES)
}


def names() -> list[str]:
    """The registered dataset names."""
    return list(REGISTRY)


def _lookup(name: str) -> Dataset:
    if name not in REGISTRY:
        raise InvalidDatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def info(name: str, root: str | os.PathLike | None = None) -> DatasetInfo:
    """What dataset ``name`` is. For ``imagefolder``, pass ``root`` to describe the folder or .zip
    there (its splits, image size and classes); other datasets ignore ``root``."""
    dataset = _lookup(name)
    if root is not None and dataset.describe is not None:
        return dataset.describe(root)
    return dataset.info


def load(
    name: str, split: str, root: str | os.PathLike | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 RGB and labels (N,) int64 of ``split`` of dataset ``name``.

    ``root`` is the folder holding the dataset (default `data_dir()`); for ``imagefolder`` it is
    the image folder or .zip itself. With ``download=False`` a missing dataset is an error instead
    of a download.
    """
    dataset = _lookup(name)
    splits = dataset.info.splits
    if splits and split not in splits:
        raise InvalidDatasetError(f"{name} has no split {split!r}; choose one of: {', '.join(splits)}")
    return dataset.load(split, root, download)
