"""Per-image random parameters of a view, drawn for a whole batch at once (vectorised NumPy).

:func:`sample_view_params` turns a :class:`~common.augment.spec.ViewSpec` and a NumPy ``Generator``
into a :class:`ViewParams`: plain arrays, one row per image, that any framework can move to its
device and apply. Drawing never looks at pixels, so the same parameters can be applied by the NumPy
reference (``ops.apply_view``) and by a chapter's batched GPU path, and the results compared.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .spec import ViewSpec

# Index -> adjustment in ViewParams.jitter_order (and in torchvision's ColorJitter).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")

# torchvision's RandomResizedCrop.get_params tries this many random boxes before its fallback.
CROP_ATTEMPTS = 10


@dataclass
class ViewParams:
    """Parameters of one view for a batch of N images; every field is an array of length N.

    ``brightness``/``contrast``/``saturation``/``hue`` hold the factor applied, neutral (1, 1, 1, 0)
    where jitter is not applied or that adjustment's strength is 0. ``blur_sigma`` is 0.0 where
    ``blur`` is False.
    """

    crop_box: np.ndarray  # int64 (N, 4): top, left, height, width
    flip: np.ndarray  # bool (N,)
    jitter: np.ndarray  # bool (N,): colour jitter applied
    brightness: np.ndarray  # float64 (N,)
    contrast: np.ndarray  # float64 (N,)
    saturation: np.ndarray  # float64 (N,)
    hue: np.ndarray  # float64 (N,)
    jitter_order: np.ndarray  # int64 (N, 4): a permutation of indices into JITTER_OPS
    grayscale: np.ndarray  # bool (N,)
    blur: np.ndarray  # bool (N,)
    blur_sigma: np.ndarray  # float64 (N,)
    solarize: np.ndarray  # bool (N,)

    def __len__(self) -> int:
        return len(self.flip)

    def select(self, index) -> ViewParams:
        """The parameters of a subset of images (any NumPy index: slice, int array, bool mask)."""
        if isinstance(index, int | np.integer):
            index = [index]
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


def sample_crop_boxes(
    n: int,
    image_hw: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Boxes (top, left, height, width) as torchvision's ``RandomResizedCrop.get_params``, vectorised.

    Per image, up to 10 attempts: area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
    w = round(sqrt(area * r)), h = round(sqrt(area / r)) (round half to even, as Python's ``round``);
    the first attempt with 0 < w <= W and 0 < h <= H wins, then top ~ U{0..H-h}, left ~ U{0..W-w}.
    If no attempt fits: the central crop with the image's aspect ratio clamped to ``ratio``.
    """
    height, width = (int(v) for v in image_hw)
    if height < 1 or width < 1:
        raise ValueError(f"image_hw must be two positive ints (height, width), got {image_hw!r}")
    area = height * width * rng.uniform(scale[0], scale[1], size=(n, CROP_ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, CROP_ATTEMPTS)))
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(fits, axis=1)  # index of the first fitting attempt (0 if none fits)
    rows = np.arange(n)
    w, h = w[rows, first], h[rows, first]

    found = fits.any(axis=1)
    fallback_h, fallback_w = _central_fallback(height, width, ratio)
    h = np.where(found, h, fallback_h)
    w = np.where(found, w, fallback_w)
    top = np.where(found, rng.integers(0, height - h + 1), (height - h) // 2)
    left = np.where(found, rng.integers(0, width - w + 1), (width - w) // 2)
    return np.stack([top, left, h, w], axis=1).astype(np.int64)


def _central_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(h, w) of torchvision's fallback: the whole image with its aspect ratio clamped to ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _uniform_factor(strength: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Brightness/contrast/saturation factors ~ U[max(0, 1 - s), 1 + s]; all 1 when s == 0."""
    if strength == 0.0:
        return np.ones(n)
    return rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=n)


def sample_view_params(
    spec: ViewSpec, n: int, image_hw: tuple[int, int], rng: np.random.Generator
) -> ViewParams:
    """Draw the parameters of ``n`` views of images of size ``image_hw = (H, W)``.

    Each op fires independently with its probability (``u < p``, u ~ U[0, 1)); an absent op never
    fires. Jitter factors are drawn as in torchvision's ColorJitter, then set to neutral where the
    jitter does not fire. The jitter order is a uniform random permutation per image when
    ``random_order`` is set, else (brightness, contrast, saturation, hue).
    """
    if not isinstance(spec, ViewSpec):
        raise TypeError(f"spec must be a ViewSpec, got {type(spec).__name__}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    crop_box = sample_crop_boxes(n, image_hw, spec.crop.scale, spec.crop.ratio, rng)

    def fires(op) -> np.ndarray:
        return rng.random(n) < (0.0 if op is None else op.p)

    flip = fires(spec.flip)

    jitter = fires(spec.jitter)
    cj = spec.jitter
    if cj is None:
        brightness, contrast, saturation, hue = np.ones(n), np.ones(n), np.ones(n), np.zeros(n)
        order = np.tile(np.arange(4, dtype=np.int64), (n, 1))
    else:
        brightness = np.where(jitter, _uniform_factor(cj.brightness, n, rng), 1.0)
        contrast = np.where(jitter, _uniform_factor(cj.contrast, n, rng), 1.0)
        saturation = np.where(jitter, _uniform_factor(cj.saturation, n, rng), 1.0)
        hue = np.where(jitter, rng.uniform(-cj.hue, cj.hue, size=n), 0.0)
        if cj.random_order:
            order = np.argsort(rng.random((n, 4)), axis=1).astype(np.int64)
        else:
            order = np.tile(np.arange(4, dtype=np.int64), (n, 1))

    grayscale = fires(spec.grayscale)
    blur = fires(spec.blur)
    if spec.blur is None:
        blur_sigma = np.zeros(n)
    else:
        blur_sigma = np.where(blur, rng.uniform(*spec.blur.sigma, size=n), 0.0)
    solarize = fires(spec.solarize)
    return ViewParams(
        crop_box=crop_box,
        flip=flip,
        jitter=jitter,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        jitter_order=order,
        grayscale=grayscale,
        blur=blur,
        blur_sigma=blur_sigma,
        solarize=solarize,
    )
