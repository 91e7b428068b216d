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
    loop over images. The crop and flip are one ``grid_sample``; brightness, contrast, saturation and
    grayscale are all one per-image weighted blend (:func:`blend_`), run on the whole batch at each
    jitter position with neutral weights for the images that have another op there; the hue and the
    blur, the costly ops per pixel, run only on the images they fire for, picked by indices computed
    on the host. The pipeline owns its batch and works in place where it can (fewer large temporaries:
    on CPU each one costs page faults). :func:`apply_view` applies given ``ViewParams``, so the tests
    can feed it the exact parameters the NumPy reference sees.
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
    return images.float().div_(255.0)  # keeps the NHWC strides: no copy just to reorder


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


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma 0.2989 R + 0.587 G + 0.114 B."""
    r, g, b = x.unbind(1)
    weighted = (GRAY_WEIGHTS[0] * r).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])
    return weighted.unsqueeze(1)


def blend_(x: torch.Tensor, own: torch.Tensor, of_mean: torch.Tensor, of_luma: torch.Tensor
           ) -> torch.Tensor:
    """x <- clamp(a x + b m + c l), in place, with weights (a, b, c) per image: l the luma, m its mean
    over the image.

    Brightness, contrast and saturation are the blends (f, 0, 0), (f, 1 - f, 0) and (f, 0, 1 - f)
    (torchvision's ``_blend`` of the image with black, its mean grey, its own greys), grayscale is
    (0, 0, 1) and the weights (1, 0, 0) leave an image as it is -- exactly, as 1 x + 0 + 0 = x. So one
    blend with per-image weights runs a different one of these ops on every image of the batch.
    """
    shape = (-1, 1, 1, 1)
    base = luma(x)
    mean = base.mean(dim=(2, 3), keepdim=True)
    base.mul_(of_luma.view(shape)).add_(of_mean.view(shape) * mean)  # c l + b m
    return torch.addcmul(base, own.view(shape), x, out=x).clamp_(0.0, 1.0)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """The luma replicated to 3 channels (the blend (0, 0, 1): saturation 0)."""
    return luma(x).expand_as(x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f x): a blend with black."""
    factor = factor.to(torch.float32)
    return blend_(x.clone(), factor, torch.zeros_like(factor), torch.zeros_like(factor))


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f x + (1 - f) m), m the mean of the image's luma."""
    factor = factor.to(torch.float32)
    return blend_(x.clone(), factor, 1 - factor, torch.zeros_like(factor))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f x + (1 - f) luma(x))."""
    factor = factor.to(torch.float32)
    return blend_(x.clone(), factor, torch.zeros_like(factor), 1 - factor)


HUE_CHANNEL_OFFSETS = (5.0, 3.0, 1.0)  # n for R, G, B in the closed form of HSV -> RGB


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Shift each image's HSV hue by its delta in [-0.5, 0.5] (h = (h + delta) mod 1), in RGB.

    torchvision converts RGB -> HSV, shifts h, converts back. A hue shift keeps V = max and
    V (1 - S) = min of the channels, so with chroma C = max - min the round trip is, per channel,
    ``max - C clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 (h + delta)) mod 6`` and n = 5, 3, 1 for
    R, G, B: the closed form of HSV -> RGB, the same piecewise-linear function as torchvision's sector
    table. h is torchvision's: 6 h = (g - b) / C where red holds the max, 2 + (b - r) / C where green
    does, 4 + (r - g) / C where blue does (red wins ties, then green), 0 for greys. The channel tests
    are 0/1 float masks (``1 - sign(max - r)`` is 1 where r is the max): arithmetic, where
    ``torch.where`` and comparisons cost 5-25x more on CPU.
    """
    r, g, b = x.unbind(1)
    max_rg = torch.maximum(r, g)
    maxc = torch.maximum(max_rg, b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    max_is_r = 1 - (maxc - r).sign_()
    max_is_r_or_g = 1 - (maxc - max_rg).sign_()
    from_r, from_g, from_b = g - b, (b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4)
    hue6 = torch.addcmul(from_b, max_is_r_or_g, from_g.sub_(from_b))  # 6 h, in (-1, 5]
    hue6.addcmul_(max_is_r, from_r.sub_(hue6))  # (from_r - from_g where red holds the max)
    hue6.div_(chroma.clamp(min=torch.finfo(x.dtype).tiny))  # greys: 0 / tiny = 0
    offsets = torch.tensor(HUE_CHANNEL_OFFSETS, device=x.device).view(1, 3, 1, 1)
    k = hue6.unsqueeze(1) + (6 * delta.to(x.dtype).view(-1, 1, 1, 1) + offsets)  # (N, 3, H, W)
    k.sub_(torch.floor(k * (1 / 6)).mul_(6))  # k mod 6 (multiplying: a CPU division costs 7x more)
    ramp = torch.minimum(k, 4 - k).clamp_(0.0, 1.0)
    return torch.addcmul(maxc.unsqueeze(1), chroma.unsqueeze(1), ramp, value=-1.0)


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


def solarize(x: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above the threshold (on the 0..1 scale): x >= t -> 1 - x.

    ``threshold`` may be a tensor that broadcasts against ``x``, e.g. one per image (N, 1, 1, 1),
    where a threshold above 1 leaves its image as it is.
    """
    return torch.where(x >= threshold, 1.0 - x, x)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel."""
    return normalize_(x.clone(), mean, std)


def normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """x <- (x - mean) / std per channel, in place."""
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


# --------------------------------------------------------------------------------------------------
# A whole view: the plan (which op each image gets at each step) is made on the host from ViewParams,
# sent to the device in one copy, then run on the whole batch.
# --------------------------------------------------------------------------------------------------
_BLEND_OF_OP = {  # JITTER_OPS name -> blend weights (a, b, c) for factor f
    "brightness": lambda f: (f, 0 * f, 0 * f),
    "contrast": lambda f: (f, 1 - f, 0 * f),
    "saturation": lambda f: (f, 0 * f, 1 - f),
}


def colour_plan(params: ViewParams) -> tuple[np.ndarray, np.ndarray]:
    """The colour jitter and grayscale as five blend steps and four hue steps.

    Returns ``blend_weights`` (5, 3, N): at jitter position 0..3 the weights (a, b, c) of the
    brightness, contrast or saturation each image gets there (see :func:`blend`), (1, 0, 0) for an
    image that gets nothing or the hue; step 4 is the grayscale, (0, 0, 1) where it fires. And
    ``hue_deltas`` (4, N): at each position the hue shift of the images that get the hue there, 0
    elsewhere. An adjustment whose factor is neutral is skipped, as in the reference.
    """
    n = len(params)
    weights = np.zeros((5, 3, n))
    weights[:, 0] = 1.0
    hue_deltas = np.zeros((4, n))
    for op_index, name in enumerate(JITTER_OPS):
        at = params.jitter_order == op_index  # (N, 4): where this op sits in each image's order
        factor = getattr(params, name)
        for position in range(4):
            fires = params.jitter & at[:, position]
            if name == "hue":
                hue_deltas[position] = np.where(fires, factor, 0.0)
            else:
                fires &= factor != 1.0
                weights[position][:, fires] = np.stack(_BLEND_OF_OP[name](factor[fires]))
    weights[4][:, params.grayscale] = np.array([[0.0], [0.0], [1.0]])
    return weights, hue_deltas


def view_steps(params: ViewParams, spec: ViewSpec) -> list[tuple[Callable, np.ndarray | None, tuple]]:
    """The view after the crop and flip as (op, indices of the images it runs on or None for all of
    them, its per-image parameters), all known on the host before any pixel is.

    At each jitter position a blend (the brightness, contrast or saturation of every image that has
    one there), then the hue of the images that have it there; the grayscale blend; the blur of the
    images it fires for; the solarize of all, with a threshold of 2 (never reached) for the images it
    does not fire for. Steps that change no image are left out.
    """
    blend_weights, hue_deltas = colour_plan(params)
    steps = []
    for step, weights in enumerate(blend_weights):
        if np.any(weights[0] != 1.0) or np.any(weights[1:] != 0.0):
            steps.append((blend_, None, tuple(weights)))
        if step < 4 and np.any(hue_deltas[step]):
            index = np.flatnonzero(hue_deltas[step])
            steps.append((adjust_hue, index, (hue_deltas[step][index],)))
    if spec.blur is not None and params.blur.any():
        index = np.flatnonzero(params.blur)
        steps.append((partial(gaussian_blur, kernel_size=spec.blur.kernel_size), index,
                      (params.blur_sigma[index],)))
    if spec.solarize is not None and params.solarize.any():
        thresholds = np.where(params.solarize, spec.solarize.threshold, 2.0)
        steps.append((solarize, None, (thresholds.reshape(-1, 1, 1, 1),)))
    return steps


def apply_view(images: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """The whole view for a uint8 NHWC/NCHW batch -> float32 NCHW (normalised if the spec says so).

    crop -> flip -> colour jitter -> grayscale -> blur -> solarize -> normalise, each with the image's
    own parameters from ``params`` (as drawn by ``common.augment.sample_view_params``).
    """
    return _view_of_floats(to_float_nchw(images), params, spec)


def _view_of_floats(x: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """:func:`apply_view` on a float32 NCHW batch in [0, 1].

    The blends and the solarize run on the whole batch with per-image parameters (neutral ones where
    an image has nothing to do); the hue and the blur, the costly ops per pixel, run only on the
    images they fire for (gathered by index, written back in place). No Python loop over images and
    no device synchronisation: all parameters and indices come from the host in one copy.
    """
    steps = view_steps(params, spec)
    boxes, flip, *arrays = _to_device(
        [params.crop_box, params.flip,
         *(a for _, index, args in steps for a in ((*args,) if index is None else (index, *args)))],
        x.device,
    )
    x = resized_crop(x, boxes, spec.crop.size, flip)
    arrays = iter(arrays)
    for op, index, args in steps:
        if index is None:
            x = op(x, *(next(arrays) for _ in args))
        else:
            index = next(arrays).long()
            x.index_copy_(0, index, op(x.index_select(0, index), *(next(arrays) for _ in args)))
    if spec.normalize is not None:
        x = normalize_(x, spec.normalize.mean, spec.normalize.std)
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
