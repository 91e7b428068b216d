"""What every dataset module shares: its description (`DatasetInfo`), its registry entry
(`Dataset`) and where data lives on disk (`data_dir`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.datasets.errors import InvalidDatasetError, read_errors

DEFAULT_DATA_DIR = Path("~/.cache/ssl-three-ways/data")

Loader = Callable[[str, "Path | None", bool], tuple[np.ndarray, np.ndarray]]


def data_dir() -> Path:
    """Where archives are downloaded and extracted: ``$DATA_DIR`` if set, else
    ``~/.cache/ssl-three-ways/data``. Nothing is created until a dataset is fetched."""
    return Path(os.environ.get("DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


def walk_files(root: Path) -> Iterator[str]:
    """Every file path under the folder ``root``, in a fixed order, following links to folders
    (a class folder may be a link to where its images are stored; two links to the same folder are
    both read) except a link back to a folder it is inside, which would loop. A folder that cannot
    be listed is an error: skipped (``os.walk``'s default), a class folder would drop out, and every
    label after it would shift."""
    above = {os.fspath(root): (os.path.realpath(root),)}  # folder -> real paths of it and its parents
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=_unreadable):
        chain = above.pop(folder)
        for name in sorted(subfolders):
            real = os.path.realpath(os.path.join(folder, name))
            if real in chain:  # a link back up the tree
                subfolders.remove(name)
            else:
                above[os.path.join(folder, name)] = (*chain, real)
        subfolders.sort()
        for name in sorted(files):
            yield os.path.join(folder, name)


def _unreadable(error: OSError) -> None:
    """``os.walk``'s ``onerror``: a folder that cannot be listed gets read_errors' message."""
    with read_errors(Path(error.filename)):
        raise error


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``root`` as a Path, or `data_dir()` when it is None; it must be a folder, or not exist yet."""
    folder = data_dir() if root is None else Path(root).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InvalidDatasetError(f"{folder} is a file, not a folder: pass the folder that holds (or "
                                  "is to hold) the datasets as root= or --data-dir, or in DATA_DIR")
    return folder


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, without loading it.

    ``splits`` maps each split to its number of images (empty when it depends on the data you point
    the loader at, as for ``imagefolder``); ``image_size`` is (height, width), or None when it
    depends on the data; ``source`` is the download URL or ``"built-in"``.
    """

    name: str
    description: str
    splits: dict[str, int]
    image_size: tuple[int, int] | None
    classes: tuple[str, ...]
    source: str
    good_for: str


@dataclass(frozen=True)
class Dataset:
    """A registry entry: the static description, the loader, and how to tell whether the data is
    on disk (``is_present(root)``: None when that question has no answer without a root).
    ``describe(root)``, where given, builds the description of data found at ``root``."""

    info: DatasetInfo
    load: Loader
    is_present: Callable[[Path], bool | None]
    describe: Callable[[Path], DatasetInfo] | None = None


def verify_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray,
                 expected_count: int, num_classes: int) -> None:
    """Refuse a loaded split that is not what was published: another number of images (an extracted
    file cut to 0 bytes, or to a whole number of records, still parses), or labels outside
    ``0 .. num_classes - 1`` (-1, "no label", only where every label is -1)."""

    remedy = f"the extracted folder {folder} is incomplete or damaged. Delete it and load again"
    if len(images) != expected_count or len(labels) != len(images):
        raise InvalidDatasetError(f"split {split!r} has {len(images):,} images (and {len(labels):,} "
                                  f"labels), the published size is {expected_count:,}: {remedy}")
    unlabeled = bool(len(labels)) and bool(np.all(labels == -1))
    if not unlabeled and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidDatasetError(f"split {split!r} has labels from {labels.min()} to {labels.max()}, "
                                  f"outside 0..{num_classes - 1}: {remedy}")
