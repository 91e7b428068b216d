"""tensorflow_moco/augment.py against the NumPy reference (common/augment): same parameters in, same
pixels out (max abs diff <= 1/255), op by op and for whole views, eagerly and compiled with XLA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import common.augment as ref
import tests.tf_setup  # noqa: F401  (splits the CPU for MirroredStrategy before any TF op runs)
from common.augment import GaussianBlur, RandomResizedCrop, ViewSpec, preset, sample_view_params
from common.augment.dense import BLEND_WEIGHTS, SOLARIZE_NEVER, dense_view_params
from tensorflow_moco import augment as aug
from tests.augment_images import distinct_presets, sample_images

TOL = 1 / 255  # the project's cross-framework tolerance
N, SIZE = 12, 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(N, SIZE)


def floats(images_uint8: np.ndarray) -> tf.Tensor:
    return aug.to_float(tf.constant(images_uint8))


def reference_batch(images_uint8: np.ndarray, op, *per_image_args) -> np.ndarray:
    """Apply a reference op image by image (float64), the i-th of each argument to image i."""
    return np.stack([op(ref.to_float(img), *(a[i] for a in per_image_args))
                     for i, img in enumerate(images_uint8)])


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


def all_on(spec: ViewSpec) -> ViewSpec:
    """The spec with every probabilistic op that it has made certain (p = 1), so each one fires."""
    ops = {name: dataclasses.replace(getattr(spec, name), p=1.0)
           for name in ("flip", "jitter", "grayscale", "blur", "solarize")
           if getattr(spec, name) is not None}
    return dataclasses.replace(spec, **ops)


# ---------------------------------------------------------------------------------------------
# Op by op
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_size", [32, 20, 45])
def test_resized_crop_and_flip_match_reference(images, out_size):
    spec = ViewSpec(crop=RandomResizedCrop(SIZE, scale=(0.08, 1.0)))
    boxes = sample_view_params(spec, N, (SIZE, SIZE), np.random.default_rng(out_size)).crop_box
    boxes[0] = boxes[1] = (0, 0, SIZE, SIZE)  # whole image
    boxes[2] = boxes[3] = (9, 11, 5, 7)  # small interior box: the clamp must be at the box edge
    flip = np.arange(N) % 2 == 1
    got = aug.resized_crop(floats(images), tf.constant(boxes, tf.float32), out_size, flip).numpy()
    want = reference_batch(images, lambda img, box: ref.resized_crop(img, box, out_size), boxes)
    want[flip] = want[flip, :, ::-1]
    assert max_diff(got, want) <= TOL
    if out_size == SIZE:  # identity box, identity resize; and its mirror image
        np.testing.assert_allclose(got[0], images[0] / 255, atol=1e-6)
        np.testing.assert_allclose(got[1], ref.hflip(images[1] / 255), atol=1e-6)


def test_crop_and_resize_samples_differently():
    """Why resized_crop gathers: tf.image.crop_and_resize spaces its samples corner to corner."""
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(1, 8, 8, 3)
    box = np.array([[2, 2, 4, 4]])
    ours = aug.resized_crop(floats(image), tf.constant(box, tf.float32), 8, [False]).numpy()
    assert max_diff(ours[0], ref.resized_crop(ref.to_float(image[0]), box[0], 8)) < 1e-6
    normalised = tf.constant([[2 / 7, 2 / 7, 5 / 7, 5 / 7]])  # the same pixels, y1 x1 y2 x2
    theirs = tf.image.crop_and_resize(floats(image), normalised, [0], [8, 8]).numpy()
    assert max_diff(ours, theirs) > 0.01


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("brightness", 0.2, 1.8), ("contrast", 0.2, 1.8), ("saturation", 0.0, 2.0)],
)
def test_blend_ops_match_reference(images, name, low, high):
    factors = np.random.default_rng(len(name)).uniform(low, high, size=N)
    weights = np.stack(BLEND_WEIGHTS[name](factors), axis=1)
    got = aug.blend(floats(images), tf.constant(weights, tf.float32)).numpy()
    want = reference_batch(images, getattr(ref, f"adjust_{name}"), factors)
    assert max_diff(got, want) <= TOL
    assert max_diff(want, images / 255) > 0.05  # the op really changed the images


def test_hue_matches_reference_and_zero_is_the_identity(images):
    deltas = np.random.default_rng(3).uniform(-0.5, 0.5, size=N)
    got = aug.adjust_hue(floats(images), tf.constant(deltas, tf.float32)).numpy()
    assert max_diff(got, reference_batch(images, ref.adjust_hue, deltas)) <= TOL
    unchanged = aug.adjust_hue(floats(images), tf.zeros(N)).numpy()
    assert max_diff(unchanged, images / 255) < 1e-6


def test_grayscale_is_the_blend_0_0_1(images):
    weights = tf.constant([[0.0, 0.0, 1.0]] * N)
    got = aug.blend(floats(images), weights).numpy()
    assert max_diff(got, reference_batch(images, ref.to_grayscale)) <= 1e-6


@pytest.mark.parametrize("kernel_size", [3, 9])
def test_gaussian_blur_matches_reference_and_skips_images(images, kernel_size):
    sigma = np.random.default_rng(kernel_size).uniform(0.1, 2.0, size=N)
    kernels = aug.gaussian_kernel1d(tf.constant(sigma, tf.float32), kernel_size).numpy()
    for s, kernel in zip(sigma, kernels, strict=True):
        np.testing.assert_allclose(kernel, ref.gaussian_kernel1d(s, kernel_size), atol=1e-6)
    apply = np.arange(N) % 3 != 0
    got = aug.gaussian_blur(floats(images), tf.constant(sigma, tf.float32), kernel_size, apply).numpy()
    want = reference_batch(images, lambda img, s: ref.gaussian_blur(img, s, kernel_size), sigma)
    assert max_diff(got[apply], want[apply]) <= TOL
    assert np.array_equal(got[~apply], images[~apply] / np.float32(255))  # the one-tap kernel
    assert max_diff(want, images / 255) > 0.1


def test_solarize_per_image_threshold(images):
    x = floats(images)
    thresholds = np.where(np.arange(N) % 2 == 0, 0.5, SOLARIZE_NEVER)
    got = aug.solarize(x, thresholds).numpy()
    want = reference_batch(images, lambda img: ref.solarize(img, 0.5))
    assert max_diff(got[0::2], want[0::2]) < 1e-6
    assert np.array_equal(got[1::2], x.numpy()[1::2])
    assert np.mean(x.numpy() >= 0.5) > 0.3  # so the check is not vacuous


def test_normalize_matches_reference(images):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    got = aug.normalize(floats(images), mean, std).numpy()
    assert max_diff(got, reference_batch(images, lambda img: ref.normalize(img, mean, std))) <= 1e-5


def test_uint8_nhwc_input_is_required():
    with pytest.raises(ValueError, match="uint8 NHWC"):
        aug.to_float(tf.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="uint8 NHWC"):
        aug.to_float(tf.zeros((2, 3, 8, 8), tf.uint8))


# ---------------------------------------------------------------------------------------------
# Dense parameters and whole views
# ---------------------------------------------------------------------------------------------
def test_dense_params_encode_jitter_order_and_neutral_images():
    spec = all_on(preset("byol", 32).view2)
    params = sample_view_params(spec, 64, (32, 32), np.random.default_rng(1))
    params.jitter[:8] = False
    dense = dense_view_params(params)
    shapes = {name: value.shape for name, value in dense.items()}
    assert shapes == {name: tuple(64 if d is None else d for d in s.shape)
                      for name, s in aug.dense_params_signature().items()}
    assert np.all(dense["blend"][:8, :4] == (1.0, 0.0, 0.0)) and np.all(dense["hue"][:8] == 0)
    for i in range(8, 64):  # the hue sits where the image's order puts it
        position = int(np.flatnonzero(params.jitter_order[i] == 3)[0])
        assert dense["hue"][i, position] == np.float32(params.hue[i])
        assert dense["hue_position"][i] == position
        assert np.all(dense["blend"][i, position] == (1.0, 0.0, 0.0))
        brightness_at = int(np.flatnonzero(params.jitter_order[i] == 0)[0])
        assert dense["blend"][i, brightness_at, 0] == np.float32(params.brightness[i])
    assert np.all(dense["blend"][:, 4] == (0.0, 0.0, 1.0))  # grayscale forced on


VIEW_CASES = [(name, 32, view, on) for name in distinct_presets(32)
              for view in (1, 2) for on in (False, True)] + [("mocov2", 96, 1, True),
                                                             ("byol", 96, 2, True)]


@pytest.mark.parametrize(("name", "size", "view", "force_all"), VIEW_CASES)
def test_whole_view_matches_reference(name, size, view, force_all):
    spec = preset(name, size).views[view - 1]
    if force_all:
        spec = all_on(spec)
    rng = np.random.default_rng(size + view)
    hw = (size + 8, size + 4)
    images = rng.integers(0, 256, size=(8, *hw, 3), dtype=np.uint8)
    params = sample_view_params(spec, len(images), hw, rng)
    want = ref.apply_view_batch(images, params, spec)
    got = aug.apply_view(tf.constant(images), dense_view_params(params), spec)
    assert got.dtype == tf.float32 and got.shape == (8, size, size, 3)
    assert max_diff(got.numpy(), want) <= TOL


def test_the_one_hue_pass_comes_between_each_image_s_own_blends():
    """The colour jitter runs the hue once, after the blends its order puts before it: every one of
    the four positions of the hue, each jitter op firing, against the reference's op-by-op order."""
    spec = all_on(preset("mocov2", 32).view1)
    rng = np.random.default_rng(5)
    images = sample_images(32, 32)
    params = sample_view_params(spec, len(images), (32, 32), rng)
    dense = dense_view_params(params)
    assert set(dense["hue_position"].tolist()) == {0, 1, 2, 3}
    assert np.all(dense["hue"][np.arange(32), dense["hue_position"]] != 0)
    want = ref.apply_view_batch(images, params, spec)
    assert max_diff(aug.apply_view(tf.constant(images), dense, spec).numpy(), want) <= TOL


def test_a_view_is_one_xla_graph_with_static_shapes():
    """The whole view compiles with XLA (no data-dependent shapes) and still equals the reference."""
    spec = dataclasses.replace(all_on(preset("byol", 16).view2),
                               blur=GaussianBlur(0.5, (0.1, 2.0), kernel_size=3))
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(6, 20, 18, 3), dtype=np.uint8)
    params = sample_view_params(spec, 6, (20, 18), rng)
    compiled = tf.function(lambda x, p: aug.apply_view(x, p, spec), jit_compile=True)
    got = compiled(tf.constant(images), dense_view_params(params))
    assert max_diff(got.numpy(), ref.apply_view_batch(images, params, spec)) <= TOL
