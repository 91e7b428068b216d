"""A cache of decoded image-folder splits as ``.npy`` files, so only the first load decodes.

An entry is a folder ``<split>-<key>/`` holding ``images.npy`` (uint8 NHWC), ``labels.npy`` (int64),
``classes.json`` (the class names, so that an entry describes itself) and ``check.json`` (the
arrays' shapes and CRC-32s). A cache is not trusted blindly: an entry whose arrays do not match its
check (overwritten or cut bytes, a lost or malformed file) is ignored with a warning and rebuilt
from the source.
``key`` fingerprints the source and the decoding rules (:data:`DECODING`): for a .zip its size,
modification time and status-change time, for a folder every file's relative path with the same
three. The modification time alone, the test ``make`` and ``rsync`` use, misses a file replaced by
another of the same size whose modification time was set back to the old one (``touch -r``, or
``cp -p``/``rsync -a`` of a same-size file with the old time); the status-change time (POSIX
``st_ctime``) moves on every write, rename or ``utime`` and no tool can set it back. A new key means
a stale entry is never read; it is deleted when a new entry of its split is written to the same
cache folder (one in the other location, or of a split no longer loaded, stays). The price: a
``chmod``, or a copy of the dataset together with its cache, changes the key too, and the next load
decodes once more. Reading every byte instead would cost the cached load of CIFAR-10 more than the
cache saves.

Entries live next to the source, in ``<source>.npy-cache/``, when that folder is writable, else (or
when writing there fails) in ``data_dir()/cache/imagefolder/<source name>-<hash of its path>/``.
An entry is written into a temporary folder and renamed into place, so a reader sees a complete
entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np

from common.datasets.base import data_dir, walk_files
from common.datasets.errors import disk_errors

DECODING = 2
"""The version of imagefolder's decoding rules, part of every key: raise it when they change
(version 2: class names in Unicode's NFC form, RGB and 16-bit images with a transparency key)."""


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    """What a key records of one file: its size, modification and status-change times."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def fingerprint(source: Path) -> str:
    """A short hash that changes whenever the source's content may have changed."""
    if source.is_file():
        stat = source.stat()
        listing = [DECODING, (source.name, *_stamp(stat))]
    else:
        listing = [DECODING]
        for path in walk_files(source):
            try:
                stat = os.stat(path)
            except FileNotFoundError:  # a broken link: the loader says what is wrong with it
                stat = os.lstat(path)
            listing.append((os.path.relpath(path, source), *_stamp(stat)))
    return hashlib.sha1(json.dumps(listing).encode()).hexdigest()[:16]


def cache_dirs(source: Path) -> tuple[Path, Path]:
    """Where entries for ``source`` go: next to it, and the fallback under `data_dir()`."""
    source = source.resolve()
    path_hash = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    fallback = data_dir() / "cache" / "imagefolder" / f"{source.name}-{path_hash}"
    return source.with_name(source.name + ".npy-cache"), fallback


def _check(images: np.ndarray, labels: np.ndarray, classes: list) -> dict:
    """What an entry must match: shapes, dtypes, label range and CRC-32s of the arrays' bytes."""
    def crc(array: np.ndarray) -> int:
        return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))

    return {"images": [list(images.shape), str(images.dtype), crc(images)],
            "labels": [list(labels.shape), str(labels.dtype), crc(labels)],
            "classes": len(classes)}


def lookup(source: Path, split: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) of a cached split, or None if neither location has a sound entry."""
    for folder in cache_dirs(source):
        entry = folder / f"{split}-{key}"
        if not entry.is_dir():
            continue
        try:
            images, labels = np.load(entry / "images.npy"), np.load(entry / "labels.npy")
            classes = json.loads((entry / "classes.json").read_text())
            check = json.loads((entry / "check.json").read_text())
            sound = isinstance(classes, list) and check == _check(images, labels, classes)
        except (OSError, ValueError, EOFError) as error:  # EOFError: a cut .npy
            sound, images = False, error
        if sound and labels.size and 0 <= labels.min() and labels.max() < len(classes):
            return images, labels
        warnings.warn(f"the image cache {entry} is damaged; decoding the images again", stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
    return None


def store(
    source: Path, split: str, key: str, images: np.ndarray, labels: np.ndarray, classes: list
) -> Path | None:
    """Cache a decoded split; return the entry's folder, or None (with a warning) when no location
    can take it -- the load still succeeds, the next one decodes again."""
    nearby, fallback = cache_dirs(source)
    problem = None
    for folder in [nearby, fallback] if _looks_writable(nearby.parent) else [fallback]:
        try:
            return _write_entry(folder, split, key, images, labels, classes)
        except OSError as error:  # read-only, or full: try the next location
            problem = error
    warnings.warn(f"could not cache the decoded images: {problem}", stacklevel=3)
    return None


def _looks_writable(folder: Path) -> bool:
    """Whether ``folder`` may be written to. A folder whose permissions say read-only counts as
    such even for root, who could write to it anyway."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _write_entry(folder: Path, split: str, key: str, images, labels, classes) -> Path:
    entry = folder / f"{split}-{key}"
    with disk_errors(folder, f"caching the decoded {split!r} split"):
        folder.mkdir(parents=True, exist_ok=True)
        # mkdir's 0777 less the umask, not mkdtemp's private 0700: a cache beside a shared
        # dataset must stay readable to the others who load it
        staging = folder / f".{split}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            staging.mkdir()
            np.save(staging / "images.npy", images)
            np.save(staging / "labels.npy", labels)
            (staging / "classes.json").write_text(json.dumps(list(classes)))
            (staging / "check.json").write_text(json.dumps(_check(images, labels, list(classes))))
            if not entry.exists():  # another process may have written the same entry
                os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for other in folder.iterdir():
            if other != entry and re.fullmatch(re.escape(split) + r"-[0-9a-f]{16}", other.name):
                shutil.rmtree(other, ignore_errors=True)  # a stale entry of this split
    return entry
