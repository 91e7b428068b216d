"""The NumPy reference ops (common/augment/ops.py) against independent computations.

Independent means: hand-computed pixels, Python's ``colorsys``, a direct 2-D convolution loop, a
per-pixel bilinear loop -- never the module's own helpers.
"""

import colorsys

import numpy as np
import pytest

from common.augment import ops
from common.augment.sampler import ViewParams
from common.augment.spec import (
    GaussianBlur,
    Normalize,
    RandomResizedCrop,
    Solarize,
    ViewSpec,
)


@pytest.fixture(scope="module")
def image_uint8() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    img[0, :4] = 77  # grey pixels (r = g = b)
    img[1, 0] = (255, 255, 0)  # a tie for the maximum between red and green
    return img


@pytest.fixture(scope="module")
def image(image_uint8) -> np.ndarray:
    return ops.to_float(image_uint8)


def test_to_float_divides_by_255_and_rejects_non_uint8():
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(ops.to_float(img), [[[0.0, 128 / 255, 1.0]]])
    with pytest.raises(ValueError, match="uint8 HWC"):
        ops.to_float(img.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 HWC"):
        ops.to_float(np.zeros((2, 4, 4, 3), np.uint8))


# ---------------------------------------------------------------- resized crop


def bilinear_loop(img: np.ndarray, box, size: int) -> np.ndarray:
    """Pixel-by-pixel bilinear resize of the box (half-pixel centres, clamp at 0), for reference."""
    top, left, h, w = box
    out = np.zeros((size, size, 3))
    for y in range(size):
        sy = max((y + 0.5) * h / size - 0.5, 0.0)
        y0 = int(sy)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for x in range(size):
            sx = max((x + 0.5) * w / size - 0.5, 0.0)
            x0 = int(sx)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            p = lambda r, c: img[top + r, left + c]  # noqa: E731
            out[y, x] = (
                (1 - fy) * (1 - fx) * p(y0, x0)
                + (1 - fy) * fx * p(y0, x1)
                + fy * (1 - fx) * p(y1, x0)
                + fy * fx * p(y1, x1)
            )
    return out


def test_resized_crop_whole_image_at_same_size_is_identity(image):
    h, w = 10, 10
    square = image[:h, :w]
    np.testing.assert_allclose(ops.resized_crop(square, (0, 0, h, w), 10), square, atol=1e-15)


def test_resized_crop_upsamples_2x_with_half_pixel_centres():
    img = np.zeros((2, 2, 3))
    img[:, :, 0] = [[0.0, 1.0], [0.0, 1.0]]  # horizontal ramp in red
    img[:, :, 1] = [[0.0, 0.0], [1.0, 1.0]]  # vertical ramp in green
    out = ops.resized_crop(img, (0, 0, 2, 2), 4)
    # source x = (dst + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (tap clamped)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-15)
    np.testing.assert_allclose(out[:, 0, 1], [0.0, 0.25, 0.75, 1.0], atol=1e-15)
    assert np.all(out[..., 2] == 0)


def test_resized_crop_downsamples_without_antialiasing():
    row = np.arange(4, dtype=np.float64)[None, :, None].repeat(4, axis=0).repeat(3, axis=2) / 3
    out = ops.resized_crop(row, (0, 0, 4, 4), 2)
    # source x = (dst + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of two taps, not of a 2-pixel area
    np.testing.assert_allclose(out[0, :, 0], [0.5 / 3, 2.5 / 3], atol=1e-15)


@pytest.mark.parametrize(("box", "size"), [((2, 3, 7, 5), 9), ((0, 1, 12, 9), 6), ((5, 5, 1, 2), 4)])
def test_resized_crop_matches_pixel_loop(image, box, size):
    np.testing.assert_allclose(
        ops.resized_crop(image, box, size), bilinear_loop(image, box, size), atol=1e-12
    )


def test_resized_crop_rejects_box_outside_image(image):
    with pytest.raises(ValueError, match="inside"):
        ops.resized_crop(image, (5, 0, 8, 4), 4)  # 5 + 8 > 12 rows


def test_hflip_mirrors_columns(image):
    flipped = ops.hflip(image)
    w = image.shape[1]
    for c in range(w):
        np.testing.assert_array_equal(flipped[:, c], image[:, w - 1 - c])


# ---------------------------------------------------------------- colour


PIXEL = np.array([[[0.6, 0.4, 0.2]]])
PIXEL_LUMA = 0.2989 * 0.6 + 0.587 * 0.4 + 0.114 * 0.2  # 0.43694


def test_grayscale_uses_itu_601_weights():
    primaries = np.eye(3)[None]  # red, green, blue pixels
    out = ops.to_grayscale(primaries)
    np.testing.assert_allclose(out[0, :, 0], [0.2989, 0.587, 0.114], atol=1e-15)
    assert np.all(out == out[..., :1])  # replicated to three channels
    np.testing.assert_allclose(ops.to_grayscale(PIXEL), PIXEL_LUMA, atol=1e-15)


def test_brightness_scales_then_clamps():
    out = ops.adjust_brightness(np.array([[[0.4, 0.8, 0.0]]]), 1.5)
    np.testing.assert_allclose(out, [[[0.6, 1.0, 0.0]]], atol=1e-15)


def test_contrast_blends_with_mean_luma(image):
    mean_luma = np.mean(0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2])
    np.testing.assert_allclose(ops.adjust_contrast(image, 0.0), mean_luma, atol=1e-15)
    f = 1.3
    want = np.clip(f * image + (1 - f) * mean_luma, 0, 1)
    np.testing.assert_allclose(ops.adjust_contrast(image, f), want, atol=1e-15)
    assert ops.adjust_contrast(image, 3.0).max() == 1.0  # clamped


