"""Fetch one file from an http(s):// or file:// URL: resumable, retried, verified.

The bytes stream into ``<dest>.part``; only a file whose md5 matches is renamed to ``<dest>``, so
``<dest>`` never holds a partial or corrupt download. A later call resumes a ``.part`` file with an
HTTP Range request, or starts it over when the server ignores Range (it answers 200 instead of 206).
Network failures are retried ``retries`` times, waiting ``backoff * 2**attempt`` seconds between
attempts. `open_url` is the only function in the package that reaches the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from common.datasets.errors import ChecksumError, DownloadError, disk_errors, read_errors

RETRIES = 4
BACKOFF_SECONDS = 1.0
TIMEOUT_SECONDS = 60
CHUNK_BYTES = 1 << 20

# Failures worth another attempt: no route, refused or dropped connection, timeout, short body, a
# TLS connection broken in the middle of the body (urlopen wraps the errors before it in URLError).
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
              ssl.SSLError)


class _ShortBody(ConnectionError):
    """The server closed the connection before sending all the bytes it announced."""


def open_url(url: str, offset: int = 0) -> tuple[BinaryIO, int | None, bool]:
    """Open ``url`` for reading from byte ``offset``.

    Returns (response, total size of the whole file or None if unknown, whether the response
    really starts at ``offset``). A server that ignores the Range header sends the whole file:
    the third value is then False and the caller must start over from byte 0.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS
    )
    starts_at_offset = getattr(response, "status", None) == 206
    content_range = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
    length = response.headers.get("Content-Length")
    if content_range:
        starts_at_offset = int(content_range[1]) == offset
        total = int(content_range[2])
    elif length is not None:
        total = int(length) + (offset if starts_at_offset else 0)
    else:
        total = None
    return response, total, starts_at_offset


def md5_of(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    with read_errors(path), open(path, "rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()


def download(
    url: str, dest: Path, md5: str, retries: int | None = None, backoff: float | None = None
) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``) and check its md5; return ``dest``.

    Raises DownloadError when the network fails ``retries + 1`` times in a row or the server refuses
    the request, ChecksumError (after deleting the bad file) when the md5 differs, and
    DiskFullError / ReadOnlyError when ``dest``'s folder cannot take the file.
    """
    retries = RETRIES if retries is None else retries
    backoff = BACKOFF_SECONDS if backoff is None else backoff
    with disk_errors(dest.parent, f"downloading {dest.name}"):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _only_downloader(dest):
            if dest.is_file() and md5_of(dest) == md5:  # another process fetched it meanwhile
                return dest
            _download_into(url, dest, md5, retries, backoff)
    return dest


@contextmanager
def _only_downloader(dest: Path) -> Iterator[None]:
    """One process at a time downloads into ``dest``'s folder (an ``flock`` on the folder itself,
    so no lock file is left behind): two first loads would otherwise write the same ``.part``."""
    descriptor = os.open(dest.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is downloading into {dest.parent} ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (ENOLCK): download as before, unguarded
            pass
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _download_into(url: str, dest: Path, md5: str, retries: int, backoff: float) -> None:
    """:func:`download`'s attempts, resuming ``dest.part``, then the md5 check and the rename."""
    part = dest.with_name(dest.name + ".part")
    manual = f"download it by hand from {url} and put it at {dest}"
    for attempt in range(retries + 1):
        try:
            _stream_into(url, part)
            break
        except urllib.error.HTTPError as error:
            if error.code == 416:  # nothing left to send from our offset
                if md5_of(part) == md5:  # complete (a run killed while checking it)
                    break
                part.unlink()  # longer than the file, or not it: start over
            elif error.code < 500 or attempt == retries:
                raise DownloadError(
                    f"{url} answered HTTP {error.code} {error.reason}: check the URL (or the "
                    f"mirror in $SSL_DATA_MIRROR), or {manual}"
                ) from error
        except _TRANSIENT as error:
            if attempt == retries:
                raise DownloadError(
                    f"could not download {url} after {retries + 1} attempts ({error}): check "
                    f"your network connection and run again to resume, or {manual}"
                ) from error
        time.sleep(backoff * 2**attempt)
    else:  # the last attempt only found .part unusable (HTTP 416)
        raise DownloadError(f"could not download {url}: the server refused to resume it "
                            f"(HTTP 416) on every attempt. Run again, or {manual}")
    found = md5_of(part)
    if found != md5:
        part.unlink()
        raise ChecksumError(
            f"the file downloaded from {url} has md5 {found}, not the published {md5}; it "
            f"was deleted. Run again to retry, or {manual}"
        )
    os.replace(part, dest)


def _stream_into(url: str, part: Path) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (or rewrite it if Range is ignored)."""
    offset = part.stat().st_size if part.exists() else 0
    response, total, resumed = open_url(url, offset)
    start = offset if resumed else 0
    with (
        response,
        open(part, "ab" if resumed else "wb") as out,
        tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.stem, disable=None)
        as progress,
    ):
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            progress.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received < total:
        raise _ShortBody(f"connection closed after {received:,} of {total:,} bytes")
