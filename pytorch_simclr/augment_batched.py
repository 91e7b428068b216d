"""SimCLR views in PyTorch, batched on the training device: the default training path.

The same ``common/augment`` spec as the per-image path of ``augment.py``, tested op by op against the
NumPy reference ``common.augment.ops`` (max abs diff <= 1/255, tests/test_torch_augment.py), but made
for throughput: the per-image parameters of a whole batch (a ``ViewParams``, from the shared data
stream of ``common/stream.py``) become a :class:`ViewPlan` on the host, go to the device in one copy,
and each op runs on the whole batch with tensor ops -- no Python loop over images:

- the crop and the flip are one ``grid_sample`` (:func:`resized_crop`);
- brightness, contrast, saturation and grayscale are all one per-image weighted blend
  (:func:`blend_`), run on the whole batch at each jitter position, with neutral weights for the
  images that have another op (or none) there;
- the hue and the blur, the costly ops per pixel, run only on the images they fire for, picked by
  indices computed on the host; solarize runs on all with a per-image threshold (2: never).

The pipeline owns its batch and works in place where it can (fewer large temporaries: on CPU each
one costs page faults). ``bench/bench_simclr_views.py`` measures it against the per-image path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.augment import PairSpec, ViewParams, ViewSpec
from common.augment.dense import SOLARIZE_NEVER, dense_view_params
from common.augment.ops import HUE_CHANNEL_OFFSETS, LUMA_WEIGHTS
from pytorch_simclr.augment import check_uint8_rgb


# --------------------------------------------------------------------------------------------------
# The ops. Each takes a float32 NCHW batch in [0, 1] and per-image parameters as tensors of length N;
# the names match common/augment/ops.py.
# --------------------------------------------------------------------------------------------------
def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (the project's layout) or NCHW batch -> float32 NCHW in [0, 1] (x / 255).

    A batch whose last axis has 3 entries is read as NHWC, otherwise axis 1 must hold the 3 channels;
    a batch with 3 entries on both (an NCHW image 3 pixels wide) could be either and is refused.
    """
    if images.ndim == 4 and images.shape[1] == images.shape[-1] == 3:
        raise ValueError(f"a uint8 batch of shape {tuple(images.shape)} reads as NHWC and NCHW alike: "
                         "pass it NHWC (N, H, W, 3), the project's layout")
    channel_axis = -1 if images.shape[-1] == 3 else 1
    check_uint8_rgb(images.dtype == torch.uint8, images.shape, images.dtype, channel_axis)
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
    """(N, 1, H, W) luma with the weights of ``common.augment.ops.LUMA_WEIGHTS`` (ITU-R 601-2)."""
    r, g, b = x.unbind(1)
    red, green, blue = (float(w) for w in LUMA_WEIGHTS)
    weighted = (red * r).add_(g, alpha=green).add_(b, alpha=blue)
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


def normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """x <- (x - mean) / std per channel, in place."""
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


