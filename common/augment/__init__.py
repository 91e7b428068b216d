"""Augmentations for self-supervised learning: specs, presets, exact NumPy reference, sampler.

This docstring is THE definition of every op; the PyTorch, TensorFlow and Keras chapters implement
it and are tested against ``ops.py`` (max abs diff <= 1/255 for the same parameters). The ops follow
torchvision's definitions (``torchvision.transforms.v2.functional``: ``resized_crop``,
``horizontal_flip``, ``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``,
``adjust_hue``, ``rgb_to_grayscale``, ``gaussian_blur``, ``solarize``, ``normalize``) on float images.

A view of one image
-------------------
uint8 HWC -> float ``x / 255`` in [0, 1] -> resized crop -> horizontal flip -> colour jitter (with
probability p; its adjustments in the sampled order) -> grayscale (prob. p) -> Gaussian blur (prob.
p) -> solarize (prob. p) -> normalise. Everything is float in [0, 1] until the normalisation; each
colour adjustment clamps its result to [0, 1] (grayscale, blur and solarize cannot leave it).

- Resized crop: crop the box (top, left, height, width) in integer pixels, then bilinear resize to
  (size, size) with half-pixel centres and NO antialiasing: along each axis the source coordinate
  is ``(dst + 0.5) * in / out - 0.5``, clamped below at 0; taps ``floor(src)`` and
  ``min(floor(src) + 1, in - 1)``. This is ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False, antialias=False)``; torchvision's tensor default is ``antialias=True``, so
  a chapter must ask for False. Antialiasing only changes downsampling: for 32 px datasets at 32 px
  (and any crop no larger than the view) the box is upsampled and both agree; for large photos
  cropped to 224 they differ slightly, and the spec is the unaliased one.
- Horizontal flip: ``x[:, ::-1]``.
- Brightness f: ``clamp(f * x)``.
- Contrast f: ``clamp(f * x + (1 - f) * m)``, m = mean over the whole image of its luma.
- Saturation f: ``clamp(f * x + (1 - f) * luma(x))`` per pixel.
- Hue delta in [-0.5, 0.5]: RGB -> HSV, ``h = (h + delta) mod 1``, HSV -> RGB, with torchvision's
  ``_rgb_to_hsv`` / ``_hsv_to_rgb`` algorithm (see ``ops.rgb_to_hsv``); clamp.
- Luma / grayscale: ``l = 0.2989 R + 0.587 G + 0.114 B`` (ITU-R 601-2 as torchvision writes it),
  replicated to 3 channels by the grayscale op.
- Gaussian blur (sigma, odd k): separable, 1-D kernel ``exp(-0.5 (x / sigma)^2)`` on
  ``x = -(k-1)/2 .. (k-1)/2`` normalised to sum 1; "reflect" padding (edge not repeated:
  ``d c b | a b c d``). Kernel side ``kernel_size_for(size) = 2 * floor(size / 20) + 1`` (SimCLR's
  10% of the side: 224 -> 23, 96 -> 9, 32 -> 3).
- Solarize (threshold t on the 0..1 scale): ``x >= t -> 1 - x``.
- Normalise: ``(x - mean) / std`` per channel.

Random parameters (``sampler.sample_view_params``, per image, vectorised over the batch)
------------------------------------------------------------------------------------------
- Crop box as torchvision's ``RandomResizedCrop.get_params``: area fraction ~ U(scale), log aspect
  ratio ~ U(log ratio); ``w = round(sqrt(A a r))``, ``h = round(sqrt(A a / r))`` (A = H W, round half
  to even); accept if ``0 < w <= W`` and ``0 < h <= H``, then top ~ U{0..H-h}, left ~ U{0..W-w}; up to
  10 attempts, then the central crop with the image's aspect ratio clamped to the ratio range.
- Each op fires with its probability p (``u < p``). Jitter factors as torchvision's ColorJitter:
  brightness, contrast, saturation ~ U[max(0, 1 - s), 1 + s], hue ~ U[-h, h]; a strength of 0 means
  that adjustment is skipped (its factor is neutral: 1, or 0 for hue). Order: a uniform random
  permutation of (brightness, contrast, saturation, hue) when ``random_order``, else that order.
  ``ops.apply_view`` skips an adjustment whose factor is exactly neutral; applying it instead is the
  identity up to rounding, so back-ends may do either.
- Blur sigma ~ U(sigma range).

Public API
----------
Specs (``spec.py``): ``RandomResizedCrop``, ``HorizontalFlip``, ``ColorJitter``, ``Grayscale``,
``GaussianBlur``, ``Solarize``, ``Normalize``, ``ViewSpec``, ``PairSpec`` (frozen, validated,
``to_dict``/``from_dict``/``to_json``/``from_json``), ``kernel_size_for``, ``InvalidSpecError``.
Presets (``presets.py``): ``preset(name, size, mean=None, std=None) -> PairSpec``, ``PRESETS``,
``without_normalize``, ``IMAGENET_MEAN``/``IMAGENET_STD``, ``CIFAR10_MEAN``/``CIFAR10_STD``.
Sampler (``sampler.py``): ``ViewParams``, ``sample_view_params(spec, n, image_hw, rng)``,
``JITTER_OPS``.
Reference ops (``ops.py``): ``to_float``, ``resized_crop``, ``hflip``, ``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, ``rgb_to_hsv``, ``hsv_to_rgb``,
``to_grayscale``, ``gaussian_kernel1d``, ``gaussian_blur``, ``solarize``, ``normalize``,
``apply_view(img_uint8, params, i, spec)``, ``apply_view_batch(images_uint8, params, spec)``.
Gallery: ``python -m common.augment.gallery --out docs/img/augment_gallery.png``.
"""

from .ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_view,
    apply_view_batch,
    gaussian_blur,
    gaussian_kernel1d,
    hflip,
    hsv_to_rgb,
    normalize,
    resized_crop,
    rgb_to_hsv,
    solarize,
    to_float,
    to_grayscale,
)
from .presets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    preset,
    without_normalize,
)
from .sampler import JITTER_OPS, ViewParams, sample_view_params
from .spec import (
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    InvalidSpecError,
    Normalize,
    PairSpec,
    RandomResizedCrop,
    Solarize,
    ViewSpec,
    kernel_size_for,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JITTER_OPS",
    "PRESETS",
    "ColorJitter",
    "GaussianBlur",
    "Grayscale",
    "HorizontalFlip",
    "InvalidSpecError",
    "Normalize",
    "PairSpec",
    "RandomResizedCrop",
    "Solarize",
    "ViewParams",
    "ViewSpec",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_view",
    "apply_view_batch",
    "gaussian_blur",
    "gaussian_kernel1d",
    "hflip",
    "hsv_to_rgb",
    "kernel_size_for",
    "normalize",
    "preset",
    "resized_crop",
    "rgb_to_hsv",
    "sample_view_params",
    "solarize",
    "to_float",
    "to_grayscale",
    "without_normalize",
]
