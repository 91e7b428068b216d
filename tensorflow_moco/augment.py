"""MoCo v2 views in TensorFlow: the common/augment spec as one traced graph over the whole batch.

The ops implement the exact semantics written once in ``common/augment/__init__.py`` (torchvision's
definitions, floats in [0, 1], a clamp after every colour op) and are tested op by op against the
NumPy reference ``common.augment.ops`` (max abs diff <= 1/255, ``tests/test_tf_augment.py``).

Static shapes, no data-dependent control flow. The per-image random parameters are drawn on the
host by ``common.augment.sample_view_params`` (the same numbers every chapter uses) and turned by
``common.augment.dense.dense_view_params`` into a few float32/bool arrays of fixed shape, batch
axis first. Every op
then runs on every image with per-image parameters, neutral where an image does not get that op
(brightness factor 1, hue shift 0, a one-tap blur kernel, no solarize): no Python loop over images,
no gather of the images an op fires for. A view is therefore one graph whose shape depends only on
the batch and the spec, so it traces once in a ``tf.function``, compiles under XLA
(``jit_compile=True``) and runs inside ``strategy.run`` on each replica's shard (the arrays shard
along the batch axis with the images).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from common.augment import ViewSpec
from common.augment.dense import SOLARIZE_NEVER
from common.augment.ops import HUE_CHANNEL_OFFSETS, LUMA_WEIGHTS


def dense_params_signature(batch: int | None = None) -> dict[str, tf.TensorSpec]:
    """The ``tf.TensorSpec`` of ``dense_view_params``' output for a batch of ``batch``."""
    return {
        "crop_box": tf.TensorSpec((batch, 4), tf.float32),
        "flip": tf.TensorSpec((batch,), tf.bool),
        "blend": tf.TensorSpec((batch, 5, 3), tf.float32),
        "hue": tf.TensorSpec((batch, 4), tf.float32),
        "hue_position": tf.TensorSpec((batch,), tf.int32),
        "blur": tf.TensorSpec((batch,), tf.bool),
        "blur_sigma": tf.TensorSpec((batch,), tf.float32),
        "solarize": tf.TensorSpec((batch,), tf.bool),
    }


# --------------------------------------------------------------------------------------------------
# The ops: float32 NHWC in [0, 1], per-image parameters as tensors of length N
# --------------------------------------------------------------------------------------------------
def to_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 NHWC -> float32 in [0, 1]: ``x / 255``."""
    if images.dtype != tf.uint8 or images.shape.rank != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a uint8 NHWC batch of RGB images, got {images.dtype} "
                         f"{images.shape}")
    return tf.cast(images, tf.float32) / 255.0


def _bilinear_taps(start, extent, size: int):
    """Both taps and the second tap's weight, for ``size`` outputs along one axis of each box.

    Half-pixel centres: source ``(d + 0.5) * extent / size - 0.5`` clamped to [0, extent - 1] (the
    clamp is to the box, not the image); taps ``floor`` and ``min(floor + 1, extent - 1)``, offset
    by the box's ``start``. ``start``, ``extent``: (N, 1); results (N, size).
    """
    centres = tf.range(size, dtype=tf.float32) + 0.5
    source = tf.clip_by_value(centres * extent / size - 0.5, 0.0, extent - 1.0)
    low = tf.floor(source)
    high = tf.minimum(low + 1.0, extent - 1.0)
    return (tf.cast(start + low, tf.int32), tf.cast(start + high, tf.int32),
            source - low)


def resized_crop(x: tf.Tensor, boxes: tf.Tensor, size: int, flip: tf.Tensor) -> tf.Tensor:
    """Crop each image's box (top, left, height, width), resize it bilinearly to (size, size)
    without antialiasing, and mirror the images whose ``flip`` is set.

    This is ``F.interpolate(crop, mode="bilinear", align_corners=False, antialias=False)``, written
    as two gathers (rows, then columns) with per-image tap indices. ``tf.image.crop_and_resize``
    cannot express it: it spaces its samples from corner to corner of the box (align-corners
    style) and, where a tap falls outside the box, reads the pixels next to the box instead of
    clamping to its edge. Flipping the resized image is reading its columns right to left.
    """
    top, left, height, width = tf.split(tf.cast(boxes, tf.float32), 4, axis=1)
    r0, r1, wr = _bilinear_taps(top, height, size)
    c0, c1, wc = _bilinear_taps(left, width, size)
    flip = tf.reshape(tf.cast(flip, tf.bool), (-1, 1))
    c0, c1, wc = (tf.where(flip, tf.reverse(t, axis=[1]), t) for t in (c0, c1, wc))
    wr, wc = wr[:, :, None, None], wc[:, None, :, None]
    rows = (tf.gather(x, r0, axis=1, batch_dims=1) * (1.0 - wr)
            + tf.gather(x, r1, axis=1, batch_dims=1) * wr)
    return (tf.gather(rows, c0, axis=2, batch_dims=1) * (1.0 - wc)
            + tf.gather(rows, c1, axis=2, batch_dims=1) * wc)


def luma(x: tf.Tensor) -> tf.Tensor:
    """(N, H, W, 1) luma ``0.2989 R + 0.587 G + 0.114 B``."""
    return tf.reduce_sum(x * tf.constant(tuple(LUMA_WEIGHTS), x.dtype), axis=-1, keepdims=True)


def blend(x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``clamp(a x + b m + c l)`` with weights (a, b, c) per image (N, 3): l the luma, m its mean.

    Brightness, contrast and saturation of factor f are the blends (f, 0, 0), (f, 1 - f, 0) and
    (f, 0, 1 - f) (torchvision's ``_blend`` of the image with black, its mean grey, its own greys),
    grayscale is (0, 0, 1), and (1, 0, 0) leaves an image as it is, exactly. So one blend with
    per-image weights runs a different one of these ops on every image of the batch.
    """
    a, b, c = (weights[:, i, None, None, None] for i in range(3))
    gray = luma(x)
    mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value(a * x + b * mean + c * gray, 0.0, 1.0)


