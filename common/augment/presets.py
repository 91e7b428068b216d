"""The published augmentation recipes of SimCLR, MoCo v2 and BYOL as :class:`PairSpec` values.

``preset(name, size)`` returns the recipe for square views of ``size`` pixels. Sizes up to 32
(``SMALL_IMAGE_MAX_SIZE``) select each method's small-image (CIFAR) variant, larger sizes the
ImageNet recipe with the blur kernel scaled to the view (``kernel_size_for``). Every recipe flips
with p = 0.5 and draws crops with aspect ratio in (3/4, 4/3).

Normalisation: by default the CIFAR-10 training-set statistics for small-image variants and the
ImageNet statistics otherwise; pass ``mean`` and ``std`` (both, on the 0..1 scale) to use a
dataset's own statistics, or call ``without_normalize`` for display.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from common.arch import SMALL_IMAGE_MAX_SIZE  # one threshold for the stem and the augmentation

from .spec import (
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

# Per-channel statistics on the 0..1 scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10 training set, per-pixel std over all 50,000 images. (The popular (0.2023, 0.1994,
# 0.2010), used e.g. by the MoCo CIFAR demo, is the mean of per-image stds: a different quantity.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def simclr(size: int, normalize: Normalize) -> PairSpec:
    """SimCLR (Chen et al. 2020, appendix A; google-research/simclr).

    Colour distortion of strength s: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, then
    grayscale p 0.2; crop scale (0.08, 1); flip. ImageNet (s = 1.0): Gaussian blur p 0.5, sigma
    U(0.1, 2.0), kernel 10% of the side. CIFAR (32 px): s = 0.5 and no blur -- the authors'
    CIFAR-10 command in google-research/simclr's README (``--color_jitter_strength=0.5
    --use_blur=False``), also appendix B.9.
    """
    small = size <= SMALL_IMAGE_MAX_SIZE
    s = 0.5 if small else 1.0
    view = ViewSpec(
        crop=RandomResizedCrop(size, scale=(0.08, 1.0)),
        flip=HorizontalFlip(0.5),
        jitter=ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=0.8),
        grayscale=Grayscale(0.2),
        blur=None if small else GaussianBlur(0.5, (0.1, 2.0), kernel_size=kernel_size_for(size)),
        normalize=normalize,
    )
    return PairSpec(view, view)


def mocov2(size: int, normalize: Normalize) -> PairSpec:
    """MoCo v2 "aug-plus" (Chen et al. 2020, arXiv:2003.04297; facebookresearch/moco main_moco.py).

    ImageNet: crop scale (0.2, 1); ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8; grayscale p 0.2;
    Gaussian blur p 0.5, sigma U(0.1, 2.0); flip. (MoCo blurs with PIL's radius-sigma filter; here
    the kernel is the shared 10%-of-the-side rule, like SimCLR.) Small images (32 px): the MoCo
    authors' CIFAR-10 demo (facebookresearch/moco, colab/moco_cifar10_demo.ipynb): crop scale
    (0.08, 1), the same jitter and grayscale, no blur. (solo-learn's cifar mocov2plus.yaml, via
    augmentations/symmetric_weak.yaml, uses the same values plus blur p 0.5.)
    """
    small = size <= SMALL_IMAGE_MAX_SIZE
    view = ViewSpec(
        crop=RandomResizedCrop(size, scale=(0.08, 1.0) if small else (0.2, 1.0)),
        flip=HorizontalFlip(0.5),
        jitter=ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        grayscale=Grayscale(0.2),
        blur=None if small else GaussianBlur(0.5, (0.1, 2.0), kernel_size=kernel_size_for(size)),
        normalize=normalize,
    )
    return PairSpec(view, view)


def byol(size: int, normalize: Normalize) -> PairSpec:
    """BYOL (Grill et al. 2020, table 6; deepmind-research byol/utils/augmentations.py).

    Both views: crop scale (0.08, 1); flip; ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8 in random order;
    grayscale p 0.2. Asymmetric: view 1 blur p 1.0 and no solarize, view 2 blur p 0.1 and solarize
    p 0.2 (threshold 0.5); blur sigma U(0.1, 2.0), kernel 10% of the side. Small images (32 px):
    solo-learn's scripts/pretrain/cifar/byol.yaml (augmentations/asymmetric.yaml): the same but no
    blur in either view (solarize p 0.0 / 0.2 kept).
    """
    small = size <= SMALL_IMAGE_MAX_SIZE

    def view(blur_p: float, solarize_p: float) -> ViewSpec:
        blur = GaussianBlur(blur_p, (0.1, 2.0), kernel_size=kernel_size_for(size))
        return ViewSpec(
            crop=RandomResizedCrop(size, scale=(0.08, 1.0)),
            flip=HorizontalFlip(0.5),
            jitter=ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            grayscale=Grayscale(0.2),
            blur=None if small else blur,
            solarize=Solarize(solarize_p, threshold=0.5),
            normalize=normalize,
        )

    return PairSpec(view(blur_p=1.0, solarize_p=0.0), view(blur_p=0.1, solarize_p=0.2))


def supervised(size: int, normalize: Normalize) -> PairSpec:
    """The supervised baseline's views (``pytorch_simclr/supervised.py``): a random resized crop, scale
    (0.08, 1), and a flip, no colour distortion -- torchvision's ImageNet training transform
    (``RandomResizedCrop`` + ``RandomHorizontalFlip``). (CIFAR classifiers often pad by 4 and crop
    instead; a padded crop is not one of this project's ops.) Only view 1 is used."""
    view = ViewSpec(crop=RandomResizedCrop(size, scale=(0.08, 1.0)), flip=HorizontalFlip(0.5),
                    normalize=normalize)
    return PairSpec(view, view)


PRESETS: dict[str, Callable[[int, Normalize], PairSpec]] = {
    "simclr": simclr,
    "mocov2": mocov2,
    "byol": byol,
    "supervised": supervised,
}


def default_normalize(size: int) -> Normalize:
    """CIFAR-10 statistics for small-image variants (size <= 32), ImageNet statistics otherwise."""
    if size <= SMALL_IMAGE_MAX_SIZE:
        return Normalize(CIFAR10_MEAN, CIFAR10_STD)
    return Normalize(IMAGENET_MEAN, IMAGENET_STD)


def preset(name: str, size: int, mean=None, std=None) -> PairSpec:
    """The augmentation pair of method ``name`` (a key of ``PRESETS``) for ``size``-pixel views.

    ``mean`` and ``std`` (three values each, 0..1 scale) replace the default normalisation
    (:func:`default_normalize`); give both or neither.
    """
    if name not in PRESETS:
        raise InvalidSpecError(f"unknown augmentation preset {name!r}; choose one of {list(PRESETS)}")
    kernel_size_for(size)  # validates size with a clear message
    if (mean is None) != (std is None):
        raise InvalidSpecError("give both mean and std, or neither (for the default statistics)")
    normalize = default_normalize(size) if mean is None else Normalize(mean, std)
    return PRESETS[name](size, normalize)


def without_normalize(pair: PairSpec) -> PairSpec:
    """The same pair with normalisation removed: views stay on the 0..1 scale (for display)."""
    return PairSpec(
        dataclasses.replace(pair.view1, normalize=None),
        dataclasses.replace(pair.view2, normalize=None),
    )
