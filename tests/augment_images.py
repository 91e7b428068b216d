"""The test images and presets of the chapters' augmentation tests (PyTorch, TensorFlow and Keras
alike)."""

import numpy as np

from common.augment import preset

TINTS = np.array([[1.0, 1.0, 1.0], [1.0, 0.5, 0.2], [0.3, 0.6, 1.0]])
"""Per-image channel scales, in turn: none, warm, cold. On untinted noise an image's mean over R, G
and B is almost its mean luma, so contrast blended towards the wrong one moves a pixel by under
1/255; a tint sets the two apart by several levels."""


def sample_images(n: int, size: int) -> np.ndarray:
    """Random uint8 NHWC images, every third warm and every third cold, with grey rows (r = g = b:
    hue undefined, HSV takes h = s = 0) and saturated red columns at the bottom mixed in."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(n, size, size, 3)) * TINTS[np.arange(n) % len(TINTS), None, None]
    x = np.round(x).astype(np.uint8)
    x[:, :4, :, :] = x[:, :4, :, :1]
    x[:, -2:, :, 0] = 255
    return x


def distinct_presets(size: int, names=("simclr", "mocov2", "byol")) -> list[str]:
    """``names`` less each one whose preset at ``size`` equals an earlier one's, so that no test case
    repeats another's work exactly (MoCo v2's CIFAR preset, at 32 px, is SimCLR's)."""
    kept: list[str] = []
    for name in names:
        if all(preset(name, size) != preset(other, size) for other in kept):
            kept.append(name)
    return kept
