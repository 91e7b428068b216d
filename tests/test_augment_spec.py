"""Augmentation specs and presets (common/augment/spec.py, presets.py): values, JSON, validation."""

import dataclasses

import numpy as np
import pytest

from common.augment import presets
from common.augment.presets import PRESETS, preset, without_normalize
from common.augment.spec import (
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

ALL_PRESETS = [(name, size) for name in PRESETS for size in (32, 96, 224)]


# ---------------------------------------------------------------- specs


def test_kernel_size_rule_is_odd_and_about_a_tenth():
    assert [kernel_size_for(s) for s in (224, 96, 32, 19, 20)] == [23, 9, 3, 1, 3]
    for size in range(1, 600):
        k = kernel_size_for(size)
        assert k % 2 == 1 and abs(k - size / 10) <= 2
    with pytest.raises(InvalidSpecError, match="positive int"):
        kernel_size_for(0)


@pytest.mark.parametrize(("name", "size"), ALL_PRESETS)
def test_json_round_trip_gives_an_equal_spec(name, size):
    pair = preset(name, size)
    assert PairSpec.from_json(pair.to_json()) == pair
    assert PairSpec.from_dict(pair.to_dict()) == pair
    assert ViewSpec.from_json(pair.view2.to_json()) == pair.view2
    assert isinstance(pair.to_dict()["view1"]["crop"]["scale"], list)  # plain JSON types


def test_sequences_are_stored_as_float_tuples():
    crop = RandomResizedCrop(32, scale=[0.2, 1], ratio=[1, 2])
    assert crop.scale == (0.2, 1.0) and crop.ratio == (1.0, 2.0)
    assert crop == RandomResizedCrop(32, scale=(0.2, 1.0), ratio=(1.0, 2.0))


def test_an_op_with_zero_probability_is_absent():
    view = ViewSpec(crop=RandomResizedCrop(8), flip=HorizontalFlip(0.0), solarize=Solarize(0))
    assert view.flip is None and view.solarize is None
    assert view == ViewSpec(crop=RandomResizedCrop(8))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RandomResizedCrop(0), "positive int"),
        (lambda: RandomResizedCrop(32, scale=(0.0, 1.0)), "0 < lo <= hi <= 1"),
        (lambda: RandomResizedCrop(32, scale=(0.5, 0.2)), "0 < lo <= hi <= 1"),
        (lambda: RandomResizedCrop(32, scale=(0.5, 1.5)), "0 < lo <= hi <= 1"),
        (lambda: RandomResizedCrop(32, scale=(0.5,)), "two finite numbers"),
        (lambda: RandomResizedCrop(32, ratio=(4 / 3, 3 / 4)), "0 < lo <= hi"),
        (lambda: RandomResizedCrop(32, interpolation="nearest"), "bilinear"),
        (lambda: HorizontalFlip(1.5), r"in \[0, 1\]"),
        (lambda: Grayscale(-0.1), r"in \[0, 1\]"),
        (lambda: ColorJitter(0.4, 0.4, 0.4, 0.6), r"hue must be \[0, 0.5\]"),
        (lambda: ColorJitter(-0.1, 0.4, 0.4, 0.1), "brightness must be >= 0"),
        (lambda: ColorJitter(0.4, 0.4, 0.4, 0.1, p=2), "probability"),
        (lambda: GaussianBlur(0.5, kernel_size=4), "positive odd int"),
        (lambda: GaussianBlur(0.5, (0.0, 2.0), kernel_size=3), "0 < lo <= hi"),
        (lambda: Solarize(0.2, threshold=128), "0..1 scale"),
        (lambda: Normalize((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)), "positive"),
        (lambda: Normalize((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)), "divide them by 255"),
        (lambda: Normalize((0.5, 0.5), (0.2, 0.2)), "three finite numbers"),
        (lambda: ViewSpec(crop=32), "RandomResizedCrop"),
        (lambda: ViewSpec(crop=RandomResizedCrop(8), blur=Solarize(0.5)), "GaussianBlur or None"),
        (lambda: PairSpec(ViewSpec(RandomResizedCrop(8)), ViewSpec(RandomResizedCrop(9))), "same size"),
    ],
)
def test_impossible_specs_raise_a_clear_value_error(build, message):
    with pytest.raises(InvalidSpecError, match=message):
        build()
    assert issubclass(InvalidSpecError, ValueError)


