"""``imagefolder``: your own images, laid out as ``<split>/<class>/<image>`` in a folder or a .zip.

Images are .jpg, .jpeg or .png (any case) and are decoded with Pillow to RGB uint8; every image of a
split must have the same size. Grey images become grey RGB and palette images the RGB of their
palette; 16-bit images keep their high byte (as Pillow does for 16-bit RGB: a 16-bit grey PNG
through Pillow's own conversion would come out almost white); an alpha channel is dropped only
where every pixel is opaque, and an image with transparent pixels is refused with its name (flatten
it onto the background you want first). The whole layout may sit under one top-level folder (as
when a folder is zipped). Hidden files and folders, macOS ``__MACOSX`` folders and other files are
ignored; an image name that is not a regular file (a named pipe would block the reader forever), an
image file over ``MAX_FILE_BYTES`` (a zip member by its uncompressed size) and a damaged zip member
are refused with their names.
Classes are the class folders of all splits together, sorted by name (in Unicode's composed form,
NFC), so a label means the same class in every split and from a folder or a .zip alike. EXIF
orientation tags are not applied, as in torchvision's ``ImageFolder`` and ``tf.io.decode_jpeg``.
A .zip is read in place, never unpacked.

The first load of a split decodes it (in this process: see docs/datasets.md for why not in a pool)
and caches the result (`common.datasets.imagecache`); later loads read the cache.
"""

from __future__ import annotations

import io
import lzma
import os
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from common.datasets import imagecache
from common.datasets.base import Dataset, DatasetInfo, walk_files
from common.datasets.errors import DatasetNotFoundError, InvalidDatasetError, read_errors
from common.errors import brief

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORED_FOLDERS = ("__MACOSX",)
LAYOUT = "<split>/<class>/<image>.{jpg,jpeg,png}"
GOOD_FOR = "your own data (or the shared CIFAR-10 JPEG zip), from a folder or a .zip"
MAX_FILE_BYTES = 512 * 2**20
"""The largest image file read, checked before a byte of it is: a folder file's size, a zip member's
uncompressed size (a zip of a few hundred KB can unpack to gigabytes of zeros, a "zip bomb", which
would be read whole into memory before Pillow looks at it). 512 MiB is the raw size of an 8-bit RGB
image at Pillow's own limit (it refuses more than 2 x ``Image.MAX_IMAGE_PIXELS``, about 179 million
pixels, with ``DecompressionBombError``); PNG and JPEG compress, so real image files are far smaller."""


def source_path(root) -> Path:
    """``root`` as an existing folder or .zip, or a clear error."""
    if root is None:
        raise InvalidDatasetError(f"imagefolder needs root=: a folder or .zip laid out as {LAYOUT}")
    source = Path(root).expanduser()
    if not source.exists():
        raise DatasetNotFoundError(f"{source} does not exist: pass a folder or .zip laid out as {LAYOUT}")
    return source


def list_images(source: Path) -> dict[str, list[tuple[str, str]]]:
    """split -> [(class, path of the image inside the source)], sorted by class then file name."""
    names = _zip_names(source) if source.is_file() else _folder_names(source)
    images = [(name, PurePosixPath(name).parts) for name in names if _is_image(name)]
    under_one_folder = len({parts[0] for _, parts in images}) == 1
    deeper = sum(len(parts) == 4 for _, parts in images) > sum(len(parts) == 3 for _, parts in images)
    depth = 4 if under_one_folder and deeper else 3  # "mydata/<split>/<class>/...", stray files aside
    listing: dict[str, list[tuple[str, str]]] = {}
    for name, parts in images:
        if len(parts) == depth:
            listing.setdefault(_nfc(parts[-3]), []).append((_nfc(parts[-2]), name))
    if not listing:
        raise InvalidDatasetError(f"found no images in {source} laid out as {LAYOUT}")
    return {split: sorted(files, key=lambda file: (file[0], _nfc(file[1])))
            for split, files in sorted(listing.items())}


