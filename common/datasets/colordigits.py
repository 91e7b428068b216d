"""``colordigits``: the real handwritten digits of ``digits``, drawn in random colours, sizes and
positions on random coloured, noisy backgrounds. Built in: no download.

The class is the digit and nothing else. Every other property of an image is a *nuisance* drawn
independently of the class: the ink colour, the background colour and a smooth colour gradient across
it, the digit's size and position, and per-pixel noise. Raw pixels, and the features of a random
network, are dominated by those nuisances: a nearest-neighbour classifier on them is weak (the
random-init ``resnet18_small`` scores about 0.11 kNN top-1). Short self-supervised runs do not fix
that: with SimCLR's quick recipe the kNN stayed at chance for the first 180 steps while the loss
fell (the colours, which the CIFAR presets' colour jitter barely changes, tell two views of an image
apart from the others), so it is not the quick recipes' dataset (docs/book/09-faq.md).

Rendering (vectorised, deterministic for a split's seed): each 8x8 digit's ink (0..16) is resized
bilinearly to a square of ``size`` pixels (``SIZE_RANGE``) and used as the alpha of the ink colour
over the background at a random offset; background = colour A + (colour B - colour A) x a linear ramp
in a random direction; every channel of the ink is drawn at least ``MIN_CONTRAST`` away from the
background's mean colour, on a side where that fits in 0..255 (where neither side fits, it is clipped
to the bound of the second side tried, 0 or 255 about equally often: about 7% of images have a
channel with less contrast); Gaussian pixel noise; rounded to uint8. Each digit of a split is drawn
``COPIES[split]`` times with independent nuisances; the digits of "train" and "test" are the
disjoint sets of ``digits`` (its stratified split).
"""

from __future__ import annotations

import numpy as np

from common.datasets.base import Dataset, DatasetInfo
from common.datasets.digits import load_digit_ink, place_ink, random_squares

SIDE = 32
SIZE_RANGE = (14, 28)  # side of the digit's square in pixels
MIN_CONTRAST = 60  # an ink channel's smallest distance to the background's mean (where it fits)
NOISE_STD = 8.0
COPIES = {"train": 4, "test": 2}
SPLIT_SEEDS = {"train": 10, "test": 11}


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(background A, background B, ink) colours, float (n, 3), with the ink contrasted to the mean
    of A and B (as the module docstring says)."""
    first, second = rng.uniform(0, 255, (2, n, 3))
    mean = (first + second) / 2
    shift = rng.uniform(MIN_CONTRAST, 255, (n, 3)) * rng.choice([-1.0, 1.0], (n, 3))
    ink = mean + shift
    ink = np.where((ink < 0) | (ink > 255), mean - shift, ink)  # the other side if out of range
    return first, second, np.clip(ink, 0, 255)


def render(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 8, 8) ink counts -> (N, 32, 32, 3) uint8 images with random nuisances."""
    n = len(ink)
    first, second, colour = _colours(rng, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    axis = np.arange(SIDE) / (SIDE - 1) - 0.5
    ramp = (np.cos(angle)[:, None, None] * axis[None, None, :]
            + np.sin(angle)[:, None, None] * axis[None, :, None]) + 0.5  # (N, H, W), in [-0.21, 1.21]
    images = (first[:, None, None] + (second - first)[:, None, None] * ramp[..., None]).astype(np.float32)
    squares = random_squares(rng, n, SIZE_RANGE, SIDE)
    alpha = place_ink(ink, *squares, SIDE)  # the ink's coverage of every pixel
    images += alpha[..., None] * (colour[:, None, None].astype(np.float32) - images)
    images += rng.standard_normal(images.shape, dtype=np.float32) * np.float32(NOISE_STD)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def load_colordigits(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``split`` ("train": 5,768 images, "test": 710); ``root`` and ``download`` are unused."""
    ink, labels = load_digit_ink(split)
    copies = COPIES[split]
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    images = render(np.tile(ink, (copies, 1, 1)), rng)
    return images, np.tile(labels, copies).astype(np.int64)


COLORDIGITS = Dataset(
    info=DatasetInfo(
        name="colordigits",
        description="the real handwritten digits in random colours, sizes and positions on noisy "
                    "coloured backgrounds, 32x32",
        splits={"train": 1_442 * COPIES["train"], "test": 355 * COPIES["test"]},
        image_size=(SIDE, SIDE),
        classes=tuple(str(digit) for digit in range(10)),
        source="built-in",
        good_for="studying nuisances: offline, CPU-sized, random features are weak on it (kNN "
                 "about 0.11); short SSL runs do not lift it",
    ),
    load=load_colordigits,
    is_present=lambda root: True,
)