def test_solarize_threshold_hint_converts_from_0_255():
    """torchvision's uint8 RandomSolarize(t) inverts x >= t; (t - 0.5) / 255 inverts the same
    levels and lies on none of them, where t / 255 (0.502) lies on one: float rounding in a resize
    would then decide whether a pixel of that level flips."""
    with pytest.raises(InvalidSpecError, match=r"use 0\.5\)") as refused:
        Solarize(0.2, threshold=128)
    suggested = float(str(refused.value).split("use ")[1].split(")")[0])
    levels = np.arange(256)
    assert np.array_equal(levels / 255 >= suggested, levels >= 128)
    assert not np.isin(suggested * 255, levels)


def test_from_dict_and_from_json_reject_bad_input():
    with pytest.raises(InvalidSpecError, match="unknown field"):
        HorizontalFlip.from_dict({"p": 0.5, "prob": 0.5})
    with pytest.raises(InvalidSpecError, match="cannot build"):
        GaussianBlur.from_dict({"p": 0.5})  # kernel_size missing
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        PairSpec.from_json("{view1:")
    bad = preset("simclr", 32).to_dict()
    bad["view1"]["jitter"]["hue"] = 0.9
    with pytest.raises(InvalidSpecError, match="hue"):
        PairSpec.from_dict(bad)


# ---------------------------------------------------------------- presets


def test_simclr_imagenet_recipe():
    pair = preset("simclr", 224)
    assert pair.view1 == pair.view2
    v = pair.view1
    assert v.crop == RandomResizedCrop(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    assert v.flip == HorizontalFlip(0.5)
    assert v.jitter == ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8, random_order=True)
    assert v.grayscale == Grayscale(0.2)
    assert v.blur == GaussianBlur(0.5, (0.1, 2.0), kernel_size=23)
    assert v.solarize is None
    assert v.normalize == Normalize(presets.IMAGENET_MEAN, presets.IMAGENET_STD)
    assert preset("simclr", 96).view1.blur.kernel_size == 9


def test_simclr_cifar_recipe_is_half_strength_without_blur():
    v = preset("simclr", 32).view1
    assert v.jitter == ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    assert v.crop.scale == (0.08, 1.0) and v.grayscale == Grayscale(0.2)
    assert v.blur is None and v.solarize is None
    assert v.normalize == Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_mocov2_recipes():
    pair = preset("mocov2", 224)
    assert pair.view1 == pair.view2
    v = pair.view1
    assert v.crop.scale == (0.2, 1.0)
    assert v.jitter == ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    assert v.grayscale == Grayscale(0.2) and v.flip == HorizontalFlip(0.5)
    assert v.blur == GaussianBlur(0.5, (0.1, 2.0), kernel_size=23)
    small = preset("mocov2", 32).view1
    assert small.crop.scale == (0.08, 1.0) and small.blur is None
    assert small.jitter == v.jitter and small.grayscale == v.grayscale


def test_byol_recipes_are_asymmetric():
    v1, v2 = preset("byol", 224).views
    for v in (v1, v2):
        assert v.crop.scale == (0.08, 1.0)
        assert v.jitter == ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8)
        assert v.grayscale == Grayscale(0.2) and v.flip == HorizontalFlip(0.5)
    assert v1.blur == GaussianBlur(1.0, (0.1, 2.0), kernel_size=23) and v1.solarize is None
    assert v2.blur == GaussianBlur(0.1, (0.1, 2.0), kernel_size=23)
    assert v2.solarize == Solarize(0.2, threshold=0.5)
    s1, s2 = preset("byol", 32).views
    assert s1.blur is None and s2.blur is None
    assert s1.solarize is None and s2.solarize == Solarize(0.2, 0.5)


@pytest.mark.parametrize(("name", "size"), ALL_PRESETS)
def test_every_preset_has_the_requested_size(name, size):
    pair = preset(name, size)
    assert pair.view1.size == pair.view2.size == size


def test_normalisation_defaults_and_overrides():
    assert preset("byol", 64).view1.normalize.mean == presets.IMAGENET_MEAN
    custom = preset("mocov2", 32, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))
    assert custom.view1.normalize == Normalize((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    with pytest.raises(InvalidSpecError, match="both mean and std"):
        preset("mocov2", 32, mean=(0.1, 0.2, 0.3))
    plain = without_normalize(custom)
    assert plain.view1.normalize is None and plain.view2.normalize is None
    assert plain.view1 == dataclasses.replace(custom.view1, normalize=None)


def test_unknown_preset_and_bad_size_raise():
    with pytest.raises(InvalidSpecError, match="simclr"):
        preset("swav", 32)
    with pytest.raises(InvalidSpecError, match="positive int"):
        preset("simclr", 0)
    assert list(PRESETS) == ["simclr", "mocov2", "byol", "supervised"]
