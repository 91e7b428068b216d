"""Framework-neutral ResNet encoder specs: the single definition every chapter builds from.

A ``ResNetSpec`` fixes a ResNet's topology (He et al. 2016, "Deep Residual Learning", Table 1) in
the exact form torchvision implements it, so that the PyTorch, TensorFlow and Keras encoders have the
same layers, the same parameter counts and the same portable tensor names (``common/weights.py``):

- no convolution has a bias (each conv is followed by BatchNorm, whose beta plays that role);
- a block's shortcut is a 1x1 convolution with stride ``s`` followed by BatchNorm whenever the block
  changes the resolution (``s != 1``) or the number of channels, and the identity otherwise;
- stages 2-4 downsample in their first block; in a bottleneck block the stride sits on the 3x3
  convolution (torchvision's "ResNet v1.5", not the 1x1 of the original paper);
- the stem is either the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) or, for small
  images (``image_size <= SMALL_IMAGE_MAX_SIZE``, 32), the CIFAR stem of SimCLR appendix B.9: one 3x3
  stride-1 conv and no max-pool, so a 32x32 image still reaches the last stage at 4x4. The same
  threshold picks each method's small-image (CIFAR) augmentation (``common/augment/presets.py``):
  a 48 px image gets the ImageNet stem *and* the ImageNet-style augmentation, never a mix.

Initialisation (the same in every chapter): convolutions He-normal with fan-out (torchvision's
ResNet), BatchNorm gamma 1 and beta 0, except the last BatchNorm of every residual branch, whose
gamma starts at 0 (``zero_init_residual``: each block starts as the identity; google-research/simclr
``tf2/resnet.py`` does this, ``BatchNormRelu(init_zero=True)``, after Goyal et al. 2017, section 5.1).
``--no-zero-init-residual`` (the configuration key ``zero_init_residual``) starts that gamma at 1
instead, torchvision's default and haiku's for basic blocks (ResNet-18/34; haiku's bottleneck
blocks start it at 0): the ablation that shows how much a random encoder's features depend on it
(docs/evaluation.md).

The encoder ends with global average pooling; the classifier ``fc`` is not part of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet18_small", "resnet10_small")

SMALL_IMAGE_MAX_SIZE = 32
"""Largest image side that counts as small: the CIFAR stem here, the CIFAR augmentation variants."""

_STANDARD_WIDTHS = (64, 128, 256, 512)
_TOPOLOGIES: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2), _STANDARD_WIDTHS),
    "resnet34": ("basic", (3, 4, 6, 3), _STANDARD_WIDTHS),
    "resnet50": ("bottleneck", (3, 4, 6, 3), _STANDARD_WIDTHS),
    # ResNet-18's topology at a quarter of the width: fast enough for CPU demos and tests.
    "resnet18_small": ("basic", (2, 2, 2, 2), (16, 32, 64, 128)),
    # One basic block per stage (ResNet-10) at the same width: about half the layers, so TensorFlow
    # traces and XLA compiles a step in about half the time; for the tests' training runs.
    "resnet10_small": ("basic", (1, 1, 1, 1), (16, 32, 64, 128)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}
_BN_STATS = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass(frozen=True)
class ResNetSpec:
    """The topology of one ResNet encoder.

    ``widths`` are the stage widths *before* expansion (a bottleneck stage of width 64 outputs 256
    channels). BatchNorm follows PyTorch's convention: in training, ``running = (1 - bn_momentum) *
    running + bn_momentum * batch_statistic``; Keras/TensorFlow's ``momentum`` is the weight of the
    *old* value, i.e. ``1 - bn_momentum`` (0.9 here).
    """

    name: str
    block: str  # "basic" | "bottleneck"
    blocks_per_stage: tuple[int, ...]
    widths: tuple[int, ...]
    stem: str  # "cifar" | "imagenet"
    expansion: int  # 1 for basic, 4 for bottleneck
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    zero_init_residual: bool = True  # gamma 0 in the last BN of each residual branch at init


def resnet_spec(name: str, image_size: int, zero_init_residual: bool = True) -> ResNetSpec:
    """The spec of architecture ``name`` for square images of side ``image_size``."""
    if name not in _TOPOLOGIES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    block, blocks, widths = _TOPOLOGIES[name]
    stem = "cifar" if image_size <= SMALL_IMAGE_MAX_SIZE else "imagenet"
    return ResNetSpec(name, block, blocks, widths, stem, _EXPANSION[block],
                      zero_init_residual=bool(zero_init_residual))


def encoder_spec(config: dict) -> ResNetSpec:
    """The spec a run's configuration names: its ``arch``, ``image_size`` and ``zero_init_residual``
    (absent from the configurations of runs made before the key existed, which all used 0)."""
    return resnet_spec(config["arch"], config["image_size"], config.get("zero_init_residual", True))


def feature_dim(spec: ResNetSpec) -> int:
    """Width of the representation h (after global average pooling): 512, 2048 or 128."""
    return spec.widths[-1] * spec.expansion


def _conv_kernel(kernel: int, in_channels: int, out_channels: int) -> tuple[int, ...]:
    return (kernel, kernel, in_channels, out_channels)  # HWIO, channels-last


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{stat}": (channels,) for stat in _BN_STATS}


def _block_convs(spec: ResNetSpec, in_channels: int, width: int) -> list[tuple[int, int, int]]:
    """(kernel, in, out) of each conv on a block's residual branch, in order."""
    if spec.block == "basic":
        return [(3, in_channels, width), (3, width, width)]
    return [(1, in_channels, width), (3, width, width), (1, width, width * spec.expansion)]


