"""``digits``: scikit-learn's 1,797 real handwritten digits (the UCI "optical recognition of
handwritten digits" test set), turned into 32x32 RGB images. Built in: no download.

Each 8x8 image of ink counts 0..16 is
1. upsampled to 32x32 bilinearly, with pixel centres at half-integers and edge pixels repeated
   (what PIL's and torchvision's bilinear resize do when enlarging);
2. scaled from 0..16 to 0..255 and rounded;
3. replicated into the three RGB channels (the digits are grey).

The train/test split is stratified and deterministic: in each class a fixed-seed permutation sends
the first ``count // 5`` images to "test" (355 in all) and the rest to "train" (1,442); both keep the
original order.
"""

from __future__ import annotations

import numpy as np

from common.datasets.base import Dataset, DatasetInfo

SIDE = 32
SOURCE_SIDE = 8
MAX_INK = 16
SPLIT_SEED = 0
TEST_FRACTION_DENOMINATOR = 5  # a fifth of each class goes to "test"


def bilinear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) matrix M so that ``M @ column`` resizes a column bilinearly
    (half-pixel centres, edges clamped)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = position - low
    matrix = np.zeros((target, source))
    np.add.at(matrix, (np.arange(target), low), 1 - weight)
    np.add.at(matrix, (np.arange(target), high), weight)
    return matrix


def upscale_to_rgb(ink: np.ndarray) -> np.ndarray:
    """(N, 8, 8) ink counts 0..16 -> (N, 32, 32, 3) uint8, grey in all three channels."""
    resize = bilinear_matrix(SOURCE_SIDE, SIDE)
    grey = np.einsum("ij,njk,lk->nil", resize, ink.astype(np.float64), resize)
    grey = np.rint(grey * 255 / MAX_INK).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def random_squares(rng: np.random.Generator, n: int, size_range: tuple[int, int],
                   side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sizes, tops, lefts)`` of ``n`` squares inside a ``side`` x ``side`` canvas: each side
    uniform in ``size_range`` (inclusive), then its top-left corner uniform where it fits."""
    sizes = rng.integers(size_range[0], size_range[1] + 1, n)
    return sizes, rng.integers(0, side - sizes + 1), rng.integers(0, side - sizes + 1)


def place_ink(ink: np.ndarray, sizes: np.ndarray, tops: np.ndarray, lefts: np.ndarray,
              side: int) -> np.ndarray:
    """(N, side, side) float32 ink coverage in [0, 1]: digit n's (8, 8) ink counts resized
    bilinearly to a square of ``sizes[n]`` pixels whose top-left corner is ``(tops[n], lefts[n])``;
    0 outside the square. The renderers of ``colordigits`` and ``placeddigits`` draw with it,
    at :func:`random_squares`."""
    coverage = np.zeros((len(ink), side, side), np.float32)
    for size in np.unique(sizes):
        chosen = np.flatnonzero(sizes == size)
        resize = bilinear_matrix(ink.shape[1], size)
        square = np.arange(size)
        rows = (tops[chosen, None] + square)[:, :, None]
        cols = (lefts[chosen, None] + square)[:, None, :]
        coverage[chosen[:, None, None], rows, cols] = np.einsum(
            "ij,njk,lk->nil", resize, ink[chosen].astype(np.float64), resize) / MAX_INK
    return coverage


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of ``split`` under the stratified fixed-seed split described above."""
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test[members[: len(members) // TEST_FRACTION_DENOMINATOR]] = True
    return np.flatnonzero(test if split == "test" else ~test)


def load_digit_ink(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 8, 8) ink counts 0..16 and int64 labels of ``split`` ("train" or "test")."""
    from sklearn import datasets as sklearn_datasets  # imported here: it takes ~1 s

    bunch = sklearn_datasets.load_digits()
    keep = split_indices(bunch.target, split)
    return bunch.images[keep], bunch.target[keep].astype(np.int64)


def load_digits(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``split`` ("train" or "test") of the built-in digits; ``root`` and ``download`` are unused."""
    ink, labels = load_digit_ink(split)
    return upscale_to_rgb(ink), labels


DIGITS = Dataset(
    info=DatasetInfo(
        name="digits",
        description="scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to 32x32 RGB",
        splits={"train": 1_442, "test": 355},
        image_size=(SIDE, SIDE),
        classes=tuple(str(digit) for digit in range(10)),
        source="built-in",
        good_for="smoke tests and demos on real data in seconds, offline (easy: raw pixels "
        "already separate the classes)",
    ),
    load=load_digits,
    is_present=lambda root: True,
)