def _nfc(name: str) -> str:
    """A name in Unicode's composed form: "é" is one code point in a folder made on Linux and two
    ("e" and a combining accent) in a zip made on macOS; without this the classes (and so the
    labels) of the same images would sort differently."""
    return unicodedata.normalize("NFC", name)


def class_names(listing: dict[str, list[tuple[str, str]]]) -> list[str]:
    """The class folders of all splits, sorted: label i means ``class_names(...)[i]``."""
    return sorted({label for files in listing.values() for label, _ in files})


def _is_image(name: str) -> bool:
    parts = PurePosixPath(name).parts
    hidden = any(part.startswith(".") or part in IGNORED_FOLDERS for part in parts)
    return name.lower().endswith(IMAGE_SUFFIXES) and not hidden


def _zip_names(source: Path) -> list[str]:
    try:
        with zipfile.ZipFile(source) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, UnicodeDecodeError) as error:  # a name flagged UTF-8 but not UTF-8
        raise InvalidDatasetError(
            f"{source} is not a readable .zip ({error}): replace it with a good copy, or pass a "
            f"folder laid out as {LAYOUT}"
        ) from error


def _folder_names(source: Path) -> list[str]:
    names = []
    for path in walk_files(source):
        relative = PurePosixPath(os.path.relpath(path, source)).as_posix()
        if _is_image(relative) and not os.path.isfile(path):  # reading a FIFO would block forever
            raise InvalidDatasetError(f"{path} is not a regular file (a named pipe, socket or "
                                      "device, or a broken link): remove it from the image folder")
        names.append(relative)
    return names


@contextmanager
def _reader(source: Path) -> Iterator[Callable[[str], bytes]]:
    """A function from an image's path inside ``source`` to its bytes; a file that cannot be read
    is an InvalidDatasetError that says why."""
    if source.is_file():
        with zipfile.ZipFile(source) as archive:
            yield lambda name: _read_member(source, archive, name)
    else:
        yield lambda name: _read_file(source / name)


