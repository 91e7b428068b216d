"""BYOL's networks in Keras 3: the ResNet encoder f and the MLPs g (projector) and q (predictor).

BYOL (Grill et al. 2020, section 3.1): the online network is f, then g, then q; the target network
is f and g only, with its own weights (``keras_byol/target.py`` moves them). Everything here is
``keras.layers``, so the same code runs on the TensorFlow, JAX and PyTorch backends.

The encoder follows ``common/arch.py``'s spec exactly as torchvision builds it, in channels-last
layout: inputs are float images ``(N, H, W, 3)``. Each layer is named after its portable name with
underscores for dots (``stem_conv``, ``stage2_block0_bn1``, ``stage2_block0_shortcut_conv``; the
PyTorch backend refuses dots in names), so a variable's portable name (``common/weights.py``) is
``stage2.block0.bn1.gamma`` for ``stage2_block0_bn1``'s ``gamma``, and the encoder moves between
frameworks through one safetensors file (``export_encoder`` / ``import_encoder``).

Two conversions from PyTorch, both exact in what the layer computes:

- **BatchNorm**: Keras' ``momentum`` is the weight of the *old* running value, PyTorch's the weight of
  the new batch statistic, so ``momentum = 1 - spec.bn_momentum`` (0.9) and ``epsilon =
  spec.bn_eps`` (1e-5; Keras' default is 1e-3). One difference stays, as in every Keras and
  TensorFlow layer: the running variance averages the *biased* batch variance, PyTorch's the
  unbiased one (n / (n - 1) larger; docs/encoders.md), so the inference statistics of a network
  trained here differ from PyTorch's by about 1/n.
- **Padding**: ``padding="same"`` pads a stride-2 convolution asymmetrically (nothing on top/left,
  one row/column at the bottom/right for an even input), PyTorch symmetrically. Every strided
  convolution and the max-pool therefore get an explicit ``ZeroPadding2D(k // 2)`` and
  ``padding="valid"``, as PyTorch's ``padding=k // 2``. The max-pool's zeros act as PyTorch's
  ``-inf`` padding because its input comes out of a ReLU (>= 0). Stride-1 convolutions use "same",
  which is symmetric for odd kernels.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from common.arch import ResNetSpec, tensor_shapes
from common.weights import load_encoder, save_encoder, validate_tensors


def conv_initializer() -> keras.initializers.Initializer:
    """torchvision's ResNet init, ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.

    N(0, 2 / fan_out) with fan_out = kh * kw * out_channels, not truncated (Keras' "he_normal" is a
    truncated normal on fan_in).
    """
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _batch_norm(spec: ResNetSpec, name: str, zero_gamma: bool = False,
                synchronized: bool = False) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(
        momentum=1.0 - spec.bn_momentum, epsilon=spec.bn_eps,
        gamma_initializer="zeros" if zero_gamma else "ones", synchronized=synchronized, name=name)


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    """Bias-free convolution, padded like PyTorch's ``padding=kernel // 2`` (module docstring)."""
    padding = "same"
    if stride > 1 and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                               kernel_initializer=conv_initializer(), name=name)(x)


