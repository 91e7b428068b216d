"""CIFAR-10, CIFAR-100 and STL-10 parsed from tiny archives in the official binary formats,
fetched and unpacked by the real download and extraction code."""

import numpy as np
import pytest

from common import datasets
from common.datasets import cifar, stl10
from common.datasets.cifar import read_records
from common.datasets.errors import InvalidDatasetError
from common.datasets.stl10 import read_images
from tests.datasets_fixtures import (
    archive_entry,
    cifar10_archive,
    cifar100_archive,
    serving,
    stl10_archive,
)


@pytest.fixture
def served(monkeypatch):
    """Serve the three tiny archives and point the registry's archives at them."""
    c10, c10_expected = cifar10_archive()
    c100, c100_expected = cifar100_archive()
    stl, stl_expected = stl10_archive()
    files = {"c10.tar.gz": c10, "c100.tar.gz": c100, "stl.tar.gz": stl}
    with serving(files) as server:
        for module, name, key in ((cifar, "CIFAR10_ARCHIVE", "c10.tar.gz"),
                                  (cifar, "CIFAR100_ARCHIVE", "c100.tar.gz"),
                                  (stl10, "STL10_ARCHIVE", "stl.tar.gz")):
            template = getattr(module, name)
            monkeypatch.setattr(module, name, archive_entry(template, server.url(key), files[key]))
        yield {"cifar10": c10_expected, "cifar100": c100_expected, "stl10": stl_expected}


def test_cifar10_splits_round_trip_through_download_and_parse(served, tmp_path):
    for split in ("train", "test"):
        images, labels = datasets.load("cifar10", split, root=tmp_path)
        expected_images, expected_labels = served["cifar10"][split]
        assert images.dtype == np.uint8 and images.shape == expected_images.shape
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
    assert len(datasets.load("cifar10", "train", root=tmp_path)[0]) == 15  # 5 batches of 3


def test_cifar100_fine_and_coarse_labels(served, tmp_path):
    images, fine = datasets.load("cifar100", "test", root=tmp_path)
    _, coarse = datasets.load_cifar100_coarse("test", root=tmp_path)
    expected_images, expected_coarse, expected_fine = served["cifar100"]["test"]
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(fine, expected_fine)
    np.testing.assert_array_equal(coarse, expected_coarse)
    assert fine.dtype == coarse.dtype == np.int64


def test_cifar_record_planes_are_red_green_blue_row_major(tmp_path):
    """Byte 1 of the red plane is row 0, column 1; the green plane starts 1024 bytes later."""
    record = np.zeros(1 + 3072, dtype=np.uint8)
    record[0] = 7  # label
    record[1 + 1] = 200  # red, row 0, column 1
    record[1 + 1024 + 32 * 2] = 100  # green, row 2, column 0
    path = tmp_path / "batch.bin"
    path.write_bytes(record.tobytes() * 2)
    images, labels = read_records(path, label_bytes=1)
    assert images.shape == (2, 32, 32, 3) and labels.tolist() == [[7], [7]]
    assert images[0, 0, 1].tolist() == [200, 0, 0]
    assert images[0, 2, 0].tolist() == [0, 100, 0]
    assert int(images.sum()) == 2 * 300


def test_cifar_record_file_of_wrong_length_is_refused(tmp_path):
    path = tmp_path / "test_batch.bin"
    path.write_bytes(b"\0" * 3074)
    with pytest.raises(ValueError, match="not a whole number of 3073-byte records"):
        read_records(path, label_bytes=1)


def test_stl10_columns_are_transposed_into_rows(tmp_path):
    """STL-10 stores each channel column-major: byte x*96 + y of a plane is row y, column x."""
    stored = np.zeros((1, 3, 96, 96), dtype=np.uint8)
    stored[0, 0, 5, 0] = 255  # red plane, x=5 (column), y=0 (row)
    stored[0, 2, 0, 9] = 128  # blue plane, x=0, y=9
    path = tmp_path / "train_X.bin"
    path.write_bytes(stored.tobytes())
    image = read_images(path)[0]
    assert image.shape == (96, 96, 3)
    assert image[0, 5].tolist() == [255, 0, 0]
    assert image[9, 0].tolist() == [0, 0, 128]
    assert int(image.sum()) == 255 + 128


def test_stl10_splits_and_memory_mapped_unlabeled(served, tmp_path):
    for split in ("train", "test"):
        images, labels = datasets.load("stl10", split, root=tmp_path)
        np.testing.assert_array_equal(images, served["stl10"][split][0])
        np.testing.assert_array_equal(labels, served["stl10"][split][1])
        assert images.flags.c_contiguous
    images, labels = datasets.load("stl10", "unlabeled", root=tmp_path)
    assert isinstance(images.base, np.memmap) or isinstance(images, np.memmap)
    assert images.shape == (4, 96, 96, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, served["stl10"]["unlabeled"][0])
    assert labels.tolist() == [-1, -1, -1, -1] and labels.dtype == np.int64


def test_stl10_labels_outside_1_to_10_are_refused(tmp_path):
    (tmp_path / "train_y.bin").write_bytes(bytes([1, 0, 3]))
    with pytest.raises(ValueError, match="labels in 1..10"):
        stl10.read_labels(tmp_path / "train_y.bin", 3)
    # a missing label file is the extracted folder's problem too, with the same advice
    with pytest.raises(InvalidDatasetError, match=r"test_y\.bin is missing: .* Delete .* re-extract"):
        stl10.read_labels(tmp_path / "test_y.bin", 3)


def test_extracted_folder_is_reused_without_network(served, tmp_path, monkeypatch):
    datasets.load("cifar10", "test", root=tmp_path)
    monkeypatch.setattr("common.datasets.download.open_url", _no_network)
    (tmp_path / "cifar-10-binary.tar.gz").unlink()  # not even the archive is needed any more
    images, _ = datasets.load("cifar10", "test", root=tmp_path)
    np.testing.assert_array_equal(images, served["cifar10"]["test"][0])


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used")


@pytest.mark.parametrize("damage", ["empty", "whole_records_missing"])
def test_a_damaged_extracted_split_is_refused_not_loaded_short(served, tmp_path, damage):
    """A batch file cut to 0 bytes (or by whole records) still parses: the count check catches it."""
    datasets.load("cifar10", "train", root=tmp_path)  # download and extract
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    data = batch.read_bytes()
    batch.write_bytes(b"" if damage == "empty" else data[: len(data) // 3])  # 3 records -> 1
    with pytest.raises(datasets.DatasetError, match="has 1[23] images.*published size is 15.*Delete it"):
        datasets.load("cifar10", "train", root=tmp_path)


def test_an_unlabeled_stl10_file_cut_to_nothing_is_refused_by_its_size(served, tmp_path):
    """Memory-mapped, unlike the others: mmap cannot map an empty file."""
    datasets.load("stl10", "unlabeled", root=tmp_path)  # download and extract
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").write_bytes(b"")
    with pytest.raises(datasets.DatasetError, match="split 'unlabeled' has 0 images.*published size is "
                                                    "4: the extracted folder .* Delete it"):
        datasets.load("stl10", "unlabeled", root=tmp_path)


def test_labels_outside_the_class_range_are_refused(served, tmp_path):
    datasets.load("cifar10", "test", root=tmp_path)
    batch = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    data = bytearray(batch.read_bytes())
    data[0] = 42  # the first record's label byte: CIFAR-10 has classes 0..9
    batch.write_bytes(bytes(data))
    with pytest.raises(datasets.DatasetError, match="labels from .* to 42, outside 0..9"):
        datasets.load("cifar10", "test", root=tmp_path)
