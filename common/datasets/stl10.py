"""STL-10 (Coates, Ng & Lee, 2011) from the official binary archive ``stl10_binary.tar.gz``.

96x96 colour images of 10 classes: 5,000 labelled training images, 8,000 test images and 100,000
unlabelled images meant for unsupervised pre-training (https://cs.stanford.edu/~acoates/stl10/).
``<split>_X.bin`` holds the raw pixels and ``<split>_y.bin`` one label byte per image, 1..10
(shifted here to 0..9). Each image is stored channel by channel (red, green, blue) and each 96x96
channel *column-major* (the format comes from MATLAB): reading a file as (N, 3, 96, 96) gives the
axes (image, channel, x, y), so NHWC is ``transpose(0, 3, 2, 1)``.

The unlabelled split (2.7 GB) is memory-mapped, not read: `load` returns a lazy NHWC view of the
file whose pages are read as they are indexed, with labels -1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.datasets.archive import Archive, ensure_extracted, is_present
from common.datasets.base import Dataset, DatasetInfo, resolve_root, verify_split
from common.datasets.errors import InvalidDatasetError

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE

STL10_ARCHIVE = Archive(
    filename="stl10_binary.tar.gz",
    url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    md5="91f7769df0f17e558f3565bffb0c7dfb",
    folder="stl10_binary",
    sizes=(("train", 5_000), ("test", 8_000), ("unlabeled", 100_000)),
)
STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)


def read_images(path: Path, in_memory: bool = True) -> np.ndarray:
    """(N, 96, 96, 3) uint8 view of an STL-10 ``*_X.bin`` file, read into memory or memory-mapped
    (an empty file is read: mmap cannot map it, and the split's size check then reports it)."""
    size = path.stat().st_size if path.is_file() else None
    if size is None or size % IMAGE_BYTES:
        problem = "is missing" if size is None else f"has {size:,} bytes, not whole images"
        raise InvalidDatasetError(
            f"{path} {problem}: the extracted folder is incomplete or damaged. Delete "
            f"{path.parent} and load again to re-extract it"
        )
    shape = (size // IMAGE_BYTES, 3, SIDE, SIDE)
    if in_memory or size == 0:
        stored = np.fromfile(path, dtype=np.uint8).reshape(shape)
    else:
        stored = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    return stored.transpose(0, 3, 2, 1)  # (image, channel, x, y) -> (image, y, x, channel)


def read_labels(path: Path, count: int) -> np.ndarray:
    """int64 labels 0..9 from an STL-10 ``*_y.bin`` file (stored as bytes 1..10)."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1 if path.is_file() else None
    if labels is None or labels.shape != (count,) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        problem = "is missing" if labels is None else f"does not hold {count} labels in 1..10"
        raise InvalidDatasetError(
            f"{path} {problem}: the extracted folder is incomplete or damaged. Delete {path.parent} "
            "and load again to re-extract it"
        )
    return labels


def load_stl10(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """STL-10 ``split``: "train" (5,000) and "test" (8,000) as contiguous arrays in memory,
    "unlabeled" (100,000) as a lazy memory-mapped NHWC view with labels -1."""
    folder = ensure_extracted(STL10_ARCHIVE, resolve_root(root), download)
    if split == "unlabeled":
        images = read_images(folder / "unlabeled_X.bin", in_memory=False)
        labels = np.full(len(images), -1, dtype=np.int64)
    else:
        images = np.ascontiguousarray(read_images(folder / f"{split}_X.bin"))
        labels = read_labels(folder / f"{split}_y.bin", len(images))
    verify_split(folder, split, images, labels, dict(STL10_ARCHIVE.sizes)[split], len(STL10_CLASSES))
    return images, labels


STL10 = Dataset(
    info=DatasetInfo(
        name="stl10",
        description="STL-10: 96x96 colour photos, 10 classes, plus 100,000 unlabelled images",
        splits=dict(STL10_ARCHIVE.sizes),
        image_size=(SIDE, SIDE),
        classes=STL10_CLASSES,
        source=STL10_ARCHIVE.url,
        good_for="SSL as intended: pre-train on the 100k unlabelled images, probe with 5k labels",
    ),
    load=load_stl10,
    is_present=lambda root: is_present(STL10_ARCHIVE, root),
)
