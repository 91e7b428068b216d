"""Download (resume, restart, retry, checksum, errors), manual drop and safe extraction, against
loopback HTTP servers and file:// URLs."""

import errno
import io
import os
import socket
import ssl
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from common import datasets
from common.datasets import archive, cifar
from common.datasets import download as downloads
from common.datasets.errors import (
    ChecksumError,
    DatasetNotFoundError,
    DiskFullError,
    DownloadError,
    InvalidDatasetError,
    ReadOnlyError,
    TruncatedArchiveError,
    UnsafeArchiveError,
)
from tests.datasets_fixtures import (
    archive_entry,
    cifar10_archive,
    leftovers,
    md5_bytes,
    serving,
    tar_gz,
)

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(downloads, "BACKOFF_SECONDS", 0.0)


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_dropped_connection_is_retried_and_completed(tmp_path, ranges):
    with serving({"f.bin": PAYLOAD}, ranges=ranges, drop_first=True) as server:
        dest = downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["f.bin"]  # the .part file became f.bin
    assert len(server.requests) == 2
    # the second request resumes where the first stopped (the no-range server then resends it all)
    assert server.requests[1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_partial_file_is_resumed_with_a_range_request(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    with serving({"f.bin": PAYLOAD}) as server:
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD))
    assert server.requests == [("/f.bin", "bytes=1000-")]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not stay in front")
    with serving({"f.bin": PAYLOAD}, ranges=False) as server:
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD))
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_partial_file_longer_than_the_source_starts_over(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"extra")
    with serving({"f.bin": PAYLOAD}) as server:
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD))
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert [rng for _, rng in server.requests] == [f"bytes={len(PAYLOAD) + 5}-", None]


def test_a_complete_partial_file_is_checked_not_fetched_again(tmp_path):
    """A run killed while checking a finished download: the server answers 416 to the resume."""
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    with serving({"f.bin": PAYLOAD}) as server:
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD), retries=0)
    assert server.requests == [("/f.bin", f"bytes={len(PAYLOAD)}-")]
    assert leftovers(tmp_path) == ["f.bin"]


def test_an_unusable_partial_file_on_the_last_attempt_is_a_clear_error(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"extra")
    with serving({"f.bin": PAYLOAD}) as server, pytest.raises(DownloadError, match="HTTP 416"):
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD), retries=0)
    assert leftovers(tmp_path) == []


