"""Tiny archives in the official formats, and loopback HTTP servers to serve them from.

Everything here builds real bytes in the published layouts, so the tests run the real parsing,
checksum, download and extraction code of `common.datasets`.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from common.datasets.archive import Archive


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz holding regular files ``name -> content``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def random_images(count: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def cifar_record_bytes(images: np.ndarray, *label_columns: np.ndarray) -> bytes:
    """Records of label byte(s) then the R, G and B planes, each row-major."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    labels = np.stack(label_columns, axis=1).astype(np.uint8)
    return np.concatenate([labels, planes], axis=1).tobytes()


def cifar10_archive(per_file: int = 3) -> tuple[bytes, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A CIFAR-10 binary .tar.gz with ``per_file`` images per batch, and the expected splits."""
    members, expected = {"cifar-10-batches-bin/batches.meta.txt": b"airplane\nautomobile\n"}, {}
    files = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    for split, names in files.items():
        images = random_images(per_file * len(names), 32, seed=len(split))
        labels = np.arange(len(images)) % 10
        for i, name in enumerate(names):
            chunk = slice(i * per_file, (i + 1) * per_file)
            members[f"cifar-10-batches-bin/{name}"] = cifar_record_bytes(images[chunk], labels[chunk])
        expected[split] = (images, labels)
    return tar_gz(members), expected


def cifar100_archive(count: int = 4) -> tuple[bytes, dict[str, tuple]]:
    """A CIFAR-100 binary .tar.gz; expected split -> (images, coarse labels, fine labels)."""
    members, expected = {}, {}
    for seed, split in enumerate(("train", "test")):
        images = random_images(count, 32, seed=10 + seed)
        coarse, fine = np.arange(count) % 20, (np.arange(count) * 7 + 3) % 100
        members[f"cifar-100-binary/{split}.bin"] = cifar_record_bytes(images, coarse, fine)
        expected[split] = (images, coarse, fine)
    members["cifar-100-binary/fine_label_names.txt"] = b"apple\n"
    return tar_gz(members), expected


def stl10_bytes(images: np.ndarray) -> bytes:
    """STL-10 layout: per image, per channel, the 96x96 pixels column by column."""
    return images.transpose(0, 3, 2, 1).tobytes()


def stl10_archive() -> tuple[bytes, dict[str, tuple[np.ndarray, np.ndarray]]]:
    members, expected = {"stl10_binary/class_names.txt": b"airplane\nbird\n"}, {}
    for split, count in (("train", 3), ("test", 2), ("unlabeled", 4)):
        images = random_images(count, 96, seed=count)
        members[f"stl10_binary/{split}_X.bin"] = stl10_bytes(images)
        labels = np.arange(count) % 10
        if split != "unlabeled":
            members[f"stl10_binary/{split}_y.bin"] = (labels + 1).astype(np.uint8).tobytes()
        expected[split] = (images, labels if split != "unlabeled" else np.full(count, -1))
    return tar_gz(members), expected


def archive_entry(template: Archive, url: str, data: bytes, sizes: dict | None = None) -> Archive:
    """``template`` pointed at ``url`` with the md5 of ``data`` and the split ``sizes`` of a tiny
    archive (default: those of :func:`cifar10_archive`, :func:`cifar100_archive` and
    :func:`stl10_archive`, by the template's folder)."""
    sizes = sizes or TINY_SIZES[template.folder]
    return Archive(filename=template.filename, url=url, md5=md5_bytes(data), folder=template.folder,
                   sizes=tuple(sizes.items()))


TINY_SIZES = {  # the split sizes of the tiny archives built above (with their default arguments)
    "cifar-10-batches-bin": {"train": 15, "test": 3},
    "cifar-100-binary": {"train": 4, "test": 4},
    "stl10_binary": {"train": 3, "test": 2, "unlabeled": 4},
}


class FileServer:
    """A loopback HTTP server for ``files`` (path -> bytes) in a thread.

    ``ranges``: honour ``Range: bytes=N-`` with 206 replies (else always 200 with the whole file);
    ``drop_first``: the first reply announces the full length but sends only half the body, then
    closes the connection. ``requests`` records (path, Range header) of every request.
    """

    def __init__(self, files: dict[str, bytes], ranges: bool = True, drop_first: bool = False):
        self.files, self.ranges, self.drops_left = files, ranges, int(drop_first)
        self.requests: list[tuple[str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                requested = self.headers.get("Range")
                owner.requests.append((self.path, requested))
                data = owner.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1]) if requested else 0
                if owner.ranges and start:
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    start = 0
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.drops_left:
                    owner.drops_left -= 1
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)

        return Handler


@contextmanager
def serving(files: dict[str, bytes], **options):
    server = FileServer(files, **options)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def leftovers(root: Path) -> list[str]:
    """Everything under ``root``, as sorted relative paths (to assert nothing was left behind)."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))