def test_saturation_blends_with_pixel_luma():
    np.testing.assert_allclose(ops.adjust_saturation(PIXEL, 0.0), PIXEL_LUMA, atol=1e-15)
    want = [2 * 0.6 - PIXEL_LUMA, 2 * 0.4 - PIXEL_LUMA, 0.0]  # blue: 0.4 - 0.437 < 0 -> 0
    np.testing.assert_allclose(ops.adjust_saturation(PIXEL, 2.0)[0, 0], want, atol=1e-15)


def test_rgb_to_hsv_matches_colorsys(image):
    hsv = ops.rgb_to_hsv(image)
    for pixel, got in zip(image.reshape(-1, 3), hsv.reshape(-1, 3), strict=True):
        want = np.array(colorsys.rgb_to_hsv(*pixel))
        hue_gap = abs(got[0] - want[0])
        assert min(hue_gap, 1 - hue_gap) < 1e-12
        np.testing.assert_allclose(got[1:], want[1:], atol=1e-12)
    assert np.all(hsv[0, :4, :2] == 0)  # grey: hue and saturation 0


def test_hsv_to_rgb_matches_colorsys():
    rng = np.random.default_rng(1)
    hsv = rng.random((50, 3))
    hsv[:6, 0] = np.arange(6) / 6  # sector boundaries
    got = ops.hsv_to_rgb(hsv[None])[0]
    want = np.array([colorsys.hsv_to_rgb(*p) for p in hsv])
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("delta", [-0.5, -0.23, 0.1, 0.37, 0.5])
def test_adjust_hue_matches_colorsys(image, delta):
    got = ops.adjust_hue(image, delta)
    for pixel, out in zip(image.reshape(-1, 3), got.reshape(-1, 3), strict=True):
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        np.testing.assert_allclose(out, colorsys.hsv_to_rgb((h + delta) % 1.0, s, v), atol=1e-12)
    if delta != 0:
        assert np.abs(got - image).max() > 0.1


