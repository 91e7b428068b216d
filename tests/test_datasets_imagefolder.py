"""The image-folder loader: folders and zips of PNG/JPEG files, and its decode cache."""

import io
import os
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import datasets
from common.datasets import imagecache, imagefolder
from tests.datasets_fixtures import leftovers

CLASSES = ("cat", "dog")


def _image(seed: int, size=(8, 6)) -> np.ndarray:
    """A (height, width, 3) image with smooth content, so JPEG keeps it close: a colour plus a grey
    ramp down and across, so that a flipped, rotated or shifted decode is caught too."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size[0], :size[1]]
    ramp = (3 * rows + 2 * cols)[..., None]
    return (rng.integers(30, 190, 3) + ramp).astype(np.uint8)


def _write_folder(root: Path, suffixes=(".png", ".PNG", ".jpg")) -> dict[str, list]:
    """root/<split>/<class>/<n><suffix>; return split -> [(class index, image)] in loader order."""
    expected = {}
    for split_index, (split, count) in enumerate((("train", 3), ("test", 1))):
        expected[split] = []
        for label, name in enumerate(CLASSES):
            for n in range(count):
                image = _image(100 * split_index + 10 * label + n)
                path = root / split / name / f"{n}{suffixes[n % len(suffixes)]}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path, quality=95)
                expected[split].append((label, image))
    return expected


def _zip_folder(folder: Path, zip_path: Path, prefix: str = "", compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(zip_path, "w", compression) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "datadir"))
    return tmp_path / "datadir"


def _assert_matches(loaded, expected):
    images, labels = loaded
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert labels.tolist() == [label for label, _ in expected]
    error = np.abs(images.astype(int) - np.stack([image for _, image in expected]))
    assert error.max() <= 3  # PNG exact, JPEG of a flat colour within a few levels


def test_folder_with_mixed_case_suffixes(tmp_path, data_dir):
    expected = _write_folder(tmp_path / "pets")
    (tmp_path / "pets" / "train" / "cat" / "notes.txt").write_text("ignored")
    (tmp_path / "pets" / "train" / ".hidden.png").write_bytes(b"ignored")
    for split in ("train", "test"):
        _assert_matches(datasets.load("imagefolder", split, root=tmp_path / "pets"), expected[split])
    info = datasets.info("imagefolder", root=tmp_path / "pets")
    assert info.splits == {"test": 2, "train": 6}
    assert info.classes == CLASSES and info.image_size == (8, 6)


@pytest.mark.parametrize("prefix", ["", "pets/"], ids=["flat", "top-level-folder"])
def test_zip_is_read_in_place(tmp_path, data_dir, prefix):
    expected = _write_folder(tmp_path / "pets")
    source = _zip_folder(tmp_path / "pets", tmp_path / "pets.zip", prefix)
    before = set(leftovers(tmp_path))
    _assert_matches(datasets.load("imagefolder", "train", root=source), expected["train"])
    created = set(leftovers(tmp_path)) - before  # only the cache entry: nothing was unzipped
    assert {path.split("/")[0] for path in created} == {"pets.zip.npy-cache"}
    assert {Path(path).name for path in created if path.count("/") == 2} == {
        "images.npy", "labels.npy", "classes.json", "check.json"}


def test_a_stray_image_beside_the_splits_of_a_top_folder_is_ignored(tmp_path, data_dir):
    expected = _write_folder(tmp_path / "pets")
    Image.fromarray(_image(99)).save(tmp_path / "pets" / "train" / "preview.png")
    source = _zip_folder(tmp_path / "pets", tmp_path / "pets.zip", prefix="mydata/")
    _assert_matches(datasets.load("imagefolder", "train", root=source), expected["train"])


def test_unknown_split_lists_the_sub_folders(tmp_path, data_dir):
    _write_folder(tmp_path / "pets")
    with pytest.raises(ValueError, match="no split 'val'; its splits are: test, train"):
        datasets.load("imagefolder", "val", root=tmp_path / "pets")


def test_root_is_required_and_must_exist(tmp_path):
    with pytest.raises(ValueError, match="imagefolder needs root="):
        datasets.load("imagefolder", "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load("imagefolder", "train", root=tmp_path / "missing")


def test_image_of_another_size_is_named(tmp_path, data_dir):
    _write_folder(tmp_path / "pets")
    odd = tmp_path / "pets" / "train" / "dog" / "9.png"
    Image.fromarray(_image(1, size=(5, 5))).save(odd)
    with pytest.raises(ValueError, match=r"9\.png is 5x5 \(height x width\) but .* is 8x6"):
        datasets.load("imagefolder", "train", root=tmp_path / "pets")


def test_undecodable_file_is_named(tmp_path, data_dir):
    _write_folder(tmp_path / "pets")
    (tmp_path / "pets" / "test" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode .*broken\.jpg"):
        datasets.load("imagefolder", "test", root=tmp_path / "pets")


def test_corrupt_zip_is_refused(tmp_path, data_dir):
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="not a readable .zip"):
        datasets.load("imagefolder", "train", root=tmp_path / "bad.zip")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                         zipfile.ZIP_LZMA], ids=["stored", "deflate", "bzip2", "lzma"])
def test_a_tampered_zip_member_is_a_damaged_archive_not_a_bug(tmp_path, data_dir, compression):
    """Bytes changed inside a member: its CRC-32 (stored) or its compressed stream fails."""
    _write_folder(tmp_path / "pets", suffixes=(".png",))
    source = tmp_path / "pets.zip"
    with zipfile.ZipFile(source, "w", compression) as archive:
        for path in sorted((tmp_path / "pets").rglob("*.png")):
            archive.writestr(path.relative_to(tmp_path / "pets").as_posix(), path.read_bytes() * 4)
    data = bytearray(source.read_bytes())
    start = data.index(b"IDAT") if compression == zipfile.ZIP_STORED else 30 + len("test/cat/0.png") + 4
    data[start:start + 16] = bytes(b ^ 0x5A for b in data[start:start + 16])
    source.write_bytes(bytes(data))
    with pytest.raises(datasets.DatasetError, match=r"pets.zip is damaged: its member .* cannot be "
                                                     r"read .*Download or copy the archive again"):
        datasets.load("imagefolder", "test", root=source)


def _damage_central_directory(source: Path, damage: str) -> None:
    """Damage the last member's entry in the central directory: raise its sizes (the stored bytes
    then end early), or put bytes that are not UTF-8 into a name flagged as UTF-8."""
    data = bytearray(source.read_bytes())
    entry = data.rfind(b"PK\x01\x02")
    if damage == "sizes":
        data[entry + 20:entry + 28] = (10**6).to_bytes(4, "little") * 2  # compressed, uncompressed
    else:
        data[data.index("é".encode(), entry) + 1] = 0xFF
    source.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "message"), [
    ("sizes", r"pets.zip is damaged: its member .* cannot be read .*Download or copy the archive again"),
    ("name", r"pets.zip is not a readable .zip \(.*utf-8.*\): replace it with a good copy"),
])
def test_a_damaged_zip_directory_is_a_damaged_archive_not_a_bug(tmp_path, data_dir, damage, message):
    _write_folder(tmp_path / "pets", suffixes=(".png",))
    (tmp_path / "pets" / "train" / "dog").rename(tmp_path / "pets" / "train" / "é")  # flagged UTF-8
    source = _zip_folder(tmp_path / "pets", tmp_path / "pets.zip")
    _damage_central_directory(source, damage)
    with pytest.raises(datasets.DatasetError, match=message):
        datasets.load("imagefolder", "train", root=source)


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_an_image_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, data_dir, monkeypatch,
                                                                        container):
    """A zip of a few hundred KB can hold a member of gigabytes of zeros (a zip bomb): its size, and a
    folder file's size on disk, is checked first. The limit is lowered here to keep the test fast."""
    monkeypatch.setattr(imagefolder, "MAX_FILE_BYTES", 1000)
    _write_folder(tmp_path / "pets", suffixes=(".png",))
    (tmp_path / "pets" / "train" / "dog" / "9.png").write_bytes(bytes(1001))
    source = tmp_path / "pets"
    if container == "zip":
        source = _zip_folder(source, tmp_path / "pets.zip", compression=zipfile.ZIP_DEFLATED)
        assert zipfile.ZipFile(source).getinfo("train/dog/9.png").compress_size < 100
    with pytest.raises(datasets.InvalidDatasetError, match=r"9\.png is 1,001 bytes, over the limit "
                                                           r"of 1,000 .*: remove it"):
        datasets.load("imagefolder", "train", root=source)
    assert len(datasets.load("imagefolder", "test", root=source)[0]) == 2  # the small ones load