def adjust_hue(x: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """Shift each image's HSV hue by its delta in [-0.5, 0.5] (``h = (h + delta) mod 1``), in RGB.

    A hue shift keeps V = max and V (1 - S) = min of the channels, so with chroma C = max - min the
    round trip RGB -> HSV -> RGB is, per channel, ``max - C clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 (h + delta)) mod 6`` and n = 5, 3, 1 for R, G, B: the closed form of HSV -> RGB,
    the same piecewise-linear function as torchvision's sector table. h is torchvision's: 6 h =
    (g - b) / C where red holds the max, 2 + (b - r) / C where green does, 4 + (r - g) / C where
    blue does (red wins ties, then green), 0 for greys. A delta of 0 gives the image back up to
    float32 rounding.
    """
    r, g, b = tf.unstack(x, axis=-1)
    maxc = tf.reduce_max(x, axis=-1)
    chroma = maxc - tf.reduce_min(x, axis=-1)
    # argmax returns the first maximum: red wins ties, then green. (Not `maxc == r`: XLA may fuse
    # and recompute x with different rounding on each side of the ==, and then no branch matches.)
    max_channel = tf.argmax(x, axis=-1)
    hue6 = tf.where(max_channel == 0, g - b,
                    tf.where(max_channel == 1, 2.0 * chroma + b - r, 4.0 * chroma + r - g))
    hue6 = hue6 / tf.maximum(chroma, np.finfo(np.float32).tiny)  # greys: 0 / tiny = 0
    offsets = tf.constant(HUE_CHANNEL_OFFSETS, x.dtype)
    k = hue6[..., None] + 6.0 * delta[:, None, None, None] + offsets
    k = k - 6.0 * tf.floor(k / 6.0)  # k mod 6; tf.math.floormod made the compiled views up to 1.5x slower
    ramp = tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)
    return tf.clip_by_value(maxc[..., None] - chroma[..., None] * ramp, 0.0, 1.0)