def test_adjust_hue_zero_is_identity_and_range_is_checked(image):
    np.testing.assert_allclose(ops.adjust_hue(image, 0.0), image, atol=1e-12)
    # a third of the wheel moves pure red to pure green
    np.testing.assert_allclose(ops.adjust_hue(np.array([[[1.0, 0, 0]]]), 1 / 3), [[[0, 1.0, 0]]], atol=1e-12)
    with pytest.raises(ValueError, match="hue delta"):
        ops.adjust_hue(image, 0.6)


# ---------------------------------------------------------------- blur


def test_gaussian_kernel_is_normalised_gaussian():
    k = ops.gaussian_kernel1d(1.3, 7)
    assert k.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(k, k[::-1], atol=0)
    np.testing.assert_allclose(k[4] / k[3], np.exp(-0.5 / 1.3**2), rtol=1e-13)  # x = 0 -> 1
    np.testing.assert_allclose(k[6] / k[3], np.exp(-0.5 * 9 / 1.3**2), rtol=1e-13)  # x = 0 -> 3


def convolve2d_reflect(img: np.ndarray, kernel2d: np.ndarray) -> np.ndarray:
    """Direct 2-D correlation with reflect padding, pixel by pixel."""
    r = kernel2d.shape[0] // 2
    padded = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(img)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            window = padded[y : y + 2 * r + 1, x : x + 2 * r + 1]
            out[y, x] = np.einsum("ij,ijc->c", kernel2d, window)
    return out


@pytest.mark.parametrize(("sigma", "k"), [(0.1, 3), (0.8, 5), (2.0, 9)])
def test_gaussian_blur_matches_direct_2d_convolution(image, sigma, k):
    x = np.arange(k) - k // 2
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    want = convolve2d_reflect(image, g / g.sum())
    np.testing.assert_allclose(ops.gaussian_blur(image, sigma, k), want, atol=1e-12)


def test_gaussian_blur_pads_by_reflection_without_repeating_the_edge():
    impulse = np.zeros((6, 6, 3))
    impulse[0, 0] = 1.0
    k = ops.gaussian_kernel1d(1.0, 3)
    out = ops.gaussian_blur(impulse, 1.0, 3)
    # reflect: the padding next to pixel 0 is pixel 1 (= 0), so the corner keeps only the centre tap
    np.testing.assert_allclose(out[0, 0], k[1] ** 2, atol=1e-15)
    np.testing.assert_allclose(ops.gaussian_blur(np.full((5, 5, 3), 0.3), 1.5, 3), 0.3, atol=1e-15)
    with pytest.raises(ValueError, match="too large"):
        ops.gaussian_blur(impulse, 1.0, 13)


# ---------------------------------------------------------------- solarize, normalise


def test_solarize_inverts_at_and_above_threshold():
    x = np.array([[[0.3, 0.6, 0.9]]])
    np.testing.assert_allclose(ops.solarize(x, 0.6), [[[0.3, 0.4, 0.1]]], atol=1e-15)
    np.testing.assert_allclose(ops.solarize(x, 0.0), 1 - x, atol=1e-15)
    np.testing.assert_allclose(ops.solarize(x, 1.0), x, atol=0)


def test_solarize_really_changes_images_on_the_0_1_scale(image_uint8, image):
    """Guards the classic bug: threshold 128 on images in [0, 1] never fires."""
    changed = ops.solarize(image, 0.5) != image
    bright = image_uint8 >= 128
    np.testing.assert_array_equal(changed, bright & (image != 0.5))
    assert changed.mean() > 0.3
    with pytest.raises(ValueError, match="0..1 scale"):
        ops.solarize(image, 128)


def test_normalize_per_channel():
    x = np.array([[[0.5, 0.25, 1.0]]])
    out = ops.normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 0.1))
    np.testing.assert_allclose(out, [[[0.0, -0.5, 5.0]]], atol=1e-15)


# ---------------------------------------------------------------- whole view