def tensor_shapes(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    """Every portable tensor of the encoder, name -> shape, in network order.

    Conv kernels are HWIO ``(kh, kw, in, out)``; each BatchNorm has ``gamma``, ``beta`` (trainable)
    and ``moving_mean``, ``moving_variance`` (running statistics). Stages count from 1, blocks within
    a stage and convs within a block from 0 and 1 respectively (see ``common/weights.py``).
    """
    if spec.block not in _EXPANSION or spec.stem not in ("cifar", "imagenet"):
        raise ValueError(f"invalid spec {spec}: block must be basic|bottleneck, stem cifar|imagenet")
    stem_width = spec.widths[0]
    stem_kernel = 3 if spec.stem == "cifar" else 7
    shapes = {"stem.conv.kernel": _conv_kernel(stem_kernel, 3, stem_width)}
    shapes |= _bn("stem.bn", stem_width)
    in_channels = stem_width
    for stage, (num_blocks, width) in enumerate(
        zip(spec.blocks_per_stage, spec.widths, strict=True), start=1
    ):
        out_channels = width * spec.expansion
        for block in range(num_blocks):
            prefix = f"stage{stage}.block{block}"
            for index, (kernel, c_in, c_out) in enumerate(
                _block_convs(spec, in_channels, width), start=1
            ):
                shapes[f"{prefix}.conv{index}.kernel"] = _conv_kernel(kernel, c_in, c_out)
                shapes |= _bn(f"{prefix}.bn{index}", c_out)
            downsamples = stage > 1 and block == 0
            if downsamples or in_channels != out_channels:
                shapes[f"{prefix}.shortcut.conv.kernel"] = _conv_kernel(1, in_channels, out_channels)
                shapes |= _bn(f"{prefix}.shortcut.bn", out_channels)
            in_channels = out_channels
    return shapes


def is_trainable(tensor_name: str) -> bool:
    """Conv kernels and BatchNorm gamma/beta are trained; moving statistics are not."""
    return not tensor_name.endswith((".moving_mean", ".moving_variance"))


def parameter_count(spec: ResNetSpec) -> int:
    """Trainable parameters of the encoder (without ``fc``): conv kernels + BN gamma and beta.

    ResNet-18 (ImageNet stem) has 11,176,512 = torchvision's 11,689,512 minus fc's 513,000; ResNet-50
    has 23,508,032; the CIFAR stem replaces the 7x7x3x64 = 9,408 stem weights by 3x3x3x64 = 1,728.
    """
    shapes = tensor_shapes(spec)
    return sum(math.prod(shape) for name, shape in shapes.items() if is_trainable(name))
