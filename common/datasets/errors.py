"""The errors a dataset load can end in. Each message says what went wrong and what to do next.

Every class subclasses :class:`DatasetError` (so an entry point can tell them from bugs) and the
built-in exception a caller would naturally catch (ValueError for bad data, ConnectionError for the
network, OSError/PermissionError for the disk, FileNotFoundError for a missing dataset).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DatasetError(Exception):
    """Base of every dataset error: a known failure whose message says what to do."""


class InvalidDatasetError(DatasetError, ValueError):
    """A dataset, split or file that is not what it should be (unknown name, wrong layout, bad data)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are not where they were looked for."""


class ChecksumError(DatasetError, ValueError):
    """An archive's md5 differs from the published one."""


class TruncatedArchiveError(DatasetError, ValueError):
    """An archive ends early or its compressed stream is corrupt."""


class UnsafeArchiveError(DatasetError, ValueError):
    """An archive member would land outside the target folder or is not a regular file/folder."""


class DownloadError(DatasetError, ConnectionError):
    """The network could not deliver a file, even after retries."""


class DiskFullError(DatasetError, OSError):
    """No space left on the device while writing a dataset."""


class ReadOnlyError(DatasetError, PermissionError):
    """The folder a dataset must be written to is not writable."""


@contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Turn an OSError met while reading ``path`` (no read permission, a failing disk) into a clear
    error. Wrapped around a read inside :func:`disk_errors`, it keeps a file this user may not read
    from getting that function's advice to pick a writable folder."""
    try:
        yield
    except OSError as error:
        raise InvalidDatasetError(f"{path} cannot be read ({error.strerror or error}): give this user "
                                  "read access to it, or move it out of the data folder") from error


@contextmanager
def disk_errors(directory: Path, doing: str) -> Iterator[None]:
    """Turn a full disk or a read-only folder met while ``doing`` something in ``directory`` into
    one of the clear errors above; other errors pass through unchanged."""
    try:
        yield
    except (DiskFullError, ReadOnlyError):
        raise
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"no space left on the device holding {directory} while {doing}: free some space, "
                "or set DATA_DIR (or pass root=) to a folder on a disk with room"
            ) from error
        if isinstance(error, PermissionError) or error.errno == errno.EROFS:
            raise ReadOnlyError(
                f"cannot write to {directory} while {doing} (read-only or no permission): set "
                "DATA_DIR (or pass root=) to a writable folder"
            ) from error
        raise
