"""keras_byol/augment.py against the NumPy reference (common/augment), op by op and view by view.

Same parameters in, same pixels out (max abs diff <= 1/255, the project's tolerance): every op with
explicit per-image parameters, and whole views of the three presets with parameters drawn by
``common.augment.sample_view_params`` (the shared stream's path), in-process on TensorFlow and on
JAX and PyTorch through ``tests/keras_checks.py``. The in-graph sampler (``RandomView``) draws its
own parameters, so it is checked through its statistics against the NumPy sampler.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import common.augment as ref
from common.augment import (
    RandomResizedCrop,
    ViewSpec,
    preset,
    sample_view_params,
    without_normalize,
)
from keras_byol import augment as aug
from tests.augment_images import distinct_presets, sample_images
from tests.draws import jitter_order_p_value, uniform_p_value
from tests.keras_checks import EVERY_BACKEND, section

TOL = 1 / 255
N, SIZE = 12, 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(N, SIZE)


def floats(images_uint8: np.ndarray):
    return aug.to_float(images_uint8)


def numpy(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def reference_batch(images_nhwc: np.ndarray, op, *per_image_args) -> np.ndarray:
    """Apply a reference op image by image (float64), the i-th of each argument to image i."""
    return np.stack([op(ref.to_float(img), *(a[i] for a in per_image_args))
                     for i, img in enumerate(images_nhwc)])


def max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


def all_on(spec: ViewSpec) -> ViewSpec:
    """The spec with every probabilistic op that it has made certain (p = 1), so each one fires."""
    certain = {name: dataclasses.replace(getattr(spec, name), p=1.0)
               for name in ("flip", "jitter", "grayscale", "blur", "solarize")
               if getattr(spec, name) is not None}
    return dataclasses.replace(spec, **certain)


# ---------------------------------------------------------------------------------------------
# Op by op
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_size", [32, 20, 45])
def test_resized_crop_and_flip_match_reference(images, out_size):
    spec = ViewSpec(crop=RandomResizedCrop(SIZE, scale=(0.08, 1.0)))
    boxes = sample_view_params(spec, N, (SIZE, SIZE), np.random.default_rng(out_size)).crop_box
    boxes[0] = boxes[1] = (0, 0, SIZE, SIZE)  # whole image
    boxes[2] = boxes[3] = (9, 11, 5, 7)  # small interior box: the clamp must be at the box edge
    flip = (np.arange(N) % 2).astype(np.float32)
    got = numpy(aug.resized_crop(floats(images), boxes.astype(np.float32), out_size, flip))
    want = reference_batch(images, lambda img, box: ref.resized_crop(img, box, out_size), boxes)
    want[flip > 0] = want[flip > 0, :, ::-1]
    assert max_diff(got, want) <= TOL
    if out_size == SIZE:  # identity box, identity resize; and its mirror image
        np.testing.assert_allclose(got[0], images[0] / 255, atol=1e-6)
        np.testing.assert_allclose(got[1], ref.hflip(images[1] / 255), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("brightness", 0.2, 1.8), ("contrast", 0.2, 1.8), ("saturation", 0.0, 2.0), ("hue", -0.5, 0.5)],
)
def test_colour_op_matches_reference(images, name, low, high):
    factors = np.random.default_rng(len(name)).uniform(low, high, size=N)
    got = numpy(getattr(aug, f"adjust_{name}")(floats(images), factors.astype(np.float32)))
    want = reference_batch(images, getattr(ref, f"adjust_{name}"), factors)
    assert max_diff(got, want) <= TOL
    assert max_diff(want, images / 255) > 0.05  # the op really changed the images


def test_grayscale_matches_reference(images):
    assert max_diff(numpy(aug.to_grayscale(floats(images))),
                    reference_batch(images, ref.to_grayscale)) <= 1e-6


def test_one_blend_runs_a_different_colour_op_on_each_image(images):
    """Per-image weights: image i gets brightness, contrast, saturation, grayscale or nothing."""
    f = np.random.default_rng(5).uniform(0.2, 1.8, size=N)
    kind = np.arange(N) % 5
    own = np.where(kind < 3, f, np.where(kind == 3, 0.0, 1.0))
    of_mean = np.where(kind == 1, 1 - f, 0.0)
    of_luma = np.where(kind == 2, 1 - f, np.where(kind == 3, 1.0, 0.0))
    got = numpy(aug.blend(floats(images), *(w.astype(np.float32) for w in (own, of_mean, of_luma))))
    reference_ops = [ref.adjust_brightness, ref.adjust_contrast, ref.adjust_saturation,
                     lambda img, _: ref.to_grayscale(img), lambda img, _: img]
    want = reference_batch(images, lambda img, i: reference_ops[kind[i]](img, f[i]), np.arange(N))
    assert max_diff(got, want) <= TOL
    np.testing.assert_array_equal(got[kind == 4], images[kind == 4] / np.float32(255))


@pytest.mark.parametrize("kernel_size", [3, 9])
def test_gaussian_blur_matches_reference(images, kernel_size):
    sigma = np.random.default_rng(kernel_size).uniform(0.1, 2.0, size=N)
    kernels = numpy(aug.gaussian_kernel1d(sigma.astype(np.float32), kernel_size))
    for s, kernel in zip(sigma, kernels, strict=True):
        np.testing.assert_allclose(kernel, ref.gaussian_kernel1d(s, kernel_size), atol=1e-6)
    got = numpy(aug.gaussian_blur(floats(images), sigma.astype(np.float32), kernel_size))
    want = reference_batch(images, lambda img, s: ref.gaussian_blur(img, s, kernel_size), sigma)
    assert max_diff(got, want) <= TOL
    assert max_diff(want, images / 255) > 0.1


def test_solarize_really_changes_pixels(images):
    x = floats(images)
    thresholds = np.array([0.5, 2.0] * (N // 2), np.float32)  # 2: never reached
    got = numpy(aug.solarize(x, thresholds))
    want = reference_batch(images, lambda img, t: ref.solarize(img, min(t, 1.0)) if t <= 1 else img,
                           thresholds)
    assert max_diff(got, want) <= 1e-6
    bright = images[0::2] / 255 >= 0.5
    assert bright.mean() > 0.3  # so the check below is not vacuous
    np.testing.assert_allclose(got[0::2][bright], 1 - images[0::2][bright] / 255, atol=1e-6)
    np.testing.assert_array_equal(got[1::2], numpy(x)[1::2])


def test_normalize_matches_reference(images):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    got = numpy(aug.normalize(floats(images), mean, std))
    assert max_diff(got, reference_batch(images, lambda img: ref.normalize(img, mean, std))) <= 1e-5


def test_dense_params_hold_every_field():
    spec = preset("byol", 40).view2
    params = sample_view_params(spec, 64, (48, 40), np.random.default_rng(0))
    dense = aug.dense_params(params)
    assert dense.shape == (64, len(aug.PARAM_COLUMNS)) and dense.dtype == np.float32
    np.testing.assert_array_equal(dense[:, :4], params.crop_box)
    np.testing.assert_array_equal(dense[:, 10:14], params.jitter_order)
    for name in ("flip", "jitter", "brightness", "hue", "grayscale", "blur", "blur_sigma", "solarize"):
        np.testing.assert_allclose(numpy(aug.column(dense, name)), getattr(params, name), rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# Whole views
# ---------------------------------------------------------------------------------------------
VIEW_CASES = [(name, size, view, on) for size in (32, 40) for name in distinct_presets(size)
              for view in (1, 2) for on in (False, True)]


@pytest.mark.parametrize(("name", "size", "view", "all_ops"), VIEW_CASES)
def test_whole_view_matches_reference(images, name, size, view, all_ops):
    """Random order of the jitter included; ``all_ops``: every op of the view fires on every image."""
    spec = without_normalize(preset(name, size)).views[view - 1]
    if all_ops:
        spec = all_on(spec)
    params = sample_view_params(spec, N, (SIZE, SIZE), np.random.default_rng(size + view))
    if all_ops:  # the hue at each of the four positions somewhere: the order is really tested
        hue_position = np.argmax(params.jitter_order == aug.HUE, axis=1)
        assert set(hue_position.tolist()) == {0, 1, 2, 3}
    got = numpy(aug.apply_view(images, aug.dense_params(params), spec))
    assert max_diff(got, ref.apply_view_batch(images, params, spec)) <= TOL


def test_normalised_view_matches_reference(images):
    spec = all_on(preset("byol", 40).view2)
    params = sample_view_params(spec, N, (SIZE, SIZE), np.random.default_rng(0))
    got = numpy(aug.apply_view(images, aug.dense_params(params), spec))
    assert max_diff(got, ref.apply_view_batch(images, params, spec)) <= TOL / min(spec.normalize.std)


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_whole_views_match_reference_on_every_backend(backend):
    result = section(backend, "augment")
    assert len(result) == 8
    assert all(error <= TOL for error in result.values()), result  # (max() would pass over a NaN)


def test_view_compiles_under_xla(images):
    """Every op of a view, compiled by XLA as TensorFlow's ``fit`` does (``jit_compile="auto"``).

    This caught a hue that compared ``max == r`` after a fused blend: XLA evaluated the blend twice
    with different rounding, no channel equalled the max, and pixels moved by up to half the range.
    """
    spec = all_on(preset("byol", 40).view2)
    params = aug.dense_params(sample_view_params(spec, N, (SIZE, SIZE), np.random.default_rng(1)))
    compiled = tf.function(lambda x, p: aug.apply_view(x, p, spec), jit_compile=True)
    eager = numpy(aug.apply_view(images, params, spec))
    assert max_diff(numpy(compiled(images, params)), eager) <= 1e-5


# ---------------------------------------------------------------------------------------------
# Parameters drawn in the graph (RandomView)
# ---------------------------------------------------------------------------------------------
def _drawn(spec: ViewSpec, n: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    return numpy(aug.sample_params(spec, n, hw, keras.random.SeedGenerator(seed)))


def test_an_int_seed_draws_each_parameter_independently_and_again_the_same():
    spec = preset("byol", 40).view1  # flip p 0.5, jitter p 0.8, grayscale p 0.2, blur p 1.0
    drawn = numpy(aug.sample_params(spec, 200, (48, 40), seed=3))
    flip, jitter, grayscale = (drawn[:, aug.PARAM_COLUMNS.index(name)]
                               for name in ("flip", "jitter", "grayscale"))
    # One uniform for every coin would make each op with a lower probability fire only where the
    # others with higher ones do (flip only where jitter fires, grayscale only where flip does).
    assert np.any(flip > jitter) and np.any(grayscale > flip)
    np.testing.assert_array_equal(numpy(aug.sample_params(spec, 200, (48, 40), seed=3)), drawn)


@pytest.mark.parametrize("hw", [(48, 40), (16, 40)])  # (16, 40): wide, the central fallback too
def test_sampled_crops_follow_torchvision_s_distribution(hw):
    """A coarse check against the NumPy sampler's draws (quantiles within 0.06); the exact test of
    the crops' sizes and positions, with planted bugs it must reject, is the cross-framework one
    (tests/cross_framework/test_augment.py, every Keras backend)."""
    spec = preset("byol", 40).view2
    n = 4000
    ours = _drawn(spec, n, hw, seed=0)[:, :4]
    theirs = sample_view_params(spec, n, hw, np.random.default_rng(0)).crop_box.astype(np.float64)
    height, width = hw
    assert np.all(ours == np.round(ours)) and np.all(ours[:, 2:] >= 1)
    assert np.all(ours[:, 0] + ours[:, 2] <= height) and np.all(ours[:, 1] + ours[:, 3] <= width)
    for statistic in (lambda b: b[:, 2] * b[:, 3] / (height * width),  # area fraction
                      lambda b: np.log(b[:, 3] / b[:, 2]),  # log aspect ratio
                      lambda b: (b[:, 0] + b[:, 2] / 2) / height):  # box centre row
        a, b = statistic(ours), statistic(theirs)
        assert np.max(np.abs(np.quantile(a, np.linspace(0.05, 0.95, 19))
                             - np.quantile(b, np.linspace(0.05, 0.95, 19)))) < 0.06


def _frequency(column: np.ndarray, expected: float, n: int) -> None:
    tolerance = 4 * np.sqrt(max(expected * (1 - expected), 1e-12) / n)
    assert abs(column.mean() - expected) <= tolerance + 1e-12


@pytest.mark.parametrize("view", [1, 2])
def test_sampled_ops_fire_with_the_spec_s_probabilities(view):
    """BYOL's asymmetric pair at 40 px: blur p 1.0 / 0.1, solarize p 0 / 0.2."""
    spec = preset("byol", 40).views[view - 1]
    n = 4000
    d = _drawn(spec, n, (48, 40), seed=view)
    col = {name: d[:, i] for i, name in enumerate(aug.PARAM_COLUMNS)}
    _frequency(col["flip"], 0.5, n)
    _frequency(col["jitter"], 0.8, n)
    _frequency(col["grayscale"], 0.2, n)
    _frequency(col["blur"], (1.0, 0.1)[view - 1], n)
    _frequency(col["solarize"], (0.0, 0.2)[view - 1], n)
    jitter, blur = col["jitter"] > 0, col["blur"] > 0
    cj = spec.jitter
    for name, strength in (("brightness", cj.brightness), ("contrast", cj.contrast),
                           ("saturation", cj.saturation)):
        assert np.all(col[name][~jitter] == 1.0)
        drawn = col[name][jitter]
        assert drawn.min() >= 1 - strength and drawn.max() <= 1 + strength
        assert drawn.mean() == pytest.approx(1.0, abs=4 * strength / np.sqrt(3 * jitter.sum()))
    assert np.all(col["hue"][~jitter] == 0.0) and np.all(col["blur_sigma"][~blur] == 0.0)
    # seeded draws against their uniform ranges; a correct sampler fails at 1e-4 with that probability
    assert uniform_p_value(col["hue"][jitter], -cj.hue, cj.hue) >= 1e-4
    assert uniform_p_value(col["blur_sigma"][blur], *spec.blur.sigma) >= 1e-4
    order = d[:, 10:14]
    np.testing.assert_array_equal(np.sort(order, axis=1), np.tile(np.arange(4), (n, 1)))  # every row
    assert jitter_order_p_value(order[jitter]) >= 1e-4  # all 24 orders alike


