"""The image-folder loader: folders and zips of PNG/JPEG files, and its decode cache."""

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import datasets
from common.datasets import imagecache, imagefolder
from tests.datasets_fixtures import leftovers

CLASSES = ("cat", "dog")


def _image(seed: int, size=(8, 6)) -> np.ndarray:
    """A (height, width, 3) image with smooth content, so JPEG keeps it close."""
    rng = np.random.default_rng(seed)
    return np.full((*size, 3), rng.integers(30, 220, 3), dtype=np.uint8)


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


def _zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
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
        "images.npy", "labels.npy", "classes.json"}


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

    monkeypatch.setattr(imagecache.tempfile, "mkdtemp", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, _ = datasets.load("imagefolder", "test", root=tmp_path / "pets")
    assert len(images) == 2
    assert any("could not cache" in str(w.message) and "no space left" in str(w.message)
               for w in caught)
