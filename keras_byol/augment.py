"""BYOL's views in ``keras.ops``: the ``common/augment`` spec, vectorised over the batch.

The semantics are written once, in ``common/augment/__init__.py`` (torchvision's definition of each
op on floats in [0, 1], clamped after every colour op); every op here is tested against the NumPy
reference ``common.augment.ops`` (max abs diff <= 1/255, ``tests/test_keras_augment.py``).

Every op runs on the whole batch at once with one parameter per image, and every shape is static:
an image an op does not fire for gets the op's neutral parameter (factor 1, hue shift 0, solarize
threshold 2) or keeps its input through ``ops.where``. No image is ever picked out by a data-dependent
gather, so a view traces under ``jax.jit`` and ``tf.function`` (XLA included) as it runs eagerly on
PyTorch.

Per-image parameters travel as one dense float32 matrix per view, ``(N, len(PARAM_COLUMNS))``
(:func:`dense_params`): the one array a ``keras.utils.PyDataset`` yields beside the uint8 images,
that ``model.fit`` moves to the device, and that a replica's shard is a slice of. Two entry points:

- :class:`ViewLayer` applies given parameters: those of the shared stream (``common.stream``, drawn
  with NumPy by ``common.augment.sample_view_params``), so every chapter trains on the same views at
  the same step. The default training path.
- :class:`RandomView` draws its own parameters with ``keras.random`` and a ``SeedGenerator`` it owns
  (:func:`sample_params`, the same distributions as the NumPy sampler), so that a Keras model can
  augment without any host-side input; the generator's state is a layer variable, which JAX's
  stateless training step threads through like any other.

A view: uint8 -> x / 255 -> resized crop (+ flip) -> colour jitter in each image's order ->
grayscale -> Gaussian blur -> solarize -> normalise.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from common.augment import JITTER_OPS, ViewParams, ViewSpec
from common.augment.ops import HUE_CHANNEL_OFFSETS, LUMA_WEIGHTS
from common.augment.sampler import CROP_ATTEMPTS

PARAM_COLUMNS = (
    "top", "left", "height", "width",  # crop box in source pixels
    "flip", "jitter",  # 0/1
    "brightness", "contrast", "saturation", "hue",  # factors applied (neutral: 1, 1, 1, 0)
    "order0", "order1", "order2", "order3",  # jitter op at each position (index into JITTER_OPS)
    "grayscale", "blur", "blur_sigma", "solarize",  # 0/1, 0/1, sigma (0 without blur), 0/1
)
"""The columns of a dense parameter matrix, in order."""

_COLUMN = {name: index for index, name in enumerate(PARAM_COLUMNS)}
BRIGHTNESS, CONTRAST, SATURATION, HUE = (JITTER_OPS.index(name)
                                         for name in ("brightness", "contrast", "saturation", "hue"))


def dense_params(params: ViewParams) -> np.ndarray:
    """``ViewParams`` (NumPy, one row per image) -> float32 ``(N, len(PARAM_COLUMNS))``.

    float32 holds every pixel coordinate (< 2^24) and op index exactly; the factors round to float32.
    """
    order = np.asarray(params.jitter_order)
    columns = [*np.asarray(params.crop_box).T, params.flip, params.jitter, params.brightness,
               params.contrast, params.saturation, params.hue, *order.T, params.grayscale,
               params.blur, params.blur_sigma, params.solarize]
    return np.stack([np.asarray(c, np.float32) for c in columns], axis=1)


def column(params, name: str):
    """One column of a dense parameter matrix: a length-N tensor."""
    return params[:, _COLUMN[name]]


def _per_image(values):
    """(N,) -> (N, 1, 1, 1), to broadcast one value per image over an NHWC batch."""
    return ops.reshape(values, (-1, 1, 1, 1))


# --------------------------------------------------------------------------------------------------
# The ops. Each takes a float32 NHWC batch in [0, 1] and length-N parameter tensors; the names match
# common/augment/ops.py.
# --------------------------------------------------------------------------------------------------
def to_float(images_uint8):
    """uint8 NHWC -> float32 in [0, 1]: ``x / 255``."""
    return ops.cast(images_uint8, "float32") / 255.0


def _interpolation_matrix(start, length, in_size: int, out_size: int):
    """(N, out_size, in_size) bilinear weights: output pixel d reads the box [start, start + length).

    The reference's taps (half-pixel centres, no antialiasing): source coordinate ``src = (d + 0.5)
    * length / out_size - 0.5`` clamped below at 0, taps ``i0 = floor(src)`` and ``min(i0 + 1,
    length - 1)`` with weights ``1 - (src - i0)`` and ``src - i0``, offset by ``start``. Each row
    has at most two non-zero entries summing to 1.
    """
    centres = ops.arange(out_size, dtype="float32") + 0.5
    length = length[:, None]
    src = ops.maximum(centres[None, :] * length / out_size - 0.5, 0.0)
    i0 = ops.floor(src)
    weight1 = src - i0
    i1 = ops.minimum(i0 + 1.0, length - 1.0)
    first = ops.one_hot(ops.cast(start[:, None] + i0, "int32"), in_size)
    second = ops.one_hot(ops.cast(start[:, None] + i1, "int32"), in_size)
    return first * (1.0 - weight1)[..., None] + second * weight1[..., None]


def resized_crop(x, boxes, size: int, flip):
    """Crop each image's box (top, left, height, width), resize it bilinearly to (size, size), and
    mirror left-right the images whose ``flip`` is 1.

    A bilinear resize is linear and separable: the output is ``R x C^T`` per channel, with R
    (size, H) and C (size, W) the interpolation matrices of the box's rows and columns
    (:func:`_interpolation_matrix`). Mirroring the output is reading C's rows in reverse. Two
    batched matrix products, no gather: O(size H W) work per image where a gather needs O(size^2),
    nothing at 32 px, the price of static shapes when large photos are cropped.
    """
    height, width = x.shape[1], x.shape[2]
    rows = _interpolation_matrix(boxes[:, 0], boxes[:, 2], height, size)
    cols = _interpolation_matrix(boxes[:, 1], boxes[:, 3], width, size)
    cols = ops.where(ops.reshape(flip, (-1, 1, 1)) > 0, ops.flip(cols, axis=1), cols)
    x = ops.einsum("nrh,nhwc->nrwc", rows, x)
    return ops.einsum("nsw,nrwc->nrsc", cols, x)


def luma(x):
    """(N, H, W, 1) luma with the weights of ``common.augment.ops.LUMA_WEIGHTS`` (ITU-R 601-2).

    Under ``torch.compile`` (``--compile-views``) Dynamo breaks the graph here: it traces the NumPy
    array as a tensor and cannot trace its ``tolist()``. With Python floats instead the view is one
    graph, which compiled faster (45 s against 67 s, cold cache) but ran slower (about 5,100
    against 6,600 views/s, ``bench.bench_frameworks`` row ``keras-compiled``, 2026-12-01): so the
    break stays.
    """
    return ops.sum(x * ops.convert_to_tensor(LUMA_WEIGHTS.tolist(), x.dtype), axis=-1, keepdims=True)


def blend(x, own, of_mean, of_luma):
    """``clamp(a x + b m + c l)`` with weights (a, b, c) per image; l the luma, m its image mean.

    Brightness, contrast and saturation with factor f are the blends (f, 0, 0), (f, 1 - f, 0) and
    (f, 0, 1 - f) (torchvision's ``_blend`` of the image with black, its mean grey and its own
    greys); grayscale is (0, 0, 1); (1, 0, 0) leaves an image as it is. So one blend with per-image
    weights runs a different one of these ops on every image of the batch.
    """
    gray = luma(x)
    mean = ops.mean(gray, axis=(1, 2), keepdims=True)
    grey_part = _per_image(of_mean) * mean + _per_image(of_luma) * gray  # one channel: 3x less work
    return ops.clip(_per_image(own) * x + grey_part, 0.0, 1.0)


def adjust_brightness(x, factor):
    """``clamp(f x)``."""
    return blend(x, factor, ops.zeros_like(factor), ops.zeros_like(factor))


def adjust_contrast(x, factor):
    """``clamp(f x + (1 - f) m)``, m the mean of the image's luma."""
    return blend(x, factor, 1.0 - factor, ops.zeros_like(factor))