def test_a_split_too_large_for_memory_says_how_much_it_needs(tmp_path, data_dir, monkeypatch):
    _write_folder(tmp_path / "pets")
    empty = np.empty

    def no_memory(shape, dtype=float):
        if len(shape) == 4:  # the array of all the images
            raise MemoryError
        return empty(shape, dtype)

    monkeypatch.setattr(imagefolder.np, "empty", no_memory)
    with pytest.raises(datasets.InvalidDatasetError, match=r"6 images of 8x6 pixels need 0\.0 GiB of "
                                                           r"memory.*resize them"):
        datasets.load("imagefolder", "train", root=tmp_path / "pets")


def test_an_image_this_user_may_not_read_is_named(tmp_path, data_dir, monkeypatch):
    """(A chmod cannot stop root, who runs this suite in containers: the read fails by hand.)"""
    _write_folder(tmp_path / "pets")
    locked = tmp_path / "pets" / "test" / "dog" / "0.png"
    read_bytes = Path.read_bytes

    def denied(path):
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(datasets.InvalidDatasetError, match=f"{locked} cannot be read \\(Permission "
                                                           "denied\\): give this user read access"):
        datasets.load("imagefolder", "test", root=tmp_path / "pets")


def test_a_broken_link_beside_the_images_is_ignored_like_any_non_image(tmp_path, data_dir):
    expected = _write_folder(tmp_path / "pets")
    os.symlink(tmp_path / "nowhere", tmp_path / "pets" / "train" / "README.txt")
    _assert_matches(datasets.load("imagefolder", "train", root=tmp_path / "pets"), expected["train"])


