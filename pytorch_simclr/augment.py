"""SimCLR views in PyTorch: the common/augment spec implemented twice.

Both paths implement the exact semantics written once in ``common/augment/__init__.py`` (torchvision's
definitions of each op, on floats in [0, 1], clamped after every colour op) and are tested op by op
against the NumPy reference ``common.augment.ops`` (max abs diff <= 1/255, tests/test_torch_augment.py).

(a) Per image, the classic way: :func:`build_view_transform` turns a ``ViewSpec`` into a
    ``torchvision.transforms.v2.Compose`` that DataLoader workers run on one image at a time, and
    :class:`TwoViewDataset` yields the two views of SimCLR's Algorithm 1 (Chen et al. 2020, sec. 2.1).
(b) Batched, on the training device: :class:`BatchAugmenter` draws the per-image parameters of a whole
    batch with ``common.augment.sample_view_params`` (vectorised NumPy, well under a millisecond), sends
    them to the device in one copy, and applies each op to the whole batch with tensor ops -- no Python
    loop over images. The crop and flip are one ``grid_sample``; every later op runs only on the images
    it fires for, picked by indices computed on the host. :func:`apply_view` applies given
    ``ViewParams``, so the tests can feed it the exact parameters the NumPy reference sees.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.augment import JITTER_OPS, PairSpec, ViewParams, ViewSpec, sample_view_params

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision writes it


# --------------------------------------------------------------------------------------------------
# (a) Per image: torchvision.transforms.v2
# --------------------------------------------------------------------------------------------------
def build_view_transform(spec: ViewSpec) -> v2.Compose:
    """One view's torchvision v2 pipeline: uint8 HWC array or uint8 CHW tensor -> float32 CHW tensor.

    ``ToDtype(float32, scale=True)`` comes first, so every op sees floats in [0, 1] as the spec says;
    this is also why ``RandomSolarize`` takes its threshold on the 0..1 scale (a threshold of 128 on
    such images would never fire).
    """
    crop, jitter = spec.crop, spec.jitter
    steps = [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomResizedCrop(crop.size, scale=crop.scale, ratio=crop.ratio, antialias=False),
    ]
    if spec.flip is not None:
        steps.append(v2.RandomHorizontalFlip(spec.flip.p))
    if jitter is not None:
        strengths = dict(zip(JITTER_OPS, (jitter.brightness, jitter.contrast, jitter.saturation,
                                          jitter.hue), strict=True))
        if jitter.random_order:  # v2.ColorJitter applies its four ops in a fresh random order
            jitter_ops = [v2.ColorJitter(**strengths)]
        else:  # the fixed order brightness, contrast, saturation, hue
            jitter_ops = [v2.ColorJitter(**{name: s}) for name, s in strengths.items()]
        steps.append(v2.RandomApply(jitter_ops, p=jitter.p))
    if spec.grayscale is not None:
        steps.append(v2.RandomGrayscale(spec.grayscale.p))  # keeps 3 channels
    if spec.blur is not None:
        blur = v2.GaussianBlur(spec.blur.kernel_size, sigma=spec.blur.sigma)
        steps.append(v2.RandomApply([blur], p=spec.blur.p))
    if spec.solarize is not None:
        steps.append(v2.RandomSolarize(spec.solarize.threshold, p=spec.solarize.p))
    if spec.normalize is not None:
        steps.append(v2.Normalize(spec.normalize.mean, spec.normalize.std))
    return v2.Compose([*steps, v2.ToPureTensor()])


class TwoViewDataset(Dataset):
    """Pairs of views of uint8 NHWC images, each view drawn by its own v2 pipeline (per image)."""

    def __init__(self, images_uint8_nhwc: np.ndarray, pair_spec: PairSpec):
        _check_uint8_rgb(images_uint8_nhwc.dtype == np.uint8, images_uint8_nhwc.shape,
                         images_uint8_nhwc.dtype, channel_axis=-1)
        self.images = images_uint8_nhwc
        self.view1 = build_view_transform(pair_spec.view1)
        self.view2 = build_view_transform(pair_spec.view2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return self.view1(image), self.view2(image)


# --------------------------------------------------------------------------------------------------
# (b) Batched on the device. Each op takes a float32 NCHW batch in [0, 1] and per-image parameters as
# tensors of length N; the names match common/augment/ops.py.
# --------------------------------------------------------------------------------------------------
def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (the project's layout) or NCHW batch -> float32 NCHW in [0, 1] (x / 255).

    A batch whose last axis has 3 entries is read as NHWC, otherwise axis 1 must hold the 3 channels.
    """
    channel_axis = -1 if images.shape[-1] == 3 else 1
    _check_uint8_rgb(images.dtype == torch.uint8, images.shape, images.dtype, channel_axis)
    if channel_axis == -1:
        images = images.permute(0, 3, 1, 2)
    return images.contiguous().float().div_(255.0)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """Crop box (top, left, height, width) of each image, bilinear resize to (size, size), then mirror
    left-right the images whose ``flip`` is set -- all in one ``grid_sample``.

    The spec's resize is ``F.interpolate(crop, bilinear, align_corners=False, antialias=False)``: output
    pixel d reads the crop at (d + 0.5) * in / size - 0.5, clamped to [0, in - 1]. The clamp is to the
    edges of the *box*, not of the image, so the grid is built from clamped per-axis coordinates (an
    affine grid with ``padding_mode="border"`` would clamp at the image border instead and mix in
    pixels just outside interior boxes). Flipping the resized image is reading its columns right to
    left, so the flip costs nothing but reversed grid columns.
    """
    n, _, height, width = x.shape
    top, left, box_h, box_w = (boxes[:, k : k + 1].to(torch.float32) for k in range(4))
    centres = torch.arange(size, device=x.device, dtype=torch.float32) + 0.5
    rows = torch.minimum((centres * box_h / size - 0.5).clamp(min=0.0), box_h - 1) + top  # (N, size)
    cols = torch.minimum((centres * box_w / size - 0.5).clamp(min=0.0), box_w - 1) + left
    cols = torch.where(flip.view(-1, 1).bool(), cols.flip(1), cols)
    # grid_sample(align_corners=False) reads pixel coordinate p at normalised (2 p + 1) / extent - 1
    grid = torch.stack(
        [
            ((2 * cols + 1) / width - 1)[:, None, :].expand(n, size, size),
            ((2 * rows + 1) / height - 1)[:, :, None].expand(n, size, size),
        ],
        dim=-1,
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f x + (1 - f) other) with one factor per image (torchvision's ``_blend``)."""
    f = factor.to(x.dtype).view(-1, 1, 1, 1)
    return torch.addcmul((1 - f) * other, f, x).clamp_(0.0, 1.0)  # addcmul(a, f, x) = a + f x


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma 0.2989 R + 0.587 G + 0.114 B."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """The luma replicated to 3 channels."""
    return _luma(x).expand_as(x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f x): a blend with black."""
    return (factor.to(x.dtype).view(-1, 1, 1, 1) * x).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f x + (1 - f) m), m the mean of the image's luma."""
    return _blend(x, _luma(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f x + (1 - f) luma(x))."""
    return _blend(x, _luma(x), factor)


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Shift each image's HSV hue by its delta in [-0.5, 0.5] (h = (h + delta) mod 1), in RGB.

    torchvision converts RGB -> HSV, shifts h, converts back. A hue shift keeps V = max and
    V (1 - S) = min of the channels, so with chroma C = max - min the round trip is, per channel,
    ``max - C clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 (h + delta)) mod 6`` and n = 5, 3, 1 for
    R, G, B: the closed form of HSV -> RGB, the same piecewise-linear function as torchvision's sector
    table. h is torchvision's: from the channel holding the max (red wins ties, then green), 0 for
    greys. The channel tests are 0/1 float masks (``1 - sign(max - r)`` is 1 where r is the max):
    arithmetic, where ``torch.where`` and comparisons cost 5-25x more on CPU.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    below_r, below_g, below_b = maxc - r, maxc - g, maxc - b  # torchvision's rc, gc, bc times C
    max_is_r = 1 - below_r.sign()
    max_is_g = (1 - below_g.sign()) * (1 - max_is_r)
    max_is_b = 1 - max_is_r - max_is_g
    hue6 = (max_is_r * (below_b - below_g)  # 6 h, in (-1, 5]
            + max_is_g * (2 * chroma + below_r - below_b)
            + max_is_b * (4 * chroma + below_g - below_r)) / (chroma + (1 - chroma.sign()))
    hue6 = hue6 + 6 * delta.to(x.dtype).view(-1, 1, 1)

    def channel(n: float) -> torch.Tensor:
        k = hue6 + n
        k = k - 6 * torch.floor(k * (1 / 6))  # k mod 6 (multiplying: a CPU division costs 7x more)
        return maxc - chroma * torch.minimum(k, 4 - k).clamp_(0.0, 1.0)

    return torch.stack([channel(5.0), channel(3.0), channel(1.0)], dim=1)


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(N, k) kernels exp(-0.5 (t / sigma)^2) on t = -(k-1)/2 .. (k-1)/2, each normalised to sum 1."""
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * (t / sigma.to(torch.float32).view(-1, 1)) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image, reflect padding (edge pixel not repeated).

    Each pass is a sum over the k taps of weight x shifted image: exact float32 on every device (a
    grouped conv2d may run in TF32 on recent GPUs, where torch's default conv precision is TF32).
    """
    weights = gaussian_kernel1d(sigma, kernel_size)
    pad = kernel_size // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (0, 0, pad, pad), mode="reflect")
    x = sum(weights[:, j].view(-1, 1, 1, 1) * padded[:, :, j : j + height] for j in range(kernel_size))
    padded = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    return sum(weights[:, j].view(-1, 1, 1, 1) * padded[..., j : j + width] for j in range(kernel_size))


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert the pixels at or above the threshold (on the 0..1 scale): x >= t -> 1 - x."""
    return torch.where(x >= threshold, 1.0 - x, x)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel."""
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


_ADJUSTMENTS = {  # JITTER_OPS name -> (batched op, neutral factor)
    "brightness": (adjust_brightness, 1.0),
    "contrast": (adjust_contrast, 1.0),
    "saturation": (adjust_saturation, 1.0),
    "hue": (adjust_hue, 0.0),
}


def firing_steps(params: ViewParams, spec: ViewSpec) -> list[tuple[Callable, np.ndarray, tuple]]:
    """The view after the crop and flip as (op, indices of the images it fires for, their parameters).

    Which images each op touches is known on the host before any pixel is: the four jitter positions
    (at each, the images whose ``jitter_order`` puts brightness, contrast, saturation or hue there; a
    neutral factor is skipped, as in the reference), then grayscale, blur and solarize. Ops that fire
    for no image are left out.
    """
    steps = []

    def add(op: Callable, fires: np.ndarray, *per_image: np.ndarray) -> None:
        index = np.flatnonzero(fires)
        if index.size:
            steps.append((op, index, tuple(values[index] for values in per_image)))

    for position in range(4):
        for op_index, name in enumerate(JITTER_OPS):
            adjust, neutral = _ADJUSTMENTS[name]
            factor = getattr(params, name)
            add(adjust, params.jitter & (params.jitter_order[:, position] == op_index)
                & (factor != neutral), factor)
    add(to_grayscale, params.grayscale)
    if spec.blur is not None:
        add(partial(gaussian_blur, kernel_size=spec.blur.kernel_size), params.blur,
            params.blur_sigma)
    if spec.solarize is not None:
        add(partial(solarize, threshold=spec.solarize.threshold), params.solarize)
    return steps


def apply_view(images: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """The whole view for a uint8 NHWC/NCHW batch -> float32 NCHW (normalised if the spec says so).

    crop -> flip -> colour jitter -> grayscale -> blur -> solarize -> normalise, each with the image's
    own parameters from ``params`` (as drawn by ``common.augment.sample_view_params``).
    """
    return _view_of_floats(to_float_nchw(images), params, spec)


def _view_of_floats(x: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """:func:`apply_view` on a float32 NCHW batch in [0, 1].

    The crop and flip run on every image; every later op runs only on the images it fires for
    (gathered by index, written back in place), so a batch costs what its firing ops cost, with no
    Python loop over images and no device synchronisation: all indices come from the host in one copy.
    """
    steps = firing_steps(params, spec)
    boxes, flip, *arrays = _to_device(
        [params.crop_box, params.flip, *(a for _, index, args in steps for a in (index, *args))],
        x.device,
    )
    x = resized_crop(x, boxes, spec.crop.size, flip)
    arrays = iter(arrays)
    for op, _, per_image in steps:
        index = next(arrays).long()
        x[index] = op(x[index], *(next(arrays) for _ in per_image))
    if spec.normalize is not None:
        x = normalize(x, spec.normalize.mean, spec.normalize.std)
    return x


def _to_device(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Small host arrays -> float32 tensors on ``device`` in one (pinned, asynchronous) copy.

    float32 holds the integers used here (indices, pixel boxes) exactly.
    """
    flat = torch.from_numpy(np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays]))
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    return [piece.view(a.shape) for piece, a in zip(flat.split([a.size for a in arrays]), arrays,
                                                     strict=True)]


