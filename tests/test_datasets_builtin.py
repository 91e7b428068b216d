"""The built-in datasets: digits (real, upscaled), shapes (procedural, nuisance-heavy), and the real
digits with nuisances: colordigits and placeddigits."""

import numpy as np
import pytest

from common import datasets
from common.datasets import colordigits, digits, shapes


def both_splits(name: str) -> dict:
    """``{"train": (images, labels), "test": (images, labels)}`` of a built-in data set."""
    return {split: datasets.load(name, split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def digit_splits():
    return both_splits("digits")


def test_digits_sizes_match_the_registry_and_split_is_stratified(digit_splits):
    info = datasets.info("digits")
    train_labels, test_labels = digit_splits["train"][1], digit_splits["test"][1]
    assert {split: len(labels) for split, (_, labels) in digit_splits.items()} == info.splits
    per_class = np.bincount(train_labels) + np.bincount(test_labels)
    np.testing.assert_array_equal(np.bincount(test_labels), per_class // 5)
    assert digit_splits["train"][0].shape == (1442, 32, 32, 3)
    assert digit_splits["train"][0].dtype == np.uint8 and train_labels.dtype == np.int64


def test_digits_are_grey_scaled_to_0_255_and_deterministic(digit_splits):
    images = digit_splits["test"][0]
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    assert images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(images, datasets.load("digits", "test")[0])


def test_bilinear_upscaling_matches_hand_computed_values():
    # 8 -> 32: output pixel i samples source position p = (i + 0.5) / 4 - 0.5, clamped to [0, 7]
    matrix = digits.bilinear_matrix(8, 32)
    np.testing.assert_allclose(matrix.sum(axis=1), 1)
    np.testing.assert_allclose(matrix[0, 0], 1)  # p = -0.375 clamps to pixel 0
    np.testing.assert_allclose(matrix[2, :2], [0.875, 0.125])  # p = 0.125
    np.testing.assert_allclose(matrix[5, :2], [0.125, 0.875])  # p = 0.875
    ink = np.zeros((1, 8, 8))
    ink[0, 3, 4] = 16  # one full-ink pixel at row 3, column 4
    image = digits.upscale_to_rgb(ink)[0, ..., 0]
    # rows 13, 14 sit at p = 2.875, 3.125 (weight 0.875 on row 3), row 12 at 2.625 (0.625);
    # columns 17, 18 at 3.875, 4.125 (0.875 on column 4), column 16 at 3.625 (0.625)
    assert image[13:15, 17:19].tolist() == [[195, 195], [195, 195]]  # 255 * 0.875 * 0.875
    assert image[12, 17] == 139 and image[13, 16] == 139  # 255 * 0.625 * 0.875 = 139.45
    assert image[10, 14] == 4  # row 10 and column 14 both weigh 0.125: 255 / 64 = 3.98
    assert image[9].sum() == 0 and image[:, 13].sum() == 0  # p = 1.875 / 2.875: no weight
    assert int(image.sum()) == pytest.approx(255 * 16, rel=0.01)  # bilinear keeps the total ink


def test_shapes_are_deterministic_balanced_and_registry_sized():
    info = datasets.info("shapes")
    train_images, train_labels = datasets.load("shapes", "train")
    test_images, test_labels = datasets.load("shapes", "test")
    assert len(train_labels) == info.splits["train"] and len(test_labels) == info.splits["test"]
    assert np.bincount(train_labels).tolist() == [500] * 10
    assert np.bincount(test_labels).tolist() == [100] * 10
    assert train_images.shape == (5000, 32, 32, 3) and train_images.dtype == np.uint8
    again, _ = shapes.generate(1000, seed=shapes.SPLIT_SEEDS["test"])
    np.testing.assert_array_equal(again, test_images)
    assert not np.array_equal(train_images[:1000], test_images)


def test_shape_class_changes_only_the_shape():
    rng = np.random.default_rng(3)
    nuisances = shapes.Nuisances.sample(rng, 10)
    alike = shapes.render(np.zeros(10, dtype=np.int64), nuisances)
    changed = shapes.render(np.arange(10), nuisances)
    differs = (alike != changed).any(axis=-1)
    assert not differs[0].any()  # same class, same nuisances: the same image
    coverage = shapes.coverage(np.arange(10), nuisances) + shapes.coverage(np.zeros(10), nuisances)
    assert not differs[1:][coverage[1:] == 0].any()  # pixels far from both shapes are unchanged
    assert all(differs[i].sum() > 5 for i in range(1, 10))


def test_each_shape_covers_its_expected_area():
    """Coverage of one big upright shape against the area of its canonical region (radius 12)."""
    count = len(shapes.CLASSES)
    nuisances = shapes.Nuisances.sample(np.random.default_rng(0), count)
    nuisances = shapes.Nuisances(**{**vars(nuisances), "centres": np.full((count, 2), 16.0),
                                    "radii": np.full(count, 12.0), "angles": np.zeros(count)})
    area = shapes.coverage(np.arange(count), nuisances).sum(axis=(1, 2)) / 144  # in radius^2
    ring = np.pi * (1 - 0.55**2)
    expected = {"circle": np.pi, "square": 2.0, "triangle": 3 * np.sqrt(3) / 4, "ring": ring,
                "cross": 4 * 0.6 * 0.7 + 0.36}  # two 2 x 0.6 bars overlapping in a 0.6 square
    for name, value in expected.items():
        assert area[shapes.CLASSES.index(name)] == pytest.approx(value, rel=0.03), name


def test_shapes_need_invariance_raw_pixels_barely_beat_chance():
    """1-nearest-neighbour on raw pixels, 2,000 training images: far below a shape classifier."""
    train, train_labels = shapes.generate(2000, seed=10)
    test, test_labels = shapes.generate(300, seed=11)
    a = train.reshape(len(train), -1).astype(np.float32)
    b = test.reshape(len(test), -1).astype(np.float32)
    distances = (b**2).sum(1)[:, None] - 2 * b @ a.T + (a**2).sum(1)[None, :]
    accuracy = (train_labels[distances.argmin(axis=1)] == test_labels).mean()
    assert accuracy < 0.3  # chance is 0.1


@pytest.fixture(scope="module")
def colour_splits():
    return both_splits("colordigits")


def test_colordigits_are_the_real_digits_with_nuisances(colour_splits, digit_splits):
    info = datasets.info("colordigits")
    assert {split: len(labels) for split, (_, labels) in colour_splits.items()} == info.splits
    images, labels = colour_splits["train"]
    assert images.shape == (5768, 32, 32, 3) and images.dtype == np.uint8
    # Four renderings of each training digit, in order, with the digits' own labels.
    np.testing.assert_array_equal(labels, np.tile(digit_splits["train"][1], 4))
    assert not np.array_equal(images[:1442], images[1442:2884])  # independent nuisances
    np.testing.assert_array_equal(datasets.load("colordigits", "test")[0], colour_splits["test"][0])
    assert (images[..., 0] != images[..., 1]).mean() > 0.9  # in colour, not grey


def test_colordigits_put_the_ink_where_the_digit_is():
    """One full-ink 8x8 digit fills its square with the ink colour; outside it is the background."""
    ink = np.full((1, 8, 8), digits.MAX_INK)
    rng = np.random.default_rng(0)
    image = colordigits.render(ink, rng).astype(float)
    rng = np.random.default_rng(0)
    first, second, colour = colordigits._colours(rng, 1)
    rng.uniform(0, 2 * np.pi, 1)  # the gradient's direction
    size = rng.integers(colordigits.SIZE_RANGE[0], colordigits.SIZE_RANGE[1] + 1, 1)[0]
    top = rng.integers(0, 32 - size + 1, 1)[0]
    left = rng.integers(0, 32 - size + 1, 1)[0]
    inside = image[0, top:top + size, left:left + size]
    assert np.abs(inside.mean(axis=(0, 1)) - colour[0]).max() < 5  # noise averages out (clipped at 0, 255)
    assert np.abs(colour[0] - (first[0] + second[0]) / 2).min() >= colordigits.MIN_CONTRAST - 1e-9


def pixel_knn(splits) -> float:
    """kNN top-1 (k 20) of the test images among the training images, on the raw pixels."""
    from common.evaluate import knn_accuracy

    def pixels(images):
        return images.reshape(len(images), -1).astype(np.float32)

    (train, train_labels), (test, test_labels) = splits["train"], splits["test"]
    return knn_accuracy(pixels(train), train_labels, pixels(test), test_labels, k=20)["top1"]


def test_on_colordigits_raw_pixels_are_weak_where_on_digits_they_are_not(colour_splits, digit_splits):
    """The nuisances dominate the pixels: kNN on raw pixels is near chance here, 0.97 on digits."""
    assert pixel_knn(colour_splits) < 0.25 and pixel_knn(digit_splits) > 0.9


def test_place_ink_puts_each_digit_in_its_square_and_nowhere_else():
    ink = np.random.default_rng(0).integers(0, digits.MAX_INK + 1, (2, 8, 8))
    full = np.full((1, 8, 8), digits.MAX_INK)
    coverage = digits.place_ink(np.concatenate([ink, full]), np.array([8, 5, 5]), np.array([1, 0, 2]),
                                np.array([0, 3, 3]), side=10)
    # At its own size the resize is the identity: the ink itself, scaled to [0, 1].
    np.testing.assert_allclose(coverage[0, 1:9, 0:8], ink[0] / digits.MAX_INK, atol=1e-6)
    assert coverage[0].sum() == pytest.approx(coverage[0, 1:9, 0:8].sum())
    assert coverage[1, :, :3].sum() == 0 and coverage[1, 5:].sum() == 0
    expected = np.zeros((10, 10))
    expected[2:7, 3:8] = 1.0  # full ink fills its 5x5 square exactly
    np.testing.assert_allclose(coverage[2], expected, atol=1e-6)


@pytest.fixture(scope="module")
def placed_splits():
    return both_splits("placeddigits")


def test_placeddigits_are_the_real_digits_at_random_sizes_and_places(placed_splits, digit_splits):
    info = datasets.info("placeddigits")
    assert {split: len(labels) for split, (_, labels) in placed_splits.items()} == info.splits
    images, labels = placed_splits["train"]
    assert images.shape == (1442, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, digit_splits["train"][1])
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    np.testing.assert_array_equal(datasets.load("placeddigits", "train")[0], images)
    # The ink's bounding box moves and changes size from one image to the next, the same way in
    # every class.
    rows = (images[..., 0] > 0).any(axis=2)
    top = rows.argmax(axis=1)
    height = 16 - rows[:, ::-1].argmax(axis=1) - top
    assert top.std() > 1.0 and np.ptp(height) >= 5
    for label in range(10):
        assert abs(top[labels == label].mean() - top.mean()) < 1.0


def test_on_placeddigits_raw_pixels_are_weaker_than_on_digits(placed_splits, digit_splits):
    """Size and position move the ink: the pixels' kNN drops from 0.97 to about 0.8."""
    placed, plain = pixel_knn(placed_splits), pixel_knn(digit_splits)
    assert plain > 0.9 and placed < plain - 0.1