@pytest.fixture
def counted_decoder(monkeypatch):
    calls = []
    real = imagefolder.decode_images

    def counting(source, names):
        calls.append(len(names))
        return real(source, names)

    monkeypatch.setattr(imagefolder, "decode_images", counting)
    return calls


def test_cache_is_used_then_invalidated_when_the_zip_changes(tmp_path, data_dir, counted_decoder):
    expected = _write_folder(tmp_path / "pets")
    source = _zip_folder(tmp_path / "pets", tmp_path / "pets.zip")
    first = datasets.load("imagefolder", "train", root=source)
    second = datasets.load("imagefolder", "train", root=source)
    assert counted_decoder == [6]  # the second load read the cache
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])

    Image.fromarray(_image(99)).save(tmp_path / "pets" / "train" / "dog" / "7.png")
    _zip_folder(tmp_path / "pets", source)
    os.utime(source, ns=(1, 1))  # make sure the modification time differs too
    images, labels = datasets.load("imagefolder", "train", root=source)
    assert counted_decoder == [6, 7] and len(images) == 7
    _assert_matches((images, labels), [*expected["train"], (1, _image(99))])
    entries = [p.name for p in (tmp_path / "pets.zip.npy-cache").iterdir()]
    assert len([name for name in entries if name.startswith("train-")]) == 1  # stale one removed


def test_cache_of_a_folder_follows_its_file_listing(tmp_path, data_dir, counted_decoder):
    _write_folder(tmp_path / "pets")
    datasets.load("imagefolder", "test", root=tmp_path / "pets")
    datasets.load("imagefolder", "test", root=tmp_path / "pets")
    assert counted_decoder == [2]
    (tmp_path / "pets" / "test" / "cat" / "0.png").unlink()
    images, labels = datasets.load("imagefolder", "test", root=tmp_path / "pets")
    assert counted_decoder == [2, 1] and labels.tolist() == [1]


