"""Official dataset archives: find, verify and safely unpack them.

An archive ``root/<filename>`` unpacks to the folder ``root/<folder>``. If that folder exists the
dataset is ready. Otherwise an archive already in ``root`` (downloaded earlier, or dropped there by
hand) is checked against its published md5 and used without touching the network; failing that it
is downloaded (from ``$SSL_DATA_MIRROR/<filename>`` when that variable is set).

Unpacking happens in a temporary folder next to the target, member by member after checking each
one (no absolute paths, no ``..``, no links, no devices; tarfile's ``filter="data"`` as a second
line of defence), and the finished folder is renamed into place in one step: a half-extracted
dataset is never visible.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.datasets import download as downloads
from common.datasets.errors import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    InvalidDatasetError,
    TruncatedArchiveError,
    UnsafeArchiveError,
    disk_errors,
    read_errors,
)

MIRROR_VARIABLE = "SSL_DATA_MIRROR"


@dataclass(frozen=True)
class Archive:
    """An official archive: its file name, where to download it, its published md5, the
    top-level folder it unpacks to, and the published number of images of each split (a loaded
    split is checked against it: a damaged extracted folder can parse into fewer images)."""

    filename: str
    url: str
    md5: str
    folder: str
    sizes: tuple[tuple[str, int], ...] = ()

    def source_url(self) -> str:
        """``url``, or ``$SSL_DATA_MIRROR/<filename>`` when a mirror is set."""
        mirror = os.environ.get(MIRROR_VARIABLE)
        if not mirror:
            return self.url
        if not re.match(r"(https?|ftp|file)://", mirror):
            raise DownloadError(f"{MIRROR_VARIABLE}={mirror} is not a URL: give the folder that "
                                "holds the archives as http(s)://host/path, or file:///path for a "
                                "folder on this machine")
        return f"{mirror.rstrip('/')}/{self.filename}"


def is_present(archive: Archive, root: Path) -> bool:
    """Whether ``root`` holds the unpacked folder or the archive itself."""
    return (root / archive.folder).is_dir() or (root / archive.filename).is_file()


def ensure_extracted(archive: Archive, root: Path, download: bool = True) -> Path:
    """Return ``root/<folder>``, verifying and unpacking (and first downloading) the archive if
    the folder is not there yet."""
    target = root / archive.folder
    if target.is_dir():
        return target
    path = root / archive.filename
    if path.is_file():
        found = downloads.md5_of(path)
        if found != archive.md5:
            raise ChecksumError(
                f"{path} has md5 {found}, not the published {archive.md5}: it is damaged or a "
                f"different file. Delete it (or replace it with a good copy of {archive.url}) and "
                "run again"
            )
    elif download:
        downloads.download(archive.source_url(), path, archive.md5)
    else:
        raise DatasetNotFoundError(
            f"{archive.folder} is not in {root}: load it with download=True, or download "
            f"{archive.url} by hand and put it at {path}"
        )
    extract_tar(path, root, archive.folder)
    return target


def extract_tar(path: Path, root: Path, folder: str) -> None:
    """Unpack the tar ``path`` (any compression) and move its ``folder`` to ``root/folder``.

    Raises UnsafeArchiveError or TruncatedArchiveError and leaves nothing behind on a bad archive.
    """
    remedy = "delete it and download a fresh copy from the official source"
    with disk_errors(root, f"extracting {path.name}"):
        staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", suffix=".tmp", dir=root))
        try:
            with read_errors(path):
                tar = tarfile.open(path)
            with tar:
                for member in tar:
                    _check_member(member, path, remedy)
                    tar.extract(member, staging, filter="data")
            if not (staging / folder).is_dir():
                raise InvalidDatasetError(
                    f"{path} holds no folder {folder!r}: is it the right file? {remedy}")
            _move_into_place(staging / folder, root / folder)
        except tarfile.FilterError as error:
            raise UnsafeArchiveError(f"{path} is unsafe ({error}); nothing was extracted") from error
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise TruncatedArchiveError(
                f"{path} is truncated or corrupt ({error}); nothing was extracted: {remedy}"
            ) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(extracted: Path, target: Path) -> None:
    """Rename the extracted folder to ``target``, unless another process got there first: its
    folder, renamed whole, is complete, and ours is dropped (a check before the rename alone
    leaves a window in which the rename meets a non-empty folder and fails)."""
    if target.exists():
        return
    try:
        os.replace(extracted, target)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            raise


def _check_member(member: tarfile.TarInfo, path: Path, remedy: str) -> None:
    """Refuse a member that could write outside the target folder or is not a plain file/folder."""
    name = PurePosixPath(member.name)
    if member.issym() or member.islnk():
        why = f"is a link to {member.linkname!r}"
    elif not (member.isfile() or member.isdir()):
        why = "is a device, fifo or other special file"
    elif name.is_absolute() or member.name.startswith("\\") or member.name[1:2] == ":":
        why = "has an absolute path"  # /etc/x, \\server\x or C:\x
    elif ".." in name.parts:
        why = "climbs out of the target folder with '..'"
    else:
        return
    raise UnsafeArchiveError(
        f"{path} is unsafe: member {member.name!r} {why}. Nothing was extracted; {remedy}"
    )
