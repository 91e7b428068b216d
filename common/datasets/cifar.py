"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official *binary* archives.

Never the pickled "python version": unpickling a downloaded file can run arbitrary code. The binary
format is a plain sequence of fixed-size records (https://www.cs.toronto.edu/~kriz/cifar.html):

- CIFAR-10:  1 label byte, then 3072 pixel bytes;
- CIFAR-100: 1 coarse-label byte, 1 fine-label byte, then 3072 pixel bytes;

the pixels being the 1024 red values, then the 1024 green, then the 1024 blue, each plane a 32x32
image in row-major order. So a record's pixels reshape to (3, 32, 32) = CHW, and a transpose gives
HWC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.datasets.archive import Archive, ensure_extracted, is_present
from common.datasets.base import Dataset, DatasetInfo, resolve_root, verify_split
from common.datasets.errors import DatasetNotFoundError, InvalidDatasetError

SIDE = 32
PIXEL_BYTES = 3 * SIDE * SIDE

CIFAR10_ARCHIVE = Archive(
    filename="cifar-10-binary.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    folder="cifar-10-batches-bin",
    sizes=(("train", 50_000), ("test", 10_000)),
)
CIFAR100_ARCHIVE = Archive(
    filename="cifar-100-binary.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    md5="03b5dce01913d631647c71ecec9e9cb8",
    folder="cifar-100-binary",
    sizes=(("train", 50_000), ("test", 10_000)),
)
CIFAR10_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR100_FILES = {"train": ["train.bin"], "test": ["test.bin"]}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar",
    "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile",
    "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster",
    "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)


CIFAR100_LABEL_COLUMNS = (len(CIFAR100_COARSE_CLASSES), len(CIFAR100_CLASSES))  # coarse, fine


def read_records(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one binary batch file: (N, 32, 32, 3) uint8 images and (N, label_bytes) int64 labels."""
    record = label_bytes + PIXEL_BYTES
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path} is missing: the extracted folder {path.parent} is incomplete. Delete that "
            "folder and load again to re-extract it"
        )
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % record:
        raise InvalidDatasetError(
            f"{path} has {raw.size:,} bytes, not a whole number of {record}-byte records: it is "
            f"damaged. Delete {path.parent} and load again to re-extract it"
        )
    records = raw.reshape(-1, record)
    images = records[:, label_bytes:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, :label_bytes].astype(np.int64)


def _read_split(archive: Archive, files: dict, split: str, root, download: bool, label_bytes: int,
                num_classes: tuple[int, ...]):
    if split not in files:  # before any download
        raise InvalidDatasetError(f"{archive.folder} has no split {split!r}; choose one of: "
                                  f"{', '.join(files)}")
    folder = ensure_extracted(archive, resolve_root(root), download)
    parts = [read_records(folder / name, label_bytes) for name in files[split]]
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    for column, classes in enumerate(num_classes):
        verify_split(folder, split, images, labels[:, column], dict(archive.sizes)[split], classes)
    return images, labels


def load_cifar10(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` ("train": 50,000, "test": 10,000): uint8 NHWC images, int64 labels."""
    images, labels = _read_split(CIFAR10_ARCHIVE, CIFAR10_FILES, split, root, download, 1,
                                 (len(CIFAR10_CLASSES),))
    return images, labels[:, 0]


def load_cifar100(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 ``split`` with the 100 fine labels (index into `CIFAR100_CLASSES`)."""
    images, labels = _read_split(CIFAR100_ARCHIVE, CIFAR100_FILES, split, root, download, 2,
                                 CIFAR100_LABEL_COLUMNS)
    return images, labels[:, 1]


def load_cifar100_coarse(
    split: str, root=None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 ``split`` with the 20 coarse "superclass" labels (`CIFAR100_COARSE_CLASSES`)."""
    images, labels = _read_split(CIFAR100_ARCHIVE, CIFAR100_FILES, split, root, download, 2,
                                 CIFAR100_LABEL_COLUMNS)
    return images, labels[:, 0]


CIFAR10 = Dataset(
    info=DatasetInfo(
        name="cifar10",
        description="CIFAR-10: 60,000 32x32 colour photos of 10 object classes",
        splits=dict(CIFAR10_ARCHIVE.sizes),
        image_size=(SIDE, SIDE),
        classes=CIFAR10_CLASSES,
        source=CIFAR10_ARCHIVE.url,
        good_for="the standard small benchmark: SSL pre-training plus kNN / linear-probe accuracy",
    ),
    load=load_cifar10,
    is_present=lambda root: is_present(CIFAR10_ARCHIVE, root),
)
CIFAR100 = Dataset(
    info=DatasetInfo(
        name="cifar100",
        description="CIFAR-100: 60,000 32x32 colour photos of 100 fine classes (20 coarse "
        "superclasses via load_cifar100_coarse)",
        splits=dict(CIFAR100_ARCHIVE.sizes),
        image_size=(SIDE, SIDE),
        classes=CIFAR100_CLASSES,
        source=CIFAR100_ARCHIVE.url,
        good_for="a harder probe than CIFAR-10: many fine classes with only 500 images each",
    ),
    load=load_cifar100,
    is_present=lambda root: is_present(CIFAR100_ARCHIVE, root),
)