def test_cache_sees_a_same_size_file_whose_modification_time_was_set_back(
    tmp_path, data_dir, counted_decoder
):
    """``cp -p``/``touch -r`` of a same-size file keeps size and mtime; the status-change time,
    which no tool sets back, still moves, so the entry is not served stale."""
    _write_folder(tmp_path / "pets")
    replaced = tmp_path / "pets" / "test" / "cat" / "0.png"
    Image.fromarray(_image(1)).save(replaced, compress_level=0)  # stored: size follows the shape
    datasets.load("imagefolder", "test", root=tmp_path / "pets")
    before = replaced.stat()
    time.sleep(0.05)  # past the kernel's coarse timestamp tick
    Image.fromarray(_image(2)).save(replaced, compress_level=0)
    os.utime(replaced, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = replaced.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    images, labels = datasets.load("imagefolder", "test", root=tmp_path / "pets")
    assert counted_decoder == [2, 2]  # decoded again, not read from the stale entry
    np.testing.assert_array_equal(images[labels.tolist().index(0)], _image(2))


def test_a_cache_beside_a_shared_dataset_is_as_readable_as_the_umask_allows(tmp_path, data_dir):
    """Not mkdtemp's private 0700: the next user of a shared dataset reads the same cache."""
    _write_folder(tmp_path / "pets")
    previous = os.umask(0o022)
    try:
        datasets.load("imagefolder", "test", root=tmp_path / "pets")
    finally:
        os.umask(previous)
    (entry,) = (tmp_path / "pets.npy-cache").iterdir()
    assert entry.stat().st_mode & 0o777 == 0o755


def test_read_only_source_folder_caches_under_the_data_dir(tmp_path, data_dir, counted_decoder):
    _write_folder(tmp_path / "shared" / "pets")
    source = _zip_folder(tmp_path / "shared" / "pets", tmp_path / "shared" / "pets.zip")
    (tmp_path / "shared").chmod(0o555)
    try:
        datasets.load("imagefolder", "train", root=source)
        datasets.load("imagefolder", "train", root=source)
    finally:
        (tmp_path / "shared").chmod(0o755)
    assert counted_decoder == [6]
    assert not (tmp_path / "shared" / "pets.zip.npy-cache").exists()
    _, fallback = imagecache.cache_dirs(source)
    assert fallback.parent == data_dir / "cache" / "imagefolder"
    entry = next(fallback.iterdir())
    assert (entry / "classes.json").read_text() == '["cat", "dog"]'


def test_cache_write_failure_warns_and_still_loads(tmp_path, data_dir, monkeypatch):
    _write_folder(tmp_path / "pets")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imagecache.np, "save", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, _ = datasets.load("imagefolder", "test", root=tmp_path / "pets")
    assert len(images) == 2
    assert any("could not cache" in str(w.message) and "no space left" in str(w.message)
               for w in caught)


@pytest.mark.parametrize("damage", ["overwritten_pixels", "fewer_images", "labels_out_of_range",
                                    "cut_file", "classes_not_a_list"])
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, data_dir, counted_decoder, damage):
    expected = _write_folder(tmp_path / "pets", suffixes=(".png",))
    datasets.load("imagefolder", "train", root=tmp_path / "pets")
    [entry] = [p for p in (tmp_path / "pets.npy-cache").iterdir() if p.name.startswith("train-")]
    images, labels = np.load(entry / "images.npy"), np.load(entry / "labels.npy")
    if damage == "overwritten_pixels":
        images[2, 1, 1] ^= 0xFF
        np.save(entry / "images.npy", images)
    elif damage == "fewer_images":
        np.save(entry / "images.npy", images[:4])
        np.save(entry / "labels.npy", labels[:4])
    elif damage == "labels_out_of_range":
        np.save(entry / "labels.npy", labels + 5)
    elif damage == "cut_file":
        # a copy or a write stopped part-way (a power loss before the data reached the disk)
        (entry / "images.npy").write_bytes((entry / "images.npy").read_bytes()[:140])
    else:  # valid JSON, but not the list of class names
        (entry / "classes.json").write_text("7")
    with pytest.warns(UserWarning, match="image cache .* is damaged"):
        reloaded = datasets.load("imagefolder", "train", root=tmp_path / "pets")
    assert counted_decoder == [6, 6]  # decoded again, not read from the damaged entry
    _assert_matches(reloaded, expected["train"])


