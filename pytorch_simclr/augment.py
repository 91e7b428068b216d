"""SimCLR views in PyTorch, the classic way: ``torchvision.transforms.v2``, one image at a time.

This is the path to copy into your own project. :func:`build_view_transform` turns a
``common.augment.ViewSpec`` into a ``v2.Compose`` that DataLoader workers run image by image, and
:class:`TwoViewDataset` yields the two views of SimCLR's Algorithm 1 (Chen et al. 2020, sec. 2.1).
Each op is torchvision's own, with the exact semantics written once in
``common/augment/__init__.py``; tests/test_torch_augment.py checks it against the NumPy reference
``common.augment.ops`` (max abs difference <= 1/255 for the same parameters).

torchvision draws the random parameters itself, so this path cannot replay the shared per-step view
parameters of ``common/stream.py``; ``augment_batched.py`` can, and is the default for training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.augment import JITTER_OPS, PairSpec, ViewSpec


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
        check_uint8_rgb(images_uint8_nhwc.dtype == np.uint8, images_uint8_nhwc.shape,
                        images_uint8_nhwc.dtype, channel_axis=-1)
        self.images = images_uint8_nhwc
        self.view1 = build_view_transform(pair_spec.view1)
        self.view2 = build_view_transform(pair_spec.view2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return self.view1(image), self.view2(image)


def check_uint8_rgb(is_uint8: bool, shape, dtype, channel_axis: int) -> None:
    """Refuse anything but a uint8 RGB batch, with the conversion to make."""
    if not is_uint8 or len(shape) != 4 or shape[channel_axis] != 3:
        raise ValueError(
            f"expected a uint8 batch of RGB images (N, H, W, 3) or (N, 3, H, W), got dtype {dtype} "
            f"and shape {tuple(shape)}; convert with images.astype(np.uint8) / move channels last"
        )