def test_file_url(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    dest = downloads.download(source.as_uri(), tmp_path / "out" / "f.bin", md5_bytes(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_a_second_first_load_waits_for_the_download_in_progress(tmp_path, capfd):
    """Two first loads at once: the second waits (the folder's flock) and then finds the file
    the first one fetched; it never writes the same .part. Here the "first process" holds the
    lock, and the URL the second would fetch does not exist."""
    import fcntl
    import threading

    folder = tmp_path / "data"
    folder.mkdir()
    holder = os.open(folder, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    result = {}
    second = threading.Thread(target=lambda: result.update(dest=downloads.download(
        (tmp_path / "not-there.bin").as_uri(), folder / "f.bin", md5_bytes(PAYLOAD))))
    second.start()
    for _ in range(200):
        if "waiting for another process" in capfd.readouterr().err:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the second download did not wait")
    (folder / "f.bin").write_bytes(PAYLOAD)  # what the first process finished
    os.close(holder)
    second.join(timeout=30)
    assert result["dest"] == folder / "f.bin" and leftovers(folder) == ["f.bin"]


def test_checksum_mismatch_deletes_the_download(tmp_path):
    with serving({"f.bin": PAYLOAD}) as server, pytest.raises(ChecksumError, match="was deleted"):
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", "0" * 32)
    assert leftovers(tmp_path) == []


def test_no_network_gives_up_after_the_retries(tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port: every attempt is refused
    with pytest.raises(DownloadError, match="after 3 attempts") as caught:
        downloads.download(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin", "0" * 32, retries=2)
    assert "put it at" in str(caught.value) and isinstance(caught.value.__cause__, urllib.error.URLError)


def test_missing_file_on_the_server_is_not_retried(tmp_path):
    with serving({}) as server, pytest.raises(DownloadError, match="HTTP 404"):
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", "0" * 32)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [(errno.ENOSPC, DiskFullError, "no space left"), (errno.EROFS, ReadOnlyError, "read-only")],
)
def test_write_failures_become_clear_errors(tmp_path, monkeypatch, code, error, message):
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        if "w" in mode or "a" in mode:
            raise OSError(code, "simulated", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(downloads, "open", failing_open, raising=False)
    with serving({"f.bin": PAYLOAD}) as server, pytest.raises(error, match=message):
        downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD))
    assert len(server.requests) == 1  # a disk error is not retried


# --- archives in the data dir: manual drop, checksum, safe extraction ------------------------


@pytest.fixture
def tiny_cifar(monkeypatch):
    data, expected = cifar10_archive(per_file=1)
    monkeypatch.setattr(
        cifar, "CIFAR10_ARCHIVE", archive_entry(cifar.CIFAR10_ARCHIVE, "http://unused.invalid/", data,
                                                {"train": 5, "test": 1})
    )
    monkeypatch.setattr(downloads, "open_url", _no_network)
    return data, expected


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used")


def test_manually_dropped_archive_is_used_without_network(tmp_path, tiny_cifar):
    data, expected = tiny_cifar
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(data)
    images, labels = datasets.load("cifar10", "test", root=tmp_path)
    np.testing.assert_array_equal(images, expected["test"][0])
    assert leftovers(tmp_path)[:2] == ["cifar-10-batches-bin", "cifar-10-batches-bin/batches.meta.txt"]


def test_missing_archive_without_download_says_where_to_put_it(tmp_path, tiny_cifar):
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz"):
        datasets.load("cifar10", "test", root=tmp_path, download=False)


def test_mirror_variable_replaces_the_url(monkeypatch):
    monkeypatch.setenv(archive.MIRROR_VARIABLE, "https://mirror.example/data/")
    assert cifar.CIFAR10_ARCHIVE.source_url() == "https://mirror.example/data/cifar-10-binary.tar.gz"
    monkeypatch.setenv(archive.MIRROR_VARIABLE, "file:///mnt/mirror")
    assert cifar.CIFAR10_ARCHIVE.source_url() == "file:///mnt/mirror/cifar-10-binary.tar.gz"
    # a plain path would reach urllib as "unknown url type", reported as a bug
    monkeypatch.setenv(archive.MIRROR_VARIABLE, "/mnt/mirror")
    with pytest.raises(DownloadError, match="SSL_DATA_MIRROR=/mnt/mirror is not a URL: .* file:///path"):
        cifar.CIFAR10_ARCHIVE.source_url()


def test_a_bad_mirror_does_not_hide_the_error_in_hand(tmp_path, tiny_cifar, monkeypatch):
    """A message naming where to get the archive must not fail on the mirror and lose the real error."""
    monkeypatch.setenv(archive.MIRROR_VARIABLE, "mirror.lan/datasets")
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-bin is not in"):
        datasets.load("cifar10", "test", root=tmp_path, download=False)
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(ChecksumError, match="has md5 .*, not the published"):
        datasets.load("cifar10", "test", root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_a_data_folder_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setattr(downloads, "open_url", _no_network)
    root = tmp_path / "data.txt"
    root.write_text("a file, not a folder")
    with pytest.raises(InvalidDatasetError, match=f"{root} is a file, not a folder: .*--data-dir"):
        datasets.load(name, "test", root=root)
    assert root.read_text() == "a file, not a folder"


def test_a_tls_connection_broken_mid_body_is_retried(tmp_path, monkeypatch):
    stream_into, calls = downloads._stream_into, []

    def broken_once(url, part):
        calls.append(url)
        if len(calls) == 1:
            raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
        return stream_into(url, part)

    monkeypatch.setattr(downloads, "_stream_into", broken_once)
    with serving({"f.bin": PAYLOAD}) as server:
        dest = downloads.download(server.url("f.bin"), tmp_path / "f.bin", md5_bytes(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and len(calls) == 2


def test_tampered_archive_is_refused_and_kept_for_the_user(tmp_path, tiny_cifar):
    data, _ = tiny_cifar
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(bytes(tampered))
    with pytest.raises(ChecksumError, match="Delete it"):
        datasets.load("cifar10", "test", root=tmp_path)
    assert leftovers(tmp_path) == ["cifar-10-binary.tar.gz"]  # no dataset folder, no temp folder


def _tar_with(member: tarfile.TarInfo, content: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        good = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"abc"))
        member.size = len(content) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


def _device(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.CHRTYPE
    return member


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("cifar-10-batches-bin/../../escaped.txt"), "climbs out"),
        (tarfile.TarInfo("/tmp/absolute.txt"), "absolute path"),
        (_symlink("cifar-10-batches-bin/link", "/etc/passwd"), "is a link"),
        (_device("cifar-10-batches-bin/dev"), "device"),
    ],
    ids=["dotdot", "absolute", "symlink", "device"],
)
def test_malicious_archive_is_refused_and_leaves_nothing(tmp_path, monkeypatch, member, message):
    data = _tar_with(member, b"owned")
    monkeypatch.setattr(
        cifar, "CIFAR10_ARCHIVE", archive_entry(cifar.CIFAR10_ARCHIVE, "http://unused.invalid/", data)
    )
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-binary.tar.gz").write_bytes(data)
    with pytest.raises(UnsafeArchiveError, match=message):
        datasets.load("cifar10", "test", root=root)
    assert leftovers(root) == ["cifar-10-binary.tar.gz"]
    assert leftovers(tmp_path) == ["data", "data/cifar-10-binary.tar.gz"]


def test_truncated_archive_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    data, _ = cifar10_archive(per_file=40)
    truncated = data[: len(data) * 2 // 3]
    monkeypatch.setattr(  # a matching checksum, so that the extraction itself meets the truncation
        cifar, "CIFAR10_ARCHIVE", archive_entry(cifar.CIFAR10_ARCHIVE, "http://x.invalid/", truncated)
    )
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(truncated)
    with pytest.raises(TruncatedArchiveError, match="truncated or corrupt"):
        datasets.load("cifar10", "test", root=tmp_path)
    assert leftovers(tmp_path) == ["cifar-10-binary.tar.gz"]


def test_archive_without_the_expected_folder_is_refused(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz({"other/file.bin": b"x"}))
    with pytest.raises(ValueError, match="holds no folder 'cifar-10-batches-bin'"):
        archive.extract_tar(path, tmp_path, "cifar-10-batches-bin")
    assert leftovers(tmp_path) == ["a.tar.gz"]


def test_a_process_that_finishes_extracting_first_wins_the_race(tmp_path, monkeypatch):
    """Two first loads extract at once; the other one renames its folder in place between this
    one's check and its rename, which then meets a non-empty folder: the other's is kept."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_gz({"cifar-10-batches-bin/data.bin": b"ours"}))
    replace = archive.os.replace

    def the_other_process_first(source, target):
        Path(target).mkdir()
        (Path(target) / "data.bin").write_bytes(b"theirs")
        replace(source, target)  # ENOTEMPTY (or EEXIST), as in the real race

    monkeypatch.setattr(archive.os, "replace", the_other_process_first)
    archive.extract_tar(path, tmp_path, "cifar-10-batches-bin")
    assert (tmp_path / "cifar-10-batches-bin" / "data.bin").read_bytes() == b"theirs"
    assert leftovers(tmp_path) == ["a.tar.gz", "cifar-10-batches-bin", "cifar-10-batches-bin/data.bin"]


def test_extraction_into_a_read_only_folder(tmp_path, tiny_cifar, monkeypatch):
    data, _ = tiny_cifar
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(data)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "simulated", str(tmp_path))

    monkeypatch.setattr(archive.tempfile, "mkdtemp", read_only)
    with pytest.raises(ReadOnlyError, match="set DATA_DIR"):
        datasets.load("cifar10", "test", root=tmp_path)


@pytest.mark.parametrize("reading", ["dropped_archive", "downloaded_archive", "extracted_archive"])
def test_an_archive_this_user_may_not_read_asks_for_read_access_not_a_writable_folder(
    tmp_path, tiny_cifar, monkeypatch, reading
):
    """(A chmod cannot stop root, who runs this suite in containers: the read fails by hand.)"""
    data, _ = tiny_cifar
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(data)
    real_open = open

    def denied(file, mode="r", *args, **kwargs):
        if Path(file) == path and "r" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    message = f"{path} cannot be read \\(Permission denied\\): give this user read access"
    if reading == "extracted_archive":
        monkeypatch.setattr(archive.tarfile, "open", denied)
        with pytest.raises(InvalidDatasetError, match=message):
            archive.extract_tar(path, tmp_path, "cifar-10-batches-bin")
        assert leftovers(tmp_path) == ["cifar-10-binary.tar.gz"]
        return
    monkeypatch.setattr(downloads, "open", denied, raising=False)
    with pytest.raises(InvalidDatasetError, match=message):
        if reading == "dropped_archive":
            datasets.load("cifar10", "test", root=tmp_path)
        else:  # already there when download() looks: another process fetched it
            downloads.download("http://unused.invalid/", path, md5_bytes(data))


def test_a_data_folder_without_locks_still_downloads(tmp_path, monkeypatch):
    import fcntl

    def no_lock_service(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_lock_service)
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    dest = downloads.download(source.as_uri(), tmp_path / "out" / "f.bin", md5_bytes(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
