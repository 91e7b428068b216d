"""Random view parameters (common/augment/sampler.py): rates, ranges, crop boxes, determinism."""

import math
import random

import numpy as np
import pytest

from common.augment.sampler import ViewParams, sample_crop_boxes, sample_view_params
from common.augment.spec import (
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    RandomResizedCrop,
    Solarize,
    ViewSpec,
)
from tests.draws import jitter_order_p_value

N = 20_000


def rate_ok(flags: np.ndarray, p: float) -> bool:
    """Observed rate within 5 standard errors of p (false alarm ~ 1e-6)."""
    se = math.sqrt(max(p * (1 - p), 1e-12) / len(flags))
    return abs(flags.mean() - p) <= 5 * se


SPEC = ViewSpec(
    crop=RandomResizedCrop(32, scale=(0.08, 1.0)),
    flip=HorizontalFlip(0.5),
    jitter=ColorJitter(0.4, 1.5, 0.2, 0.1, p=0.8),
    grayscale=Grayscale(0.2),
    blur=GaussianBlur(0.3, (0.1, 2.0), kernel_size=3),
    solarize=Solarize(0.1),
)


@pytest.fixture(scope="module")
def params() -> ViewParams:
    return sample_view_params(SPEC, N, (32, 40), np.random.default_rng(0))


def test_fields_have_documented_shapes_and_dtypes(params):
    assert len(params) == N
    assert params.crop_box.shape == (N, 4) and params.crop_box.dtype == np.int64
    assert params.jitter_order.shape == (N, 4) and params.jitter_order.dtype == np.int64
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        assert getattr(params, name).shape == (N,) and getattr(params, name).dtype == bool
    for name in ("brightness", "contrast", "saturation", "hue", "blur_sigma"):
        assert getattr(params, name).shape == (N,) and getattr(params, name).dtype == np.float64


@pytest.mark.parametrize(
    ("name", "p"), [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.3), ("solarize", 0.1)]
)
def test_each_op_fires_at_its_probability(params, name, p):
    assert rate_ok(getattr(params, name), p)


def test_firing_is_independent_between_ops(params):
    both = params.flip & params.grayscale
    assert rate_ok(both, 0.5 * 0.2)


def test_jitter_factors_lie_in_torchvision_ranges_and_are_neutral_when_off(params):
    on, off = params.jitter, ~params.jitter
    for name, lo, hi in [("brightness", 0.6, 1.4), ("contrast", 0.0, 2.5), ("saturation", 0.8, 1.2)]:
        f = getattr(params, name)[on]
        assert lo <= f.min() and f.max() <= hi
        # uniform: the extremes are reached and the mean is the centre of the range
        assert f.min() < lo + 0.01 * (hi - lo) and f.max() > hi - 0.01 * (hi - lo)
        assert abs(f.mean() - (lo + hi) / 2) < 5 * (hi - lo) / math.sqrt(12 * on.sum())
        assert np.all(getattr(params, name)[off] == 1.0)
    assert np.all(np.abs(params.hue[on]) <= 0.1) and params.hue[on].min() < -0.099
    assert np.all(params.hue[off] == 0.0)


def test_zero_strength_gives_neutral_factor():
    spec = ViewSpec(crop=RandomResizedCrop(8), jitter=ColorJitter(0.0, 0.5, 0.0, 0.0, p=1.0))
    p = sample_view_params(spec, 500, (8, 8), np.random.default_rng(1))
    assert np.all(p.brightness == 1.0) and np.all(p.saturation == 1.0) and np.all(p.hue == 0.0)
    assert np.all(p.jitter) and p.contrast.std() > 0.1


def test_jitter_order_is_a_uniform_random_permutation(params):
    assert np.all(np.sort(params.jitter_order, axis=1) == np.arange(4))  # every row, jittered or not
    # all 24 orders alike (seeded: a correct sampler fails at this level with probability 1e-4)
    assert jitter_order_p_value(params.jitter_order[params.jitter]) >= 1e-4
    cyclic = (np.arange(4) + np.random.default_rng(0).integers(0, 4, (4000, 1))) % 4
    assert jitter_order_p_value(cyclic) < 1e-4  # a random cyclic shift: each op as often at each place


def test_fixed_order_when_random_order_is_off():
    spec = ViewSpec(crop=RandomResizedCrop(8), jitter=ColorJitter(0.4, 0.4, 0.4, 0.1, random_order=False))
    p = sample_view_params(spec, 100, (8, 8), np.random.default_rng(2))
    assert np.all(p.jitter_order == [0, 1, 2, 3])