def _read_member(source: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of the member ``name`` of the zip ``source``, or a clear error: too large, damaged,
    or stored in a form Python cannot read."""
    _check_size(source / name, archive.getinfo(name).file_size)  # zipfile reads no more than that
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError) as error:
        raise InvalidDatasetError(  # a CRC that fails, a stream that is corrupt or ends early
            f"{source} is damaged: its member {name} cannot be read ({brief(error)}). Download or copy "
            "the archive again (or unzip what is intact and point --data-dir there)"
        ) from error
    except (RuntimeError, NotImplementedError) as error:  # encrypted; Deflate64, ...
        raise InvalidDatasetError(
            f"{source}: its member {name} cannot be read ({error}). Python reads zips without a "
            "password, stored or compressed with Deflate, bzip2 or LZMA: zip the images again "
            "(zip -r), or unzip them and point --data-dir at the folder"
        ) from error


def _read_file(path: Path) -> bytes:
    """The bytes of the image file ``path``, or a clear error: too large, or unreadable."""
    with read_errors(path):
        _check_size(path, path.stat().st_size)
        return path.read_bytes()


def _check_size(path: Path, size: int) -> None:
    """Refuse an image file of more than MAX_FILE_BYTES before it is read."""
    if size > MAX_FILE_BYTES:
        raise InvalidDatasetError(
            f"{path} is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for one image file "
            "(imagefolder.MAX_FILE_BYTES): remove it, or replace it with a smaller image")


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes of 16-bit grey


def rgb_pixels(image: Image.Image, name: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded image, converted as the module docstring says."""
    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode == "RGB" and not transparent:
        return np.asarray(image)
    if image.mode in SIXTEEN_BIT_MODES:
        grey16 = np.asarray(image, dtype=np.int64)
        if transparent and (grey16 == image.info["transparency"]).any():  # a tRNS key colour
            raise _transparent(name, image.mode)
        grey = (grey16.clip(0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if transparent:
        rgba = np.asarray(image.convert("RGBA"))
        if (rgba[..., 3] < 255).any():
            raise _transparent(name, image.mode)
        return np.ascontiguousarray(rgba[..., :3])
    if image.mode == "F":
        raise InvalidDatasetError(f"{name} holds floating-point pixels (mode F): save it as an 8-bit "
                                  "image, or remove it")
    return np.asarray(image.convert("RGB"))


def _transparent(name: Path, mode: str) -> InvalidDatasetError:
    return InvalidDatasetError(
        f"{name} has transparent pixels (mode {mode}): flatten it onto a background first (e.g. "
        "PIL: Image.alpha_composite(background, image)), or remove it")


def decode_images(source: Path, names: list[str]) -> np.ndarray:
    """Decode ``names`` (paths inside ``source``) in order into one (N, H, W, 3) uint8 array; all
    must have the size of the first."""
    images = None
    with _reader(source) as read:
        for index, name in enumerate(names):
            data = read(name)
            try:
                with Image.open(io.BytesIO(data)) as image:
                    pixels = rgb_pixels(image, source / name)
            except InvalidDatasetError:
                raise
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                raise InvalidDatasetError(  # Pillow's "cannot identify", a header of 20000x20000 ...
                    f"cannot decode {source / name} ({error}): remove or replace that file"
                ) from error
            if images is None:
                images = _allocate(len(names), pixels.shape)
            if pixels.shape != images.shape[1:]:
                raise InvalidDatasetError(
                    f"{source / name} is {pixels.shape[0]}x{pixels.shape[1]} (height x width) but "
                    f"{source / names[0]} is {images.shape[1]}x{images.shape[2]}: every image of a "
                    "split must have the same size; resize or remove it"
                )
            images[index] = pixels
    return images


def _allocate(count: int, shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array of ``count`` images of ``shape``, or a clear error."""
    try:
        return np.empty((count, *shape), dtype=np.uint8)
    except MemoryError as error:
        raise InvalidDatasetError(
            f"{count:,} images of {shape[0]}x{shape[1]} pixels need {count * np.prod(shape) / 2**30:.1f} "
            "GiB of memory, more than this machine can give: resize them smaller (or use fewer)"
        ) from error


def load_imagefolder(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``split`` of the image folder or .zip ``root``: uint8 NHWC images, int64 labels indexing
    the sorted class names. ``download`` is unused."""
    source = source_path(root)
    key = imagecache.fingerprint(source)
    cached = imagecache.lookup(source, split, key)
    if cached is not None:
        return cached
    listing = list_images(source)
    if split not in listing:
        raise InvalidDatasetError(
            f"{source} has no split {split!r}; its splits are: {', '.join(listing)}"
        )
    index = {label: i for i, label in enumerate(class_names(listing))}
    files = listing[split]
    images = decode_images(source, [name for _, name in files])
    labels = np.array([index[label] for label, _ in files], dtype=np.int64)
    imagecache.store(source, split, key, images, labels, class_names(listing))
    return images, labels


def describe(root) -> DatasetInfo:
    """The description of the image folder or .zip at ``root``: its splits, sizes and classes."""
    source = source_path(root)
    listing = list_images(source)
    first_split = next(iter(listing.values()))
    height, width = decode_images(source, [first_split[0][1]]).shape[1:3]
    return DatasetInfo(
        name="imagefolder",
        description=f"images from {source}",
        splits={split: len(files) for split, files in listing.items()},
        image_size=(height, width),
        classes=tuple(class_names(listing)),
        source=str(source),
        good_for=GOOD_FOR,
    )


IMAGEFOLDER = Dataset(
    info=DatasetInfo(
        name="imagefolder",
        description=f"your images, root=<folder or .zip> laid out as {LAYOUT}",
        splits={},
        image_size=None,
        classes=(),
        source="root=",
        good_for=GOOD_FOR,
    ),
    load=load_imagefolder,
    is_present=lambda root: None,
    describe=describe,
)