def one_image_params(h, w, **overrides) -> ViewParams:
    """Neutral parameters for one h x w image (whole-image crop, nothing fires), with overrides."""
    fields = dict(
        crop_box=np.array([[0, 0, h, w]]),
        flip=np.array([False]),
        jitter=np.array([False]),
        brightness=np.array([1.0]),
        contrast=np.array([1.0]),
        saturation=np.array([1.0]),
        hue=np.array([0.0]),
        jitter_order=np.array([[0, 1, 2, 3]]),
        grayscale=np.array([False]),
        blur=np.array([False]),
        blur_sigma=np.array([0.0]),
        solarize=np.array([False]),
    )
    fields.update({k: np.array([v]) for k, v in overrides.items()})
    return ViewParams(**fields)


def test_apply_view_with_neutral_params_is_the_float_image(image_uint8):
    square = image_uint8[:10, :10]
    spec = ViewSpec(crop=RandomResizedCrop(10))
    out = ops.apply_view(square, one_image_params(10, 10), 0, spec)
    np.testing.assert_allclose(out, square / 255, atol=1e-15)


def test_apply_view_runs_every_op_in_the_documented_order(image_uint8):
    spec = ViewSpec(
        crop=RandomResizedCrop(8),
        blur=GaussianBlur(1.0, kernel_size=3),
        solarize=Solarize(1.0, 0.4),
        normalize=Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
    )
    params = one_image_params(
        12,
        10,
        crop_box=[1, 2, 9, 7],
        flip=True,
        jitter=True,
        brightness=1.2,
        contrast=0.7,
        saturation=1.5,
        hue=0.2,
        jitter_order=[3, 1, 0, 2],
        grayscale=False,
        blur=True,
        blur_sigma=0.9,
        solarize=True,
    )
    x = image_uint8 / 255
    x = bilinear_loop(x, (1, 2, 9, 7), 8)[:, ::-1]
    x = ops.adjust_hue(x, 0.2)
    x = ops.adjust_contrast(x, 0.7)
    x = ops.adjust_brightness(x, 1.2)
    x = ops.adjust_saturation(x, 1.5)
    x = ops.gaussian_blur(x, 0.9, 3)
    x = np.where(x >= 0.4, 1 - x, x)
    want = (x - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])
    np.testing.assert_allclose(ops.apply_view(image_uint8, params, 0, spec), want, atol=1e-12)

    other_order = params.select(0)
    other_order.jitter_order = np.array([[0, 1, 2, 3]])
    assert np.abs(ops.apply_view(image_uint8, other_order, 0, spec) - want).max() > 1e-3


def test_apply_view_grayscale_gives_equal_channels(image_uint8):
    spec = ViewSpec(crop=RandomResizedCrop(6))
    out = ops.apply_view(image_uint8, one_image_params(12, 10, grayscale=True), 0, spec)
    assert np.all(out == out[..., :1])
    assert out.shape == (6, 6, 3)


def test_apply_view_refuses_params_the_spec_cannot_honour(image_uint8):
    spec = ViewSpec(crop=RandomResizedCrop(6))
    with pytest.raises(ValueError, match="blur"):
        ops.apply_view(image_uint8, one_image_params(12, 10, blur=True, blur_sigma=1.0), 0, spec)


def test_apply_view_batch_stacks_views_as_float32(image_uint8):
    images = np.stack([image_uint8, image_uint8[::-1]])
    spec = ViewSpec(crop=RandomResizedCrop(5))
    params = one_image_params(12, 10, flip=True)
    params = ViewParams(**{k: np.concatenate([v, v]) for k, v in vars(params).items()})
    params.flip[1] = False
    out = ops.apply_view_batch(images, params, spec)
    assert out.dtype == np.float32 and out.shape == (2, 5, 5, 3)
    for i in range(2):
        np.testing.assert_allclose(out[i], ops.apply_view(images[i], params, i, spec), atol=1e-7)
    with pytest.raises(ValueError, match="one per parameter set"):
        ops.apply_view_batch(images[:1], params, spec)