def test_random_view_draws_new_parameters_every_call():
    spec = without_normalize(preset("byol", 40)).view2
    layer = aug.RandomView(spec, seed=3)
    batch = np.random.default_rng(0).integers(0, 256, (4, 48, 40, 3), dtype=np.uint8)
    first, second = numpy(layer(batch)), numpy(layer(batch))
    assert first.shape == (4, 40, 40, 3) and not np.allclose(first, second)
    again = numpy(aug.RandomView(spec, seed=3)(batch))
    np.testing.assert_array_equal(first, again)  # the seed fixes the generator's start
    assert aug.RandomView.from_config(layer.get_config()).spec == spec


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_compiled_views_on_torch_and_refused_elsewhere(backend):
    """``--compile-views``: torch.compile of the same ops gives the same views (PyTorch backend);
    TensorFlow and JAX refuse the flag, their step compiles the views already."""
    result = section(backend, "compiled_view")
    if backend == "torch":
        assert result["hue_fired"] > 0  # the costly op ran, compiled
        assert result["vs_reference"] <= TOL and result["vs_eager"] <= 1e-5, result
    else:
        assert "PyTorch backend" in result["refused"]


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_random_view_runs_compiled_on_every_backend(backend):
    """Inside ``predict`` (jax.jit, tf.function): valid views and fresh parameters every batch."""
    result = section(backend, "random_view")
    assert result["shape"] == [8, 40, 40, 3] and result["finite"] and result["in_range"]
    assert result["batches_differ"] > 0.1