class BatchAugmenter:
    """Two views of a uint8 batch already on the training device, in a handful of tensor ops.

    >>> augment = BatchAugmenter(preset("simclr", 32), device="cuda", seed=0)
    >>> view1, view2 = augment(images_uint8_on_device)   # float32 NCHW, normalised

    Parameters come from ``rng`` when a call passes one (e.g. one generator per training step, so a
    resumed run draws the same views), else from the augmenter's own generator seeded by ``seed``.
    """

    def __init__(self, pair_spec: PairSpec, device: torch.device | str, *, seed: int | None = None,
                 channels_last: bool = False):
        self.pair_spec = pair_spec
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, rng: np.random.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.device.type != self.device.type:
            raise ValueError(f"images are on {images.device} but the augmenter was built for "
                             f"{self.device}: move the batch first (images.to({str(self.device)!r}))")
        rng = self.rng if rng is None else rng
        x = to_float_nchw(images)  # converted once, shared by both views
        n, _, height, width = x.shape
        view1, view2 = (
            self._layout(_view_of_floats(x, sample_view_params(spec, n, (height, width), rng), spec))
            for spec in self.pair_spec.views
        )
        return view1, view2

    def apply(self, images: torch.Tensor, params: ViewParams, view_spec: ViewSpec) -> torch.Tensor:
        """One view of the batch with the given parameters (see :func:`apply_view`)."""
        return self._layout(apply_view(images, params, view_spec))

    def _layout(self, view: torch.Tensor) -> torch.Tensor:
        return view.contiguous(memory_format=torch.channels_last) if self.channels_last else view


def _check_uint8_rgb(is_uint8: bool, shape, dtype, channel_axis: int) -> None:
    if not is_uint8 or len(shape) != 4 or shape[channel_axis] != 3:
        raise ValueError(
            f"expected a uint8 batch of RGB images (N, H, W, 3) or (N, 3, H, W), got dtype {dtype} "
            f"and shape {tuple(shape)}; convert with images.astype(np.uint8) / move channels last"
        )
