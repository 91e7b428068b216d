"""The augmentation gallery (common/augment/gallery.py) on small synthetic datasets."""

import numpy as np
import pytest
from PIL import Image

from common.augment import gallery, ops, preset, sample_view_params, without_normalize


def synthetic(n_classes: int = 4, per_class: int = 3, side: int = 16):
    """Images whose pixels encode their index (so a test can tell which one was picked)."""
    n = n_classes * per_class
    labels = np.repeat(np.arange(n_classes), per_class).astype(np.int64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images, labels


def test_pick_examples_takes_the_first_image_of_distinct_classes():
    images, labels = synthetic()
    picked = gallery.pick_examples(images, labels, 3, seed=1)
    first_of_class = {int(labels[i]): i for i in range(len(labels) - 1, -1, -1)}
    indices = picked[:, 0, 0, 0]
    assert len(set(labels[indices])) == 3
    assert all(first_of_class[int(labels[i])] == i for i in indices)
    with pytest.raises(ValueError, match="distinct classes"):
        gallery.pick_examples(images, labels, 5, seed=1)


def test_pair_views_are_view1_then_view2_unnormalised():
    images, _ = synthetic()
    images = images[:2]
    pair = preset("byol", 24)
    views = gallery.pair_views(images, pair, 4, np.random.default_rng(3))
    assert views.shape == (2, 4, 24, 24, 3)
    assert views.min() >= 0.0 and views.max() <= 1.0  # not normalised
    # the same draws, made by hand: view-1 params for [img0, img0, img1, img1], then view 2
    rng = np.random.default_rng(3)
    repeated = np.repeat(images, 2, axis=0)
    for half, spec in enumerate(without_normalize(pair).views):
        params = sample_view_params(spec, 4, (16, 16), rng)
        want = ops.apply_view_batch(repeated, params, spec).reshape(2, 2, 24, 24, 3)
        np.testing.assert_array_equal(views[:, 2 * half : 2 * half + 2], want)
    with pytest.raises(ValueError, match="even"):
        gallery.pair_views(images, pair, 3, np.random.default_rng(0))


def test_main_writes_a_png_with_one_row_per_preset_and_image(tmp_path, monkeypatch):
    monkeypatch.setattr(gallery.datasets, "load", lambda name, split, **kw: synthetic())
    out = gallery.main(
        ["--out", str(tmp_path / "g.png"), "--datasets", "a", "b", "--images", "2", "--size", "24"]
    )
    with Image.open(out) as picture:
        width, height = picture.size
        pixels = np.asarray(picture.convert("RGB"))
    rows, cols = len(gallery.PRESETS) * 2 * 2, 9  # presets x datasets x images; image + 8 views
    assert (width, height) == (round(80 * (0.95 * cols + 0.9)), round(80 * (0.95 * rows + 0.3)))
    assert pixels.std() > 20  # pictures were drawn, not a blank canvas