def _png_bytes(pixels: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (color type 0: grey, 2: RGB) written by hand: Pillow cannot write 48-bit RGB."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_sixteen_bit_and_opaque_alpha_images_decode_to_their_colours(tmp_path, data_dir):
    grey16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300)  # 0 .. 61100
    rgb16 = np.stack([grey16, grey16 // 2, grey16 // 3], axis=-1)
    opaque = np.concatenate([_image(1), np.full((8, 6, 1), 255, np.uint8)], axis=-1)
    folder = tmp_path / "mixed" / "train" / "a"
    folder.mkdir(parents=True)
    (folder / "0.png").write_bytes(_png_bytes(grey16.reshape(8, 6), 0))
    (folder / "1.png").write_bytes(_png_bytes(rgb16.reshape(8, 6, 3), 2))
    Image.fromarray(opaque, "RGBA").save(folder / "2.png")
    images, _ = datasets.load("imagefolder", "train", root=tmp_path / "mixed")
    np.testing.assert_array_equal(images[0][..., 0], (grey16.reshape(8, 6) >> 8).astype(np.uint8))
    assert images[0].max() > 200 and images[0].min() == 0  # not the almost-white of Pillow's convert
    np.testing.assert_array_equal(images[1], (rgb16.reshape(8, 6, 3) >> 8).astype(np.uint8))
    np.testing.assert_array_equal(images[2], opaque[..., :3])


def test_transparent_images_and_named_pipes_are_refused_with_their_names(tmp_path, data_dir):
    folder = tmp_path / "pets" / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(_image(1)).save(folder / "0.png")
    see_through = np.concatenate([_image(2), np.full((8, 6, 1), 100, np.uint8)], axis=-1)
    Image.fromarray(see_through, "RGBA").save(folder / "1.png")
    with pytest.raises(datasets.DatasetError, match="1.png has transparent pixels .*flatten it"):
        datasets.load("imagefolder", "train", root=tmp_path / "pets")
    (folder / "1.png").unlink()
    os.mkfifo(folder / "2.jpg")  # reading it would block forever
    with pytest.raises(datasets.DatasetError, match="2.jpg is not a regular file"):
        datasets.load("imagefolder", "train", root=tmp_path / "pets")


@pytest.mark.parametrize("mode", ["RGB", "I;16"])
def test_a_png_transparency_key_is_transparency_too(tmp_path, data_dir, mode):
    """A tRNS chunk makes the pixels of one colour transparent, in RGB and 16-bit grey as in L."""
    folder = tmp_path / "pets" / "train" / "a"
    folder.mkdir(parents=True)
    if mode == "RGB":
        Image.fromarray(_image(3)).save(folder / "0.png", transparency=tuple(int(v) for v in _image(3)[0, 0]))
    else:
        Image.fromarray(np.full((8, 6), 4000, np.uint16)).save(folder / "0.png", transparency=4000)
    with pytest.raises(datasets.DatasetError, match=r"0.png has transparent pixels"):
        datasets.load("imagefolder", "train", root=tmp_path / "pets")


def _flip_zip_flag(source: Path, flag_bit: int | None = None, method: int | None = None) -> None:
    """Set a general-purpose flag bit or the compression method in every local and central header."""
    data = bytearray(source.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = data.find(signature)
        while start >= 0:
            if flag_bit is not None:
                data[start + flag_at] |= 1 << flag_bit
            if method is not None:
                data[start + method_at:start + method_at + 2] = method.to_bytes(2, "little")
            start = data.find(signature, start + 4)
    source.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [{"flag_bit": 0}, {"method": 9}], ids=["encrypted", "deflate64"])
def test_a_zip_python_cannot_read_gets_a_message_not_a_traceback(tmp_path, data_dir, damage):
    _write_folder(tmp_path / "pets", suffixes=(".png",))
    source = _zip_folder(tmp_path / "pets", tmp_path / "pets.zip")
    _flip_zip_flag(source, **damage)
    with pytest.raises(datasets.DatasetError, match=r"pets.zip: its member .* cannot be read .*zip "
                                                     r"the images again"):
        datasets.load("imagefolder", "test", root=source)


def test_a_header_claiming_a_decompression_bomb_is_refused_with_its_name(tmp_path, data_dir):
    folder = tmp_path / "pets" / "train" / "a"
    folder.mkdir(parents=True)
    encoded = io.BytesIO()
    Image.fromarray(_image(4)).save(encoded, "PNG")
    png = bytearray(encoded.getvalue())
    png[16:24] = (40_000).to_bytes(4, "big") + (40_000).to_bytes(4, "big")  # IHDR width, height
    png[29:33] = zlib.crc32(png[12:29]).to_bytes(4, "big")  # and the chunk's CRC, as a forger would
    (folder / "0.png").write_bytes(bytes(png))
    with pytest.raises(datasets.DatasetError, match=r"cannot decode .*0.png .*decompression bomb"):
        datasets.load("imagefolder", "train", root=tmp_path / "pets")


def test_a_class_folder_may_be_a_link_and_a_link_loop_is_walked_once(tmp_path, data_dir):
    expected = _write_folder(tmp_path / "store")
    for split in ("train", "test"):
        (tmp_path / "pets" / split).mkdir(parents=True)
        for name in CLASSES:
            os.symlink(tmp_path / "store" / split / name, tmp_path / "pets" / split / name)
    os.symlink(tmp_path / "pets", tmp_path / "pets" / "train" / CLASSES[0] / "loop")
    assert datasets.info("imagefolder", root=tmp_path / "pets").classes == tuple(CLASSES)
    _assert_matches(datasets.load("imagefolder", "train", root=tmp_path / "pets"), expected["train"])


def test_two_splits_may_link_to_the_same_class_folders(tmp_path, data_dir):
    """Only a link back to a folder above is a loop: a folder linked from two places is read under
    both names."""
    expected = _write_folder(tmp_path / "store")
    for split in ("all", "train"):
        (tmp_path / "pets" / split).mkdir(parents=True)
        for name in CLASSES:
            os.symlink(tmp_path / "store" / "train" / name, tmp_path / "pets" / split / name)
    assert datasets.info("imagefolder", root=tmp_path / "pets").splits == {"all": 6, "train": 6}
    for split in ("all", "train"):
        _assert_matches(datasets.load("imagefolder", split, root=tmp_path / "pets"), expected["train"])


def test_a_class_folder_that_cannot_be_listed_is_an_error_not_a_missing_class(tmp_path, data_dir,
                                                                               monkeypatch):
    """os.walk skips a folder it cannot list: the class would vanish and shift every label after it.
    (A chmod cannot stop root, who runs this suite in containers: the listing fails by hand.)"""
    _write_folder(tmp_path / "pets")
    locked = tmp_path / "pets" / "train" / CLASSES[1]
    scandir = os.scandir

    def denied(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(datasets.InvalidDatasetError, match=f"{locked} cannot be read \\(Permission "
                                                           "denied\\): give this user read access"):
        datasets.load("imagefolder", "train", root=tmp_path / "pets")


def test_class_names_sort_alike_from_a_linux_folder_and_a_macos_zip(tmp_path, data_dir):
    """macOS stores "é" decomposed (e + U+0301), which sorts before "f"; composed (U+00E9) after."""
    import unicodedata

    for root, form in ((tmp_path / "linux", "NFC"), (tmp_path / "mac", "NFD")):
        for label, name in enumerate(("éclair", "fig")):
            path = root / "train" / unicodedata.normalize(form, name) / "0.png"
            path.parent.mkdir(parents=True)
            Image.fromarray(_image(label)).save(path)
    zipped = _zip_folder(tmp_path / "mac", tmp_path / "mac.zip")
    linux, mac = (datasets.load("imagefolder", "train", root=root) for root in (tmp_path / "linux", zipped))
    np.testing.assert_array_equal(linux[0], mac[0])
    np.testing.assert_array_equal(linux[1], mac[1])
    assert datasets.info("imagefolder", root=zipped).classes == ("fig", "éclair")
