"""SimCLR's network in PyTorch: a torchvision ResNet encoder f and an MLP projection head g.

SimCLR (Chen et al. 2020, section 2.1): h = f(x) is the representation kept after pre-training,
z = g(h) the projection the contrastive loss sees. The encoder follows ``common/arch.py``'s spec with
torchvision's own blocks and names, and moves between frameworks through the portable weights of
``common/weights.py`` (``export_encoder`` / ``import_encoder``).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from common.arch import ResNetSpec, encoder_spec, feature_dim, tensor_shapes
from common.weights import load_encoder, save_encoder, validate_tensors

_TORCHVISION_RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """torchvision's ResNet initialisation of a convolution (He et al. 2015, fan-out)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _stem_conv(spec: ResNetSpec) -> nn.Conv2d:
    if spec.stem == "cifar":  # SimCLR appendix B.9: 3x3 stride 1, and no max-pool after it
        return _init_conv(nn.Conv2d(3, spec.widths[0], 3, stride=1, padding=1, bias=False))
    return _init_conv(nn.Conv2d(3, spec.widths[0], 7, stride=2, padding=3, bias=False))


def _stem_pool(spec: ResNetSpec) -> nn.Module:
    if spec.stem == "cifar":
        return nn.Identity()
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class CompactResNet(nn.Module):
    """A ResNet at widths torchvision's constructors do not offer, made of torchvision's blocks.

    It keeps torchvision's attribute names (``conv1``, ``bn1``, ``layer1``..``layer4``, each block's
    ``downsample``) and its initialisation, so it shares the portable-name mapping and the
    parameter count formula of the standard encoders.
    """

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        block = _BLOCKS[spec.block]
        self.conv1 = _stem_conv(spec)
        self.bn1 = nn.BatchNorm2d(spec.widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = _stem_pool(spec)
        in_channels = spec.widths[0]
        for stage, (num_blocks, width) in enumerate(
            zip(spec.blocks_per_stage, spec.widths, strict=True), start=1
        ):
            stride = 1 if stage == 1 else 2
            out_channels = width * block.expansion
            downsample = None
            if stride != 1 or in_channels != out_channels:
                downsample = nn.Sequential(
                    conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
                )
            blocks = [block(in_channels, width, stride, downsample)]
            blocks += [block(out_channels, width) for _ in range(num_blocks - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            in_channels = out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_stages = len(spec.widths)
        for module in self.modules():  # as torchvision.models.ResNet.__init__ does
            if isinstance(module, nn.Conv2d):
                _init_conv(module)
            if spec.zero_init_residual and isinstance(module, BasicBlock | Bottleneck):
                last_bn = module.bn3 if isinstance(module, Bottleneck) else module.bn2
                nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return torch.flatten(self.avgpool(x), 1)


def build_encoder(spec: ResNetSpec) -> nn.Module:
    """The encoder f: float images (N, 3, H, W) -> representations h (N, feature_dim(spec)).

    Standard widths use torchvision's constructor (random init, ``weights=None``) with ``fc``
    replaced by ``Identity``; the CIFAR stem swaps ``conv1`` for a 3x3 stride-1 conv and drops the
    max-pool. Other widths (``resnet18_small``) compose the same torchvision blocks. With
    ``spec.zero_init_residual`` the last BN of each residual branch starts at gamma 0 (torchvision's
    own ``zero_init_residual`` switch; common/arch.py says why).
    """
    if spec.name in _TORCHVISION_RESNETS and spec.widths == (64, 128, 256, 512):
        encoder = _TORCHVISION_RESNETS[spec.name](weights=None,
                                                  zero_init_residual=spec.zero_init_residual)
        encoder.fc = nn.Identity()
        if spec.stem == "cifar":
            encoder.conv1 = _stem_conv(spec)
            encoder.maxpool = _stem_pool(spec)
    else:
        encoder = CompactResNet(spec)
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps, module.momentum = spec.bn_eps, spec.bn_momentum
    encoder.feature_dim = feature_dim(spec)  # the width of h, for the head that follows
    return encoder


HEAD_INIT_STD = 0.01


class ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with gamma but no beta (Keras's ``center=False``).

    The last layer of SimCLR's head: google-research/simclr builds it as a bias-free dense layer and
    ``BatchNormRelu(relu=False, center=False)`` (``tf2/model.py``, ``ProjectionHead``).
    """

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)


class ProjectionHead(nn.Sequential):
    """SimCLR's projection head g (section 2.1 and appendix B.4 of SimCLR v1, section 2 of v2).

    ``num_layers`` linear layers, laid out as in the authors' code (google-research/simclr,
    ``ProjectionHead`` with ``proj_head_mode="nonlinear"``): every hidden layer is
    Linear(no bias) -> BatchNorm -> ReLU, and the last one Linear(no bias) -> BatchNorm without beta
    (no ReLU). ``num_layers=2`` is SimCLR v1's head, ``3`` is SimCLR v2's deeper head. The papers'
    text writes g as W2 relu(W1 h); the code's BatchNorm layers are what their results use. Every
    weight starts from N(0, 0.01^2), as the code's ``linear_layer`` (``random_normal stddev .01``).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128, num_layers: int = 2):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        widths = [in_dim] + [hidden_dim] * (num_layers - 1)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.Linear(width_in, width_out, bias=False),
                nn.BatchNorm1d(width_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Linear(widths[-1], out_dim, bias=False), ScaleOnlyBatchNorm1d(out_dim)]
        super().__init__(*layers)
        for layer in self:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=HEAD_INIT_STD)


class SimCLRModel(nn.Module):
    """f followed by g; ``forward(x)`` returns ``(h, z)``. h is the representation to evaluate."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.head(h)


def build_model(config: dict) -> SimCLRModel:
    """Encoder (``common/arch.py`` spec of ``config["arch"]``) + the configured projection head."""
    spec = encoder_spec(config)
    encoder = build_encoder(spec)
    head = ProjectionHead(encoder.feature_dim, config["projection_hidden_dim"],
                          config["projection_dim"], config["projection_layers"])
    return SimCLRModel(encoder, head)


def build_classifier(config: dict, num_classes: int) -> SimCLRModel:
    """Encoder + one linear layer to the classes: the supervised baseline's network
    (``supervised.py``); ``forward`` returns ``(h, class scores)``."""
    encoder = build_encoder(encoder_spec(config))
    return SimCLRModel(encoder, nn.Linear(encoder.feature_dim, num_classes))


# Portable name -> torchvision state-dict name, applied in order (see common/weights.py).
_NAME_RULES = (
    (r"^stem\.conv\.", "conv1."),
    (r"^stem\.bn\.", "bn1."),
    (r"^stage(\d+)\.block(\d+)\.", r"layer\1.\2."),
    (r"\.shortcut\.conv\.", ".downsample.0."),
    (r"\.shortcut\.bn\.", ".downsample.1."),
    (r"\.(kernel|gamma)$", ".weight"),
    (r"\.beta$", ".bias"),
    (r"\.moving_mean$", ".running_mean"),
    (r"\.moving_variance$", ".running_var"),
)


def torch_name(portable_name: str) -> str:
    """``stage2.block0.shortcut.bn.gamma`` -> ``layer2.0.downsample.1.weight``, etc."""
    for pattern, replacement in _NAME_RULES:
        portable_name = re.sub(pattern, replacement, portable_name)
    return portable_name


def _torch_shape(portable_shape: tuple[int, ...]) -> tuple[int, ...]:
    """HWIO (kh, kw, in, out) -> PyTorch's OIHW (out, in, kh, kw); vectors unchanged."""
    if len(portable_shape) == 4:
        kh, kw, c_in, c_out = portable_shape
        return (c_out, c_in, kh, kw)
    return portable_shape


def _portable_pairs(encoder: nn.Module, spec: ResNetSpec) -> dict[str, torch.Tensor]:
    """Portable name -> the encoder's tensor, after checking the encoder is built from ``spec``."""
    state = {k: v for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = {torch_name(name): _torch_shape(shape) for name, shape in tensor_shapes(spec).items()}
    actual = {name: tuple(tensor.shape) for name, tensor in state.items()}
    if actual != expected:
        wrong = sorted(set(actual).symmetric_difference(expected))
        wrong += sorted(n for n in set(actual) & set(expected) if actual[n] != expected[n])
        raise ValueError(
            f"the encoder's tensors do not match {spec.name} ({spec.stem} stem), e.g. "
            f"{wrong[:5]}; build it with build_encoder(spec) for the same arch and image size"
        )
    return {portable: state[torch_name(portable)] for portable in tensor_shapes(spec)}


def _to_channels_last(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().to("cpu", torch.float32).numpy()
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array  # OIHW -> HWIO


def encoder_to_portable(encoder: nn.Module, spec: ResNetSpec) -> dict[str, np.ndarray]:
    """The encoder's weights and BN statistics under portable names, HWIO float32 kernels."""
    return {name: _to_channels_last(t) for name, t in _portable_pairs(encoder, spec).items()}


@torch.no_grad()
def encoder_from_portable(
    encoder: nn.Module, spec: ResNetSpec, tensors: dict[str, np.ndarray]
) -> None:
    """Copy portable ``tensors`` into ``encoder`` in place (HWIO kernels back to OIHW)."""
    validate_tensors(tensors, spec, "the portable tensors")
    for name, target in _portable_pairs(encoder, spec).items():
        array = np.asarray(tensors[name])
        source = torch.from_numpy(array.transpose(3, 2, 0, 1) if array.ndim == 4 else array)
        target.copy_(source.to(target.dtype))


def export_encoder(
    path: str | os.PathLike, encoder: nn.Module, spec: ResNetSpec, image_size: int
) -> None:
    """Write the encoder to ``path`` in the portable safetensors layout."""
    save_encoder(path, encoder_to_portable(encoder, spec), spec, image_size, framework="pytorch")


def import_encoder(path: str | os.PathLike, encoder: nn.Module, spec: ResNetSpec) -> dict:
    """Load portable weights from ``path`` (written by any chapter) into ``encoder``; the metadata."""
    tensors, metadata = load_encoder(path, expected_spec=spec)
    encoder_from_portable(encoder, spec, tensors)
    return metadata