def gaussian_kernel1d(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """(N, k) kernels ``exp(-0.5 (t / sigma)^2)`` on t = -(k-1)/2 .. (k-1)/2, each summing to 1."""
    half = (kernel_size - 1) / 2
    t = tf.linspace(-half, half, kernel_size)
    weights = tf.exp(-0.5 * tf.square(tf.cast(t, tf.float32) / sigma[:, None]))
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def gaussian_blur(x: tf.Tensor, sigma: tf.Tensor, kernel_size: int,
                  apply: tf.Tensor | None = None) -> tf.Tensor:
    """Separable Gaussian blur, one sigma per image, "reflect" padding (edge pixel not repeated).

    Each pass is a sum over the k taps of weight x shifted image. Images whose ``apply`` is False
    get the one-tap kernel (0, .., 1, .., 0): themselves, exactly.
    """
    if apply is None:
        apply = tf.ones_like(sigma, dtype=tf.bool)
    identity = tf.one_hot(kernel_size // 2, kernel_size)[None, :]
    safe_sigma = tf.where(apply, sigma, tf.ones_like(sigma))
    weights = tf.where(apply[:, None], gaussian_kernel1d(safe_sigma, kernel_size), identity)
    pad = kernel_size // 2
    height, width = x.shape[1], x.shape[2]
    padded = tf.pad(x, [[0, 0], [pad, pad], [0, 0], [0, 0]], mode="REFLECT")
    x = sum(weights[:, j, None, None, None] * padded[:, j : j + height] for j in range(kernel_size))
    padded = tf.pad(x, [[0, 0], [0, 0], [pad, pad], [0, 0]], mode="REFLECT")
    return sum(weights[:, j, None, None, None] * padded[:, :, j : j + width]
               for j in range(kernel_size))


def solarize(x: tf.Tensor, threshold) -> tf.Tensor:
    """Invert the pixels at or above the threshold (0..1 scale): ``x >= t -> 1 - x``.

    ``threshold`` may be one per image (N,); ``SOLARIZE_NEVER`` leaves an image as it is.
    """
    threshold = tf.reshape(tf.cast(threshold, x.dtype), (-1, 1, 1, 1))
    return tf.where(x >= threshold, 1.0 - x, x)


def normalize(x: tf.Tensor, mean, std) -> tf.Tensor:
    """``(x - mean) / std`` per channel."""
    return (x - tf.constant(mean, x.dtype)) / tf.constant(std, x.dtype)


# --------------------------------------------------------------------------------------------------
# A whole view
# --------------------------------------------------------------------------------------------------
def colour_jitter(x: tf.Tensor, params: dict, has_blend: bool, has_hue: bool) -> tf.Tensor:
    """Each image's brightness, contrast and saturation blends and its hue shift, in its own order,
    with the costly hue computed once per batch, not once per jitter position.

    Image i has its hue at position p_i (``params["hue_position"]``), and the blend there is
    neutral. So its ops are the blends at positions j < p_i, the hue, the blends at j > p_i, and the
    batch runs three blend passes (positions 0..2, neutral (1, 0, 0) where j >= p_i), one hue pass
    and three blend passes (positions 1..3, neutral where j <= p_i): every image gets exactly its
    four ops in its order, with static shapes. A blend and a hue at each of the four positions
    give the same views with four hue passes; under XLA on a CPU the two ran about as fast here
    (both views of 256 images: 25-36 ms against 28-31 ms, in turns), where Keras' four-pass version
    of the same ops ran about 2x faster than its one-pass one (keras_byol/README.md). A hue shift
    of 0 leaves its image exactly as it is.
    """
    if not has_hue:
        for position in range(4):
            x = blend(x, params["blend"][:, position])
        return x
    hue_position = tf.reshape(tf.cast(params["hue_position"], tf.int32), (-1, 1))
    neutral = tf.constant((1.0, 0.0, 0.0))

    def blend_where(x, position, fires):
        return blend(x, tf.where(fires, params["blend"][:, position], neutral)) if has_blend else x

    for position in (0, 1, 2):  # the hue is at position 3 at the latest
        x = blend_where(x, position, position < hue_position)
    delta = tf.gather(params["hue"], hue_position, axis=1, batch_dims=1)[:, 0]
    x = tf.where(tf.reshape(delta != 0.0, (-1, 1, 1, 1)), adjust_hue(x, delta), x)
    for position in (1, 2, 3):  # and at position 0 at the earliest
        x = blend_where(x, position, position > hue_position)
    return x


def apply_view(images: tf.Tensor, params: dict, spec: ViewSpec) -> tf.Tensor:
    """One view of a uint8 NHWC batch -> float32 (N, size, size, 3), normalised if the spec says so.

    x / 255 -> resized crop + flip -> the colour jitter in each image's order (:func:`colour_jitter`)
    -> grayscale -> blur -> solarize -> normalise, each image with its own parameters from ``params``
    (``common.augment.dense.dense_view_params``, as tensors or arrays). Which ops exist is decided
    by ``spec`` at trace time (an op the spec lacks is not in the graph); which images they change,
    by the data.
    """
    params = {name: tf.convert_to_tensor(value) for name, value in params.items()}
    x = resized_crop(to_float(images), params["crop_box"], spec.crop.size, params["flip"])
    jitter = spec.jitter
    if jitter is not None:
        has_blend = max(jitter.brightness, jitter.contrast, jitter.saturation) > 0
        x = colour_jitter(x, params, has_blend, has_hue=jitter.hue > 0)
    if spec.grayscale is not None:
        x = blend(x, params["blend"][:, 4])
    if spec.blur is not None:
        x = gaussian_blur(x, params["blur_sigma"], spec.blur.kernel_size, params["blur"])
    if spec.solarize is not None:
        x = solarize(x, tf.where(params["solarize"], spec.solarize.threshold, SOLARIZE_NEVER))
    if spec.normalize is not None:
        x = normalize(x, spec.normalize.mean, spec.normalize.std)
    return x