def _block(x, spec: ResNetSpec, prefix: str, width: int, stride: int, synchronized: bool):
    """One residual block: basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""
    in_channels = x.shape[-1]
    out_channels = width * spec.expansion
    if spec.block == "basic":
        convs = [(3, width, stride), (3, width, 1)]
    else:
        convs = [(1, width, 1), (3, width, stride), (1, out_channels, 1)]
    branch = x
    for index, (kernel, filters, conv_stride) in enumerate(convs, start=1):
        last = index == len(convs)
        branch = _conv(branch, filters, kernel, conv_stride, f"{prefix}_conv{index}")
        branch = _batch_norm(spec, f"{prefix}_bn{index}", zero_gamma=last and spec.zero_init_residual,
                             synchronized=synchronized)(branch)
        if not last:
            branch = keras.layers.ReLU(name=f"{prefix}_relu{index}")(branch)
    shortcut = x
    if stride != 1 or in_channels != out_channels:
        shortcut = _conv(x, out_channels, 1, stride, f"{prefix}_shortcut_conv")
        shortcut = _batch_norm(spec, f"{prefix}_shortcut_bn", synchronized=synchronized)(shortcut)
    x = keras.layers.Add(name=f"{prefix}_add")([branch, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(x)


def build_encoder(spec: ResNetSpec, name: str = "encoder", synchronized: bool = False) -> keras.Model:
    """The encoder f: float images (N, H, W, 3) -> representations h (N, feature_dim(spec)).

    Stem: CIFAR (3x3 stride 1, no max-pool; SimCLR appendix B.9) or ImageNet (7x7 stride 2, 3x3
    stride-2 max-pool). Four stages, the first block of stages 2-4 with stride 2 on its 3x3 conv
    (torchvision's "ResNet v1.5"), a 1x1 conv + BN shortcut where a block changes resolution or
    width; global average pooling at the end, no classifier. Convolutions are He-normal (fan-out)
    and bias-free; with ``spec.zero_init_residual`` the last BN of each residual branch starts at
    gamma 0 (every block starts as the identity; ``common/arch.py``). ``synchronized``: BatchNorm
    over all replicas of a ``tf.distribute`` strategy (TensorFlow only; ``keras_byol/distributed.py``).
    """
    inputs = keras.Input((None, None, 3), name="images")
    if spec.stem == "cifar":
        x = _conv(inputs, spec.widths[0], 3, 1, "stem_conv")
    else:
        x = _conv(inputs, spec.widths[0], 7, 2, "stem_conv")
    x = _batch_norm(spec, "stem_bn", synchronized=synchronized)(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    if spec.stem == "imagenet":
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (num_blocks, width) in enumerate(
        zip(spec.blocks_per_stage, spec.widths, strict=True), start=1
    ):
        for block in range(num_blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _block(x, spec, f"stage{stage}_block{block}", width, stride, synchronized)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name=name)


def build_mlp(in_dim: int, hidden_dim: int, out_dim: int, name: str,
              synchronized: bool = False) -> keras.Sequential:
    """BYOL's projector g or predictor q: Linear(hidden) - BN - ReLU - Linear(out).

    Grill et al. 2020, section 3.3: "a linear layer with output size 4096 followed by batch
    normalization, rectified linear units (ReLU), and a final linear layer with output dimension
    256"; the predictor has the same architecture. As deepmind-research ``byol/utils/networks.py``
    (``MLP``): the first Linear has a bias, the last one none (``with_bias=False``), the BN has
    gamma and beta, decay 0.9 and eps 1e-5 (``configs/byol.py`` ``bn_config``). Initialisation is
    Haiku's ``hk.Linear`` default, which BYOL's code uses: weights from a normal truncated at two
    standard deviations, stddev ``1 / sqrt(fan_in)`` (no variance correction: Keras'
    ``TruncatedNormal`` draws the same), biases 0. ``synchronized`` as :func:`build_encoder`.
    """

    def linear(units: int, fan_in: int, use_bias: bool, layer_name: str) -> keras.layers.Dense:
        return keras.layers.Dense(
            units, use_bias=use_bias, name=layer_name,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=1.0 / math.sqrt(fan_in)))

    return keras.Sequential(
        [
            keras.Input((in_dim,)),
            linear(hidden_dim, in_dim, True, "linear1"),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=synchronized,
                                            name="bn"),
            keras.layers.ReLU(name="relu"),
            linear(out_dim, hidden_dim, False, "linear2"),
        ],
        name=name,
    )


# --------------------------------------------------------------------------------------------------
# Portable weights (common/weights.py): the layer names are the portable names.
# --------------------------------------------------------------------------------------------------
def portable_prefix(layer_name: str) -> str:
    """``stage2_block0_shortcut_conv`` -> ``stage2.block0.shortcut.conv`` (no portable part has "_")."""
    return layer_name.replace("_", ".")


def _portable_variables(encoder: keras.Model, spec: ResNetSpec) -> dict[str, keras.Variable]:
    """Portable name -> the encoder's variable, after checking the encoder is built from ``spec``."""
    variables = {f"{portable_prefix(layer.name)}.{v.name}": v
                 for layer in encoder.layers for v in layer.weights}
    expected = tensor_shapes(spec)
    actual = {name: tuple(v.shape) for name, v in variables.items()}
    if actual != expected:
        wrong = sorted(set(actual).symmetric_difference(expected))
        wrong += sorted(n for n in set(actual) & set(expected) if actual[n] != expected[n])
        raise ValueError(
            f"the encoder's variables do not match {spec.name} ({spec.stem} stem), e.g. "
            f"{wrong[:5]}; build it with build_encoder(spec) for the same arch and image size"
        )
    return {name: variables[name] for name in expected}


def encoder_to_portable(encoder: keras.Model, spec: ResNetSpec) -> dict[str, np.ndarray]:
    """The encoder's weights and BN statistics under portable names (kernels are HWIO already)."""
    return {name: np.asarray(keras.ops.convert_to_numpy(v.value), np.float32)
            for name, v in _portable_variables(encoder, spec).items()}


def encoder_from_portable(encoder: keras.Model, spec: ResNetSpec,
                          tensors: dict[str, np.ndarray]) -> None:
    """Copy portable ``tensors`` into ``encoder`` in place."""
    validate_tensors(tensors, spec, "the portable tensors")
    for name, variable in _portable_variables(encoder, spec).items():
        variable.assign(np.asarray(tensors[name], dtype=variable.dtype))


def export_encoder(path: str | os.PathLike, encoder: keras.Model, spec: ResNetSpec,
                   image_size: int) -> None:
    """Write the encoder to ``path`` in the portable safetensors layout."""
    framework = f"keras-{keras.backend.backend()}"
    save_encoder(path, encoder_to_portable(encoder, spec), spec, image_size, framework=framework)


def import_encoder(path: str | os.PathLike, encoder: keras.Model, spec: ResNetSpec) -> dict:
    """Load portable weights from ``path`` (written by any chapter) into ``encoder``; the metadata."""
    tensors, metadata = load_encoder(path, expected_spec=spec)
    encoder_from_portable(encoder, spec, tensors)
    return metadata