def adjust_saturation(x, factor):
    """``clamp(f x + (1 - f) luma(x))``."""
    return blend(x, factor, ops.zeros_like(factor), 1.0 - factor)


def to_grayscale(x):
    """The luma replicated to three channels."""
    return ops.repeat(luma(x), 3, axis=-1)


def adjust_hue(x, delta):
    """Shift each image's HSV hue by its delta in [-0.5, 0.5] (``h = (h + delta) mod 1``), in RGB.

    A hue shift keeps V = max and V (1 - S) = min of the channels, so with chroma C = max - min the
    round trip RGB -> HSV -> RGB is, per channel, ``max - C clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 (h + delta)) mod 6`` and n = 5, 3, 1 for R, G, B: the closed form of torchvision's
    sector table. h is torchvision's: 6 h = (g - b) / C where red holds the max, 2 + (b - r) / C
    where green does, 4 + (r - g) / C where blue does (red wins ties, then green), 0 for greys.

    Which channel holds the max is decided by comparing the channels with each other, and the max is
    then *that* channel, never by testing ``max == r``: XLA may evaluate a fused input twice with
    different rounding (FMA in one copy), and an equality between two copies can then fail for all
    three channels. The comparisons always pick a channel, and at a tie both candidate formulas give
    the same hue, so rounding cannot move the result by more than rounding.
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    max_is_r = (r >= g) & (r >= b)
    max_is_g = ~max_is_r & (g >= b)
    maxc = ops.where(max_is_r, r, ops.where(max_is_g, g, b))
    chroma = maxc - ops.minimum(ops.minimum(r, g), b)
    hue6 = ops.where(max_is_r, g - b, ops.where(max_is_g, 2.0 * chroma + b - r, 4.0 * chroma + r - g))
    hue6 = hue6 / ops.where(chroma > 0, chroma, 1.0)  # greys: 0 / 1 = 0
    offsets = ops.convert_to_tensor(HUE_CHANNEL_OFFSETS, x.dtype)
    k = hue6[..., None] + 6.0 * ops.reshape(delta, (-1, 1, 1, 1)) + offsets
    k = k - 6.0 * ops.floor(k / 6.0)
    ramp = ops.clip(ops.minimum(k, 4.0 - k), 0.0, 1.0)
    return ops.clip(maxc[..., None] - chroma[..., None] * ramp, 0.0, 1.0)


def gaussian_kernel1d(sigma, kernel_size: int):
    """(N, k) kernels ``exp(-0.5 (t / sigma)^2)`` on t = -(k-1)/2 .. (k-1)/2, each summing to 1."""
    t = ops.arange(kernel_size, dtype="float32") - (kernel_size - 1) / 2.0
    weights = ops.exp(-0.5 * ops.square(t[None, :] / sigma[:, None]))
    return weights / ops.sum(weights, axis=1, keepdims=True)


def gaussian_blur(x, sigma, kernel_size: int):
    """Separable Gaussian blur, one sigma (> 0) per image, reflect padding (edge not repeated).

    Each pass is a sum over the k taps of weight x shifted image: exact float32 (a grouped
    convolution may run in TF32 on recent GPUs).
    """
    weights = gaussian_kernel1d(sigma, kernel_size)
    radius = kernel_size // 2
    height, width = x.shape[1], x.shape[2]
    padded = ops.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="reflect")
    x = sum(_per_image(weights[:, j]) * padded[:, j : j + height] for j in range(kernel_size))
    padded = ops.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(_per_image(weights[:, j]) * padded[:, :, j : j + width] for j in range(kernel_size))


def solarize(x, threshold):
    """Invert the values at or above each image's threshold (0..1 scale): ``x >= t -> 1 - x``.

    A threshold above 1 leaves its image as it is.
    """
    return ops.where(x >= _per_image(threshold), 1.0 - x, x)


def normalize(x, mean, std):
    """``(x - mean) / std`` per channel."""
    return (x - ops.convert_to_tensor(mean, x.dtype)) / ops.convert_to_tensor(std, x.dtype)


# --------------------------------------------------------------------------------------------------
# A whole view
# --------------------------------------------------------------------------------------------------
def _colour_jitter(x, params):
    """The colour jitter: each image's brightness, contrast and saturation blends and its hue shift,
    in the image's own random order, with the costly hue computed once per batch, not once per
    position.

    Image i runs op ``order_j`` at positions j = 0..3; let p_i be the position of its hue. Its ops
    are then: the blends at positions j < p_i, the hue, the blends at positions j > p_i. So the
    batch runs three blend passes (positions 0..2, each image blending only where j < p_i, neutral
    (1, 0, 0) elsewhere), one hue pass, three blend passes (positions 1..3, where j > p_i): every
    image gets exactly its four ops in its order, with static shapes. (Running all four ops at each
    position, masked, computes the hue four times for every image: on eager PyTorch that was most
    of a view's cost.)
    """
    jitter = column(params, "jitter") > 0
    factors = [column(params, name) for name in ("brightness", "contrast", "saturation")]
    hue = column(params, "hue")
    zero, one = ops.zeros_like(hue), ops.ones_like(hue)
    orders = [column(params, f"order{position}") for position in range(4)]
    hue_position = sum(position * ops.cast(op == HUE, "float32") for position, op in enumerate(orders))

    def blend_at(x, position, before_hue: bool):
        op = orders[position]
        here = ops.greater(hue_position, position) if before_hue else ops.less(hue_position, position)
        is_b, is_c, is_s = (jitter & here & (op == index) for index in (BRIGHTNESS, CONTRAST, SATURATION))
        own = ops.where(is_b, factors[0], ops.where(is_c, factors[1], ops.where(is_s, factors[2], one)))
        return blend(x, own, ops.where(is_c, 1.0 - factors[1], zero), ops.where(is_s, 1.0 - factors[2], zero))

    for position in (0, 1, 2):  # the hue is at position 3 at the latest
        x = blend_at(x, position, before_hue=True)
    delta = ops.where(jitter, hue, zero)
    x = ops.where(_per_image(delta != 0.0), adjust_hue(x, delta), x)
    for position in (1, 2, 3):  # and at position 0 at the earliest
        x = blend_at(x, position, before_hue=False)
    return x


def apply_view(images_uint8, params, spec: ViewSpec):
    """The view of a uint8 NHWC batch with dense per-image ``params``: float32 (N, size, size, 3).

    crop -> flip -> colour jitter -> grayscale -> blur -> solarize -> normalise (if the spec has
    one), each image with its own row of ``params`` (:func:`dense_params` of the ``ViewParams``
    drawn for ``spec``). Ops the spec lacks are left out of the graph.
    """
    x = to_float(images_uint8)
    params = ops.cast(params, "float32")
    boxes = params[:, _COLUMN["top"] : _COLUMN["width"] + 1]
    x = resized_crop(x, boxes, spec.crop.size, column(params, "flip"))
    if spec.jitter is not None:
        x = _colour_jitter(x, params)
    if spec.grayscale is not None:
        gray = column(params, "grayscale")
        x = blend(x, 1.0 - gray, ops.zeros_like(gray), gray)
    if spec.blur is not None:
        fires = column(params, "blur") > 0
        sigma = ops.where(fires, column(params, "blur_sigma"), 1.0)  # any sigma > 0 where unused
        x = ops.where(_per_image(fires), gaussian_blur(x, sigma, spec.blur.kernel_size), x)
    if spec.solarize is not None:
        x = solarize(x, ops.where(column(params, "solarize") > 0, spec.solarize.threshold, 2.0))
    if spec.normalize is not None:
        x = normalize(x, spec.normalize.mean, spec.normalize.std)
    return x


# --------------------------------------------------------------------------------------------------
# Drawing the parameters in the graph: common.augment.sample_view_params with keras.random
# --------------------------------------------------------------------------------------------------
def _crop_boxes(spec: ViewSpec, n: int, image_hw: tuple[int, int], seed):
    """(N, 4) boxes as torchvision's ``RandomResizedCrop.get_params`` (and the NumPy sampler).

    Up to 10 attempts per image, all drawn at once: area fraction ~ U(scale), log aspect ~ U(log
    ratio), w = round(sqrt(A a r)), h = round(sqrt(A a / r)) (half to even); the first attempt that
    fits wins (``argmax`` of the fit mask), then top ~ U{0..H-h}, left ~ U{0..W-w}; the central crop
    with the aspect ratio clamped to the range where no attempt fits.
    """
    height, width = image_hw
    scale, ratio = spec.crop.scale, spec.crop.ratio
    shape = (n, CROP_ATTEMPTS)
    area = height * width * keras.random.uniform(shape, scale[0], scale[1], seed=seed)
    aspect = ops.exp(keras.random.uniform(shape, math.log(ratio[0]), math.log(ratio[1]), seed=seed))
    w = ops.round(ops.sqrt(area * aspect))
    h = ops.round(ops.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ops.argmax(ops.cast(fits, "int32"), axis=1)[:, None]
    w = ops.take_along_axis(w, first, axis=1)[:, 0]
    h = ops.take_along_axis(h, first, axis=1)[:, 0]
    found = ops.any(fits, axis=1)
    in_ratio = width / height
    fallback_h, fallback_w = height, width
    if in_ratio < min(ratio):
        fallback_h = round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w = round(height * max(ratio))
    h = ops.where(found, h, float(fallback_h))
    w = ops.where(found, w, float(fallback_w))

    def offset(room):  # U{0..room} where found, room // 2 otherwise
        u = keras.random.uniform((n,), seed=seed)
        drawn = ops.minimum(ops.floor(u * (room + 1.0)), room)
        return ops.where(found, drawn, ops.floor(room / 2.0))

    return ops.stack([offset(height - h), offset(width - w), h, w], axis=1)


def sample_params(spec: ViewSpec, n: int, image_hw: tuple[int, int], seed):
    """Dense parameters (N, len(PARAM_COLUMNS)) of ``n`` views drawn with ``keras.random``.

    The distributions of ``common.augment.sample_view_params`` (the package docstring): each op
    fires with its probability (``u < p``), jitter factors ~ U[max(0, 1 - s), 1 + s] and hue ~
    U[-h, h] (neutral where the jitter does not fire or a strength is 0), a uniform random order of
    the four adjustments per image (``argsort`` of uniforms) when ``random_order``, blur sigma ~
    U(sigma range). ``seed`` is a ``keras.random.SeedGenerator`` (or an int for a one-off draw:
    the generator it seeds, since every ``keras.random`` call with the same int draws the same
    numbers, which would tie the ops' coins to each other).
    """
    if isinstance(seed, int):
        seed = keras.random.SeedGenerator(seed)

    def fires(op):
        if op is None:
            return ops.zeros((n,))
        return ops.cast(keras.random.uniform((n,), seed=seed) < op.p, "float32")

    def factor(strength: float, fired):
        if strength == 0.0:
            return ops.ones((n,))
        drawn = keras.random.uniform((n,), max(0.0, 1.0 - strength), 1.0 + strength, seed=seed)
        return ops.where(fired > 0, drawn, 1.0)

    boxes = _crop_boxes(spec, n, image_hw, seed)
    flip = fires(spec.flip)
    jitter = fires(spec.jitter)
    cj = spec.jitter
    if cj is None:
        jitter_factors = [ops.ones((n,))] * 3 + [ops.zeros((n,))]
        order = ops.tile(ops.arange(4, dtype="float32")[None, :], (n, 1))
    else:
        jitter_factors = [factor(cj.brightness, jitter), factor(cj.contrast, jitter),
                          factor(cj.saturation, jitter)]
        hue = keras.random.uniform((n,), -cj.hue, cj.hue, seed=seed) if cj.hue > 0 else ops.zeros((n,))
        jitter_factors.append(ops.where(jitter > 0, hue, 0.0))
        if cj.random_order:
            order = ops.cast(ops.argsort(keras.random.uniform((n, 4), seed=seed), axis=1), "float32")
        else:
            order = ops.tile(ops.arange(4, dtype="float32")[None, :], (n, 1))
    grayscale = fires(spec.grayscale)
    blur = fires(spec.blur)
    if spec.blur is None:
        sigma = ops.zeros((n,))
    else:
        sigma = ops.where(blur > 0, keras.random.uniform((n,), *spec.blur.sigma, seed=seed), 0.0)
    solar = fires(spec.solarize)
    columns = [flip, jitter, *jitter_factors]
    return ops.concatenate(
        [boxes, ops.stack(columns, axis=1), order, ops.stack([grayscale, blur, sigma, solar], axis=1)],
        axis=1,
    )


# --------------------------------------------------------------------------------------------------
# Keras layers
# --------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable("keras_byol")
class ViewLayer(keras.layers.Layer):
    """``call(images_uint8, params)``: the view of ``spec`` with given dense parameters.

    ``compiled`` (PyTorch backend only): run the view compiled by ``torch.compile``
    (``keras_byol/torch_views.py`` says why); TensorFlow and JAX compile it with the training step.
    """

    def __init__(self, spec: ViewSpec, compiled: bool = False, **kwargs):
        super().__init__(**kwargs)
        if compiled and keras.backend.backend() != "torch":
            raise ValueError("compiled views are for the PyTorch backend; TensorFlow and JAX compile "
                             "the views with the training step")
        self.spec, self.compiled = spec, compiled
        if compiled:
            from keras_byol.torch_views import compiled_view  # imports torch: PyTorch backend only

            self.view = compiled_view(spec)  # (images_uint8, params) -> the view
        else:
            self.view = functools.partial(apply_view, spec=spec)

    def call(self, images_uint8, params):
        return self.view(images_uint8, params)

    def compute_output_shape(self, images_uint8_shape, params_shape):
        return (images_uint8_shape[0], self.spec.size, self.spec.size, 3)

    def get_config(self):
        return {**super().get_config(), "spec": self.spec.to_dict(), "compiled": self.compiled}

    @classmethod
    def from_config(cls, config):
        return cls(ViewSpec.from_dict(config.pop("spec")), **config)


@keras.saving.register_keras_serializable("keras_byol")
class RandomView(ViewLayer):
    """``call(images_uint8)``: a random view of ``spec``, parameters drawn in the graph.

    The layer owns a ``keras.random.SeedGenerator`` (``seed`` fixes its start), so every call draws
    new parameters, also inside ``jax.jit`` where the generator's state is threaded as a variable.
    """

    def __init__(self, spec: ViewSpec, seed: int | None = None, **kwargs):
        super().__init__(spec, **kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images_uint8):
        n = ops.shape(images_uint8)[0]  # a tensor on TensorFlow when the batch size is not static
        height, width = images_uint8.shape[1:3]
        params = sample_params(self.spec, n, (height, width), self.seed_generator)
        return self.view(images_uint8, params)

    def compute_output_shape(self, images_uint8_shape):
        return (images_uint8_shape[0], self.spec.size, self.spec.size, 3)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