# --------------------------------------------------------------------------------------------------
# A whole view: the plan (which op each image gets at each step) is made on the host from ViewParams,
# sent to the device in one copy, then run on the whole batch.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewPlan:
    """One view's work for a batch of N images, decided before any pixel is touched.

    ``blend_weights[p]`` (3, N) is the blend at jitter position p = 0..3 (the brightness, contrast
    or saturation each image has there; (1, 0, 0) for none) and p = 4 the grayscale ((0, 0, 1) where
    it fires). ``hue_images[p]`` / ``hue_deltas[p]`` are the images with a hue shift at position p
    and their shifts; ``blur_images`` / ``blur_sigma`` the images that are blurred and their sigmas;
    ``solarize_threshold`` (N,) the threshold of every image (``SOLARIZE_NEVER`` where it does not
    fire). An adjustment whose factor is neutral is skipped, as in the reference.
    """

    crop_box: np.ndarray
    flip: np.ndarray
    blend_weights: np.ndarray
    hue_images: tuple[np.ndarray, ...]
    hue_deltas: tuple[np.ndarray, ...]
    blur_images: np.ndarray
    blur_sigma: np.ndarray
    solarize_threshold: np.ndarray

    @classmethod
    def of(cls, params: ViewParams, spec: ViewSpec) -> ViewPlan:
        """The plan of ``common.augment.dense.dense_view_params``' folding, as index lists."""
        dense = dense_view_params(params)
        hue_images = tuple(np.flatnonzero(dense["hue"][:, p]) for p in range(4))
        blurred = dense["blur"] if spec.blur is not None else np.zeros(len(params), bool)
        solarized = dense["solarize"] if spec.solarize is not None else np.zeros(len(params), bool)
        threshold = spec.solarize.threshold if spec.solarize is not None else SOLARIZE_NEVER
        return cls(params.crop_box, params.flip, dense["blend"].transpose(1, 2, 0), hue_images,
                   tuple(dense["hue"][index, p] for p, index in enumerate(hue_images)),
                   np.flatnonzero(blurred), params.blur_sigma[blurred],
                   np.where(solarized, threshold, SOLARIZE_NEVER))

    def to(self, device: torch.device) -> ViewPlan:
        """The plan with every array as a float32 tensor on ``device``, moved in one copy.

        (float32 holds the integers used here, indices and pixel boxes, exactly.)
        """
        entries = [(f.name, np.asarray(array, np.float32)) for f in dataclasses.fields(self)
                   for array in _as_tuple(getattr(self, f.name))]
        flat = torch.from_numpy(np.concatenate([array.ravel() for _, array in entries]))
        if device.type == "cuda":
            flat = flat.pin_memory()
        pieces = flat.to(device, non_blocking=True).split([array.size for _, array in entries])
        moved: dict[str, list[torch.Tensor]] = {}
        for (name, array), piece in zip(entries, pieces, strict=True):
            moved.setdefault(name, []).append(piece.view(array.shape))
        return ViewPlan(**{name: tuple(parts) if isinstance(getattr(self, name), tuple) else parts[0]
                           for name, parts in moved.items()})


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def apply_view(images: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """The whole view for a uint8 NHWC/NCHW batch -> float32 NCHW (normalised if the spec says so).

    crop -> flip -> colour jitter -> grayscale -> blur -> solarize -> normalise, each with the image's
    own parameters from ``params`` (as drawn by ``common.augment.sample_view_params``).
    """
    return _view_of_floats(to_float_nchw(images), params, spec)


def _view_of_floats(x: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """:func:`apply_view` on a float32 NCHW batch in [0, 1]."""
    host = ViewPlan.of(params, spec)
    plan = host.to(x.device)
    x = resized_crop(x, plan.crop_box, spec.crop.size, plan.flip)
    for position in range(5):
        weights = host.blend_weights[position]
        if np.any(weights[0] != 1.0) or np.any(weights[1:] != 0.0):
            x = blend_(x, *plan.blend_weights[position])
        if position < 4 and len(host.hue_images[position]):
            index = plan.hue_images[position].long()
            x.index_copy_(0, index, adjust_hue(x.index_select(0, index), plan.hue_deltas[position]))
    if len(host.blur_images):
        index = plan.blur_images.long()
        x.index_copy_(0, index, gaussian_blur(x.index_select(0, index), plan.blur_sigma,
                                              spec.blur.kernel_size))
    if np.any(host.solarize_threshold != SOLARIZE_NEVER):
        x = solarize(x, plan.solarize_threshold.view(-1, 1, 1, 1))
    if spec.normalize is not None:
        x = normalize_(x, spec.normalize.mean, spec.normalize.std)
    return x


class BatchAugmenter:
    """Both views of a uint8 batch already on the training device, in a handful of tensor ops.

    >>> augment = BatchAugmenter(preset("simclr", 32), device="cuda")
    >>> view1, view2 = augment(images_uint8_on_device, params1, params2)  # float32 NCHW, normalised
    """

    def __init__(self, pair_spec: PairSpec, device: torch.device | str, *, channels_last: bool = False):
        self.pair_spec = pair_spec
        self.device = torch.device(device)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, params1: ViewParams, params2: ViewParams
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.device.type != self.device.type:
            raise ValueError(f"images are on {images.device} but the augmenter was built for "
                             f"{self.device}: move the batch first (images.to({str(self.device)!r}))")
        x = to_float_nchw(images)  # converted once, shared by both views
        view1, view2 = (self._layout(_view_of_floats(x, params, spec))
                        for params, spec in zip((params1, params2), self.pair_spec.views, strict=True))
        return view1, view2

    def _layout(self, view: torch.Tensor) -> torch.Tensor:
        return view.contiguous(memory_format=torch.channels_last) if self.channels_last else view
