"""``placeddigits``: the real handwritten digits of ``digits``, white on black, each at a random
size and position on a 16x16 canvas. Built in: no download.

Size and position are the only nuisances, drawn independently of the class, and both are what the
random resized crop of every augmentation preset randomises. So this is the data set on which the
views can teach an encoder something a random one lacks: the random-init ``resnet18_small``
scores 0.3-0.4 kNN top-1 here, 20 epochs of SimCLR's quick recipe about 0.6 (in a CPU minute), and
20 epochs of MoCo v2's or BYOL's 0.37-0.46, depending on their initial draw (in 2-3 minutes)
(docs/book/09-faq.md, "Which nuisances can a few CPU minutes of SSL learn to ignore?").
Train at the native size: ``python -m pytorch_simclr.train --dataset placeddigits --image-size 16``.

Rendering (vectorised, deterministic for a split's seed): each 8x8 digit's ink (0..16) is resized
bilinearly to a square of ``size`` pixels (``SIZE_RANGE``) at a random offset inside the canvas
(``digits.place_ink``), scaled to 0..255, rounded and replicated into the three channels. Every
digit of a split is drawn once; the digits of "train" and "test" are the disjoint sets of
``digits`` (its stratified split).
"""

from __future__ import annotations

import numpy as np

from common.datasets.base import Dataset, DatasetInfo
from common.datasets.digits import load_digit_ink, place_ink, random_squares

SIDE = 16
SIZE_RANGE = (10, 16)  # side of the digit's square in pixels
SPLIT_SEEDS = {"train": 20, "test": 21}


def render(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 8, 8) ink counts -> (N, 16, 16, 3) uint8 grey images, each digit at a random size and
    position."""
    coverage = place_ink(ink, *random_squares(rng, len(ink), SIZE_RANGE, SIDE), SIDE)
    grey = np.rint(coverage * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def load_placeddigits(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``split`` ("train": 1,442 images, "test": 355); ``root`` and ``download`` are unused."""
    ink, labels = load_digit_ink(split)
    return render(ink, np.random.default_rng(SPLIT_SEEDS[split])), labels


PLACEDDIGITS = Dataset(
    info=DatasetInfo(
        name="placeddigits",
        description="the real handwritten digits, white on black, at random sizes (10-16 px) and "
                    "positions on a 16x16 canvas",
        splits={"train": 1_442, "test": 355},
        image_size=(SIDE, SIDE),
        classes=tuple(str(digit) for digit in range(10)),
        source="built-in",
        good_for="seeing an augmentation's invariance learned: offline, CPU-sized, random features "
                 "are weak on it (kNN 0.3-0.4); train with --image-size 16",
    ),
    load=load_placeddigits,
    is_present=lambda root: True,
)