def test_blur_sigma_in_range_where_blurred_zero_elsewhere(params):
    s = params.blur_sigma[params.blur]
    assert 0.1 <= s.min() and s.max() <= 2.0 and abs(s.mean() - 1.05) < 0.03
    assert np.all(params.blur_sigma[~params.blur] == 0.0)


def test_absent_ops_never_fire_and_certain_ops_always_do():
    bare = sample_view_params(ViewSpec(crop=RandomResizedCrop(8)), 1000, (8, 8), np.random.default_rng(3))
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        assert not getattr(bare, name).any()
    certain = ViewSpec(crop=RandomResizedCrop(8), flip=HorizontalFlip(1.0), solarize=Solarize(1.0))
    p = sample_view_params(certain, 1000, (8, 8), np.random.default_rng(3))
    assert p.flip.all() and p.solarize.all()


# ---------------------------------------------------------------- crop boxes


def get_params_loop(height, width, scale, ratio, rnd: random.Random):
    """torchvision's RandomResizedCrop.get_params, written out per image with Python's random."""
    area = height * width
    for _ in range(10):
        target = area * rnd.uniform(*scale)
        aspect = math.exp(rnd.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def test_boxes_lie_inside_the_image_with_area_and_aspect_in_range(params):
    top, left, h, w = params.crop_box.T
    assert np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
    assert np.all((top + h <= 32) & (left + w <= 40))
    # rounding w and h moves area and aspect by at most about one pixel per side
    area = h * w / (32 * 40)
    assert area.min() >= 0.08 * 0.7 and area.max() <= 1.0
    aspect = w / h
    assert np.all(aspect >= 0.75 * (1 - 2 / h) - 1e-9) and np.all(aspect <= 4 / 3 * (1 + 2 / h) + 1e-9)


@pytest.mark.parametrize(
    ("hw", "scale", "ratio"),
    [((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)), ((24, 60), (0.2, 1.0), (3 / 4, 4 / 3))],
)
def test_box_distribution_matches_torchvision_algorithm(hw, scale, ratio):
    ours = sample_crop_boxes(N, hw, scale, ratio, np.random.default_rng(4)).astype(np.float64)
    rnd = random.Random(4)
    loop = np.array([get_params_loop(*hw, scale, ratio, rnd) for _ in range(N)], dtype=np.float64)
    se = np.sqrt(ours.var(axis=0) / N + loop.var(axis=0) / N)
    assert np.all(np.abs(ours.mean(axis=0) - loop.mean(axis=0)) <= 5 * se + 1e-9)
    assert np.all(np.abs(ours.std(axis=0) - loop.std(axis=0)) <= 0.05 * loop.std(axis=0) + 0.05)


@pytest.mark.parametrize(
    ("hw", "ratio", "want"),
    [
        ((10, 10), (3.0, 4.0), (3, 0, 3, 10)),  # too square for the ratio: h = round(10 / 3)
        ((30, 4), (0.5, 0.6), (11, 0, 8, 4)),  # too tall: h = round(4 / 0.5)
        ((4, 30), (0.5, 0.6), (0, 14, 4, 2)),  # too wide: w = round(4 * 0.6)
    ],
)
def test_fallback_is_the_clamped_central_crop(hw, ratio, want):
    # with scale >= 0.9 no box of that ratio fits, so all 10 attempts fail
    boxes = sample_crop_boxes(50, hw, (0.9, 1.0), ratio, np.random.default_rng(5))
    assert np.all(boxes == want)
    assert get_params_loop(*hw, (0.9, 1.0), ratio, random.Random(0)) == want


# ---------------------------------------------------------------- determinism, select, errors


def test_same_seed_same_params_different_seed_different():
    a = sample_view_params(SPEC, 64, (32, 32), np.random.default_rng(11))
    b = sample_view_params(SPEC, 64, (32, 32), np.random.default_rng(11))
    c = sample_view_params(SPEC, 64, (32, 32), np.random.default_rng(12))
    for name in vars(a):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.crop_box, c.crop_box)


def test_select_takes_the_same_rows_of_every_field(params):
    index = np.array([5, 0, 17])
    sub = params.select(index)
    assert len(sub) == 3
    for name in vars(params):
        np.testing.assert_array_equal(getattr(sub, name), getattr(params, name)[index])
    assert len(params.select(7)) == 1 and params.select(7).crop_box.shape == (1, 4)
    assert len(params.select(params.flip)) == params.flip.sum()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="non-negative int"):
        sample_view_params(SPEC, -1, (32, 32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="image_hw"):
        sample_view_params(SPEC, 4, (0, 32), np.random.default_rng(0))
    with pytest.raises(TypeError, match="ViewSpec"):
        sample_view_params({"crop": 32}, 4, (32, 32), np.random.default_rng(0))
