"""Exact NumPy reference ops: pure functions with explicit parameters, no randomness.

Each function takes one float image ``(H, W, 3)`` with values in ``[0, 1]`` and computes in float64.
They implement, line for line, the semantics written in the package docstring (torchvision's
``transforms.v2.functional`` definitions); the chapters' implementations are tested against them.
:func:`apply_view` and :func:`apply_view_batch` run a whole view with parameters drawn by
``sampler.sample_view_params``.
"""

from __future__ import annotations

import numpy as np

from .sampler import JITTER_OPS, ViewParams
from .spec import ViewSpec

# ITU-R 601-2 luma weights, rounded as torchvision writes them (they sum to 0.9999).
LUMA_WEIGHTS = np.array([0.2989, 0.587, 0.114])
HUE_CHANNEL_OFFSETS = (5.0, 3.0, 1.0)
"""n for R, G, B in the closed form of HSV -> RGB that the batched back-ends use for the hue shift:
channel = max - chroma clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6 (the same piecewise-linear
function as the sector table of :func:`hsv_to_rgb`)."""


def to_float(img_uint8: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> float64 in ``[0, 1]``: ``x / 255``."""
    img_uint8 = np.asarray(img_uint8)
    if img_uint8.dtype != np.uint8 or img_uint8.ndim != 3 or img_uint8.shape[-1] != 3:
        raise ValueError(
            f"expected one uint8 HWC RGB image (H, W, 3), got dtype {img_uint8.dtype} shape "
            f"{img_uint8.shape}; datasets return uint8 NHWC, pass images[i]"
        )
    return img_uint8.astype(np.float64) / 255.0


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for each output pixel along one axis.

    Half-pixel centres (align_corners=False): src = (dst + 0.5) * in/out - 0.5, clamped below at
    0; i0 = floor(src), i1 = min(i0 + 1, in - 1), weight of i1 = src - i0.
    """
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def resized_crop(img: np.ndarray, box, size: int) -> np.ndarray:
    """Crop ``box = (top, left, height, width)`` and resize it bilinearly to ``(size, size)``.

    Bilinear with half-pixel centres and no antialiasing, as ``torch.nn.functional.interpolate(
    mode="bilinear", align_corners=False, antialias=False)``; separable (rows, then columns), which
    equals the 2-D bilinear formula.
    """
    top, left, height, width = (int(v) for v in box)
    img_h, img_w = img.shape[:2]
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > img_h or left + width > img_w:
        raise ValueError(
            f"crop box (top, left, height, width) = {(top, left, height, width)} does not lie "
            f"inside the {img_h}x{img_w} image"
        )
    crop = img[top : top + height, left : left + width]
    r0, r1, wr = _bilinear_taps(height, size)
    rows = crop[r0] * (1.0 - wr)[:, None, None] + crop[r1] * wr[:, None, None]
    c0, c1, wc = _bilinear_taps(width, size)
    return rows[:, c0] * (1.0 - wc)[None, :, None] + rows[:, c1] * wc[None, :, None]


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return img[:, ::-1]


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` replicated to three channels."""
    luma = img @ LUMA_WEIGHTS
    return np.repeat(luma[..., None], 3, axis=-1)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """``clamp(factor * x)``."""
    return np.clip(img * factor, 0.0, 1.0)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """``clamp(factor * x + (1 - factor) * m)``, m = mean over the image of its luma."""
    mean_luma = float(np.mean(img @ LUMA_WEIGHTS))
    return np.clip(factor * img + (1.0 - factor) * mean_luma, 0.0, 1.0)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """``clamp(factor * x + (1 - factor) * luma(x))``, per pixel."""
    luma = (img @ LUMA_WEIGHTS)[..., None]
    return np.clip(factor * img + (1.0 - factor) * luma, 0.0, 1.0)


def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    """RGB -> HSV, all in ``[0, 1]``, by torchvision's ``_rgb_to_hsv`` algorithm.

    v = max, s = (max - min) / max, h from the channel holding the max (red wins ties, then
    green); grey pixels (max == min) get h = s = 0.
    """
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    maxc = img.max(axis=-1)
    minc = img.min(axis=-1)
    spread = maxc - minc
    grey = spread == 0
    s = spread / np.where(grey, 1.0, maxc)
    divisor = np.where(grey, 1.0, spread)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    max_is_r = maxc == r
    max_is_g = (maxc == g) & ~max_is_r
    max_is_b = ~max_is_r & ~max_is_g
    h = max_is_r * (bc - gc) + max_is_g * (2.0 + rc - bc) + max_is_b * (4.0 + gc - rc)
    h = np.fmod(h / 6.0 + 1.0, 1.0)
    return np.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV -> RGB by torchvision's ``_hsv_to_rgb`` (sector i = floor(6h) mod 6, p/q/t clamped)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h6 = h * 6.0
    sector = np.floor(h6)
    f = h6 - sector
    sector = sector.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    # Per sector, which of (v, p, q, t) each of R, G, B takes.
    choices = np.stack([v, p, q, t], axis=-1)
    select = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])
    index = select[:, sector]  # (3, H, W)
    return np.take_along_axis(choices, np.moveaxis(index, 0, -1), axis=-1)


def adjust_hue(img: np.ndarray, delta: float) -> np.ndarray:
    """Rotate hue: RGB -> HSV, ``h = (h + delta) mod 1``, HSV -> RGB, clamp; ``|delta| <= 0.5``."""
    if not -0.5 <= delta <= 0.5:
        raise ValueError(f"hue delta must be in [-0.5, 0.5] (a fraction of the colour wheel), got {delta}")
    hsv = rgb_to_hsv(img)
    hsv[..., 0] = np.mod(hsv[..., 0] + delta, 1.0)
    return np.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def gaussian_kernel1d(sigma: float, kernel_size: int) -> np.ndarray:
    """``exp(-0.5 (x / sigma)^2)`` on x = -(k-1)/2 .. (k-1)/2, normalised to sum 1."""
    if kernel_size < 1 or kernel_size % 2 == 0 or not sigma > 0:
        raise ValueError(f"need an odd kernel_size >= 1 and sigma > 0, got {kernel_size}, {sigma}")
    x = np.arange(kernel_size) - (kernel_size - 1) / 2.0
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(img: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    """Separable Gaussian blur with ``reflect`` padding (edge pixel not repeated: d c b | a b c d)."""
    radius = kernel_size // 2
    if radius >= min(img.shape[:2]):
        raise ValueError(
            f"kernel_size {kernel_size} is too large for a {img.shape[0]}x{img.shape[1]} image: "
            "reflect padding needs kernel_size // 2 < the image side (see kernel_size_for)"
        )
    kernel = gaussian_kernel1d(sigma, kernel_size)
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(j, j + length), axis=axis) for j, w in enumerate(kernel))
    return out


def solarize(img: np.ndarray, threshold: float) -> np.ndarray:
    """Invert values at or above the threshold: ``x >= t -> 1 - x`` (t on the 0..1 scale)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"solarize threshold is on the 0..1 scale of float images, got {threshold}; "
            "a threshold above 1 never fires"
        )
    return np.where(img >= threshold, 1.0 - img, img)


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
    """Per channel ``(x - mean) / std``."""
    return (img - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)


# The jitter adjustments by index in ViewParams.jitter_order, with each one's neutral factor.
_JITTER_FUNCTIONS = {
    "brightness": (adjust_brightness, 1.0),
    "contrast": (adjust_contrast, 1.0),
    "saturation": (adjust_saturation, 1.0),
    "hue": (adjust_hue, 0.0),
}


def apply_view(img_uint8: np.ndarray, params: ViewParams, i: int, spec: ViewSpec) -> np.ndarray:
    """The whole view for image ``i`` of a batch's parameters: float64 ``(size, size, 3)``.

    uint8 -> x/255 -> resized crop -> flip -> jitter (in params' order; an adjustment whose factor
    is neutral is skipped) -> grayscale -> blur -> solarize -> normalise (if the spec has one).
    """
    x = to_float(img_uint8)
    x = resized_crop(x, params.crop_box[i], spec.crop.size)
    if params.flip[i]:
        x = hflip(x)
    if params.jitter[i]:
        for op_index in params.jitter_order[i]:
            name = JITTER_OPS[op_index]
            function, neutral = _JITTER_FUNCTIONS[name]
            factor = float(getattr(params, name)[i])
            if factor != neutral:
                x = function(x, factor)
    if params.grayscale[i]:
        x = to_grayscale(x)
    if params.blur[i]:
        if spec.blur is None:
            raise ValueError("params ask for a blur but the spec has none: sample with the same spec")
        x = gaussian_blur(x, float(params.blur_sigma[i]), spec.blur.kernel_size)
    if params.solarize[i]:
        if spec.solarize is None:
            raise ValueError("params ask to solarize but the spec has no Solarize: same spec please")
        x = solarize(x, spec.solarize.threshold)
    if spec.normalize is not None:
        x = normalize(x, spec.normalize.mean, spec.normalize.std)
    return x


def apply_view_batch(images_uint8: np.ndarray, params: ViewParams, spec: ViewSpec) -> np.ndarray:
    """:func:`apply_view` for every image of a uint8 NHWC batch: float32 ``(N, size, size, 3)``."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.ndim != 4 or len(images_uint8) != len(params):
        raise ValueError(
            f"expected uint8 NHWC images, one per parameter set ({len(params)}), got shape "
            f"{images_uint8.shape}"
        )
    views = [apply_view(img, params, i, spec) for i, img in enumerate(images_uint8)]
    return np.stack(views).astype(np.float32)
