"""pytorch_simclr/model.py: encoders match common/arch.py, the head's layout, portable weights."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from common.arch import ARCHS, feature_dim, parameter_count, resnet_spec, tensor_shapes
from common.weights import EncoderWeightsError, load_encoder
from pytorch_simclr.model import (
    CompactResNet,
    ProjectionHead,
    ScaleOnlyBatchNorm1d,
    SimCLRModel,
    build_encoder,
    encoder_from_portable,
    encoder_to_portable,
    export_encoder,
    import_encoder,
    torch_name,
)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("image_size", [32, 96])
def test_encoder_parameters_and_tensors_match_the_spec(name, image_size):
    spec = resnet_spec(name, image_size)
    encoder = build_encoder(spec)
    assert sum(p.numel() for p in encoder.parameters()) == parameter_count(spec)
    portable = encoder_to_portable(encoder, spec)
    assert {k: v.shape for k, v in portable.items()} == tensor_shapes(spec)
    assert encoder.feature_dim == feature_dim(spec)


def test_small_encoder_output_and_stem_geometry():
    spec = resnet_spec("resnet18_small", 32)
    encoder = build_encoder(spec).eval()
    seen = {}
    encoder.layer4.register_forward_hook(lambda m, i, o: seen.update(layer4=o.shape))
    h = encoder(torch.randn(3, 3, 32, 32))
    assert h.shape == (3, 128)
    assert seen["layer4"] == (3, 128, 4, 4)  # CIFAR stem: 32 px / 8 (three stride-2 stages)
    assert isinstance(encoder.maxpool, nn.Identity)


def test_cifar_and_imagenet_stems_of_a_torchvision_resnet():
    cifar = build_encoder(resnet_spec("resnet18", 32))
    assert (cifar.conv1.kernel_size, cifar.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(cifar.maxpool, nn.Identity) and isinstance(cifar.fc, nn.Identity)
    imagenet = build_encoder(resnet_spec("resnet18", 96))
    assert (imagenet.conv1.kernel_size, imagenet.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    seen = {}
    imagenet.layer4.register_forward_hook(lambda m, i, o: seen.update(layer4=o.shape))
    imagenet.eval()(torch.randn(1, 3, 96, 96))
    assert seen["layer4"] == (1, 512, 3, 3)  # ImageNet stem: 96 px / 32


def test_bottleneck_strides_on_the_3x3_conv():
    encoder = build_encoder(resnet_spec("resnet50", 96))
    first = encoder.layer2[0]
    assert (first.conv1.stride, first.conv2.stride, first.downsample[0].stride) == (
        (1, 1), (2, 2), (2, 2))


def test_compact_resnet_has_torchvision_structure():
    # Built at standard width, the composed trunk has exactly torchvision resnet18's tensors.
    spec = resnet_spec("resnet18", 96)
    ours = CompactResNet(spec).state_dict()
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    theirs = {k: v for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_bn_hyperparameters_come_from_the_spec():
    spec = resnet_spec("resnet18_small", 32)
    bns = [m for m in build_encoder(spec).modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == sum(1 for k in tensor_shapes(spec) if k.endswith(".gamma"))
    assert {(m.eps, m.momentum) for m in bns} == {(spec.bn_eps, spec.bn_momentum)}


@pytest.mark.parametrize(
    ("portable", "torch_key"),
    [("stem.conv.kernel", "conv1.weight"), ("stem.bn.moving_variance", "bn1.running_var"),
     ("stage1.block1.conv2.kernel", "layer1.1.conv2.weight"),
     ("stage3.block0.bn1.beta", "layer3.0.bn1.bias"),
     ("stage2.block0.shortcut.conv.kernel", "layer2.0.downsample.0.weight"),
     ("stage4.block0.shortcut.bn.gamma", "layer4.0.downsample.1.weight")],
)
def test_portable_names_map_to_torchvision_names(portable, torch_key):
    assert torch_name(portable) == torch_key


def test_kernels_are_exported_hwio():
    spec = resnet_spec("resnet18_small", 32)
    encoder = build_encoder(spec)
    portable = encoder_to_portable(encoder, spec)
    weight = encoder.layer2[0].conv1.weight.detach().numpy()  # (out, in, kh, kw) = (32, 16, 3, 3)
    kernel = portable["stage2.block0.conv1.kernel"]
    assert kernel.shape == (3, 3, 16, 32)
    assert kernel[2, 0, 5, 7] == weight[7, 5, 2, 0]
    np.testing.assert_array_equal(portable["stage2.block0.bn1.moving_variance"],
                                  encoder.layer2[0].bn1.running_var.numpy())


def _trained_statistics(encoder, seed):
    """Give the BN running statistics non-trivial values (a few training-mode forwards)."""
    gen = torch.Generator().manual_seed(seed)
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            encoder(torch.rand(8, 3, 32, 32, generator=gen) * 2 + 0.5)
    return encoder.eval()


def test_export_import_round_trip_gives_identical_outputs(tmp_path):
    spec = resnet_spec("resnet18_small", 32)
    torch.manual_seed(0)
    source = _trained_statistics(build_encoder(spec), seed=1)
    path = tmp_path / "encoder.safetensors"
    export_encoder(path, source, spec, image_size=32)
    torch.manual_seed(1)
    target = build_encoder(spec).eval()
    x = torch.rand(4, 3, 32, 32)
    assert not torch.allclose(source(x), target(x))  # different weights before the import
    metadata = import_encoder(path, target, spec)
    assert (metadata["framework"], metadata["arch"]) == ("pytorch", "resnet18_small")
    assert torch.equal(source(x), target(x))
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, target.state_dict()[key]), key
    tensors, _ = load_encoder(path)
    np.testing.assert_array_equal(tensors["stem.bn.moving_mean"], source.bn1.running_mean.numpy())


def test_import_refuses_weights_of_another_architecture(tmp_path):
    small = resnet_spec("resnet18_small", 32)
    export_encoder(tmp_path / "small.safetensors", build_encoder(small), small, 32)
    full = resnet_spec("resnet18", 32)
    with pytest.raises(EncoderWeightsError, match="resnet18_small"):
        import_encoder(tmp_path / "small.safetensors", build_encoder(full), full)


def test_portable_conversion_refuses_a_mismatched_encoder():
    with pytest.raises(ValueError, match="do not match resnet18_small"):
        encoder_to_portable(build_encoder(resnet_spec("resnet18_small", 96)),
                            resnet_spec("resnet18_small", 32))
    spec = resnet_spec("resnet18_small", 32)
    tensors = encoder_to_portable(build_encoder(spec), spec)
    tensors["stem.bn.gamma"] = np.ones(15, np.float32)
    with pytest.raises(EncoderWeightsError, match="stem.bn.gamma"):
        encoder_from_portable(build_encoder(spec), spec, tensors)


def test_projection_head_layout_follows_simclr_code():
    head = ProjectionHead(in_dim=128, hidden_dim=64, out_dim=32, num_layers=2)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, ScaleOnlyBatchNorm1d]
    assert all(m.bias is None for m in head if isinstance(m, nn.Linear))
    assert head[4].bias is None and head[4].weight.shape == (32,)
    # 128*64 + (gamma, beta) 2*64 + 64*32 + gamma 32
    assert sum(p.numel() for p in head.parameters()) == 128 * 64 + 2 * 64 + 64 * 32 + 32
    deeper = ProjectionHead(in_dim=128, hidden_dim=64, out_dim=32, num_layers=3)
    assert sum(isinstance(m, nn.ReLU) for m in deeper) == 2
    assert deeper(torch.randn(5, 128)).shape == (5, 32)
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(16, 16, num_layers=0)


def test_scale_only_batchnorm_normalises_then_scales_without_shift():
    bn = ScaleOnlyBatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
    x = torch.randn(10, 3) * 4 + 7
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps) * bn.weight
    torch.testing.assert_close(bn(x), expected)
    assert [name for name, _ in bn.named_parameters()] == ["weight"]
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(3))


def test_simclr_model_returns_representation_and_projection():
    spec = resnet_spec("resnet18_small", 32)
    model = SimCLRModel(build_encoder(spec), ProjectionHead(feature_dim(spec), 64, 16)).eval()
    x = torch.rand(2, 3, 32, 32)
    h, z = model(x)
    assert torch.equal(h, model.encoder(x))
    assert torch.equal(z, model.head(h))
    assert (h.shape, z.shape) == ((2, 128), (2, 16))


@pytest.mark.parametrize("name", ["resnet18", "resnet18_small", "resnet50"])
def test_every_residual_branch_starts_as_zero(name):
    """spec.zero_init_residual: the last BN gamma of every block is 0, all other gammas are 1."""
    spec = resnet_spec(name, 32)
    state = build_encoder(spec).state_dict()
    last = "bn3" if spec.block == "bottleneck" else "bn2"
    gammas = {k: v for k, v in state.items() if k.endswith(".weight") and state[k].ndim == 1}
    zero = [k for k, v in gammas.items() if torch.all(v == 0)]
    assert zero and all(f".{last}." in k for k in zero)
    assert len(zero) == sum(spec.blocks_per_stage)
    assert all(torch.all(v == 1) for k, v in gammas.items() if k not in zero)


@pytest.mark.parametrize("argv", [[], ["--no-zero-init-residual"]])
def test_the_command_line_chooses_the_residual_branches_initialisation(argv):
    """``--no-zero-init-residual`` reaches the encoders that training (SimCLR and the supervised
    baseline) and evaluation build."""
    from pytorch_simclr.model import build_classifier, build_model
    from pytorch_simclr.train import parse_request

    config = parse_request(argv).config
    expected = 1.0 if argv else 0.0
    for encoder in (build_model(config).encoder, build_classifier(config, 10).encoder):
        last = [module.bn2.weight for module in encoder.modules() if hasattr(module, "bn2")]
        assert len(last) == 8 and all(torch.all(gamma == expected) for gamma in last)


def test_recalibrated_bn_statistics_are_those_of_the_batches():
    from types import SimpleNamespace

    from pytorch_simclr.evaluate import TorchEncoder

    torch.manual_seed(0)
    encoder = build_encoder(resnet_spec("resnet18_small", 32))
    wrapped = TorchEncoder(SimpleNamespace(encoder=encoder), {}, torch.device("cpu"))
    batch = np.random.default_rng(0).uniform(-2, 2, (32, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():  # batch statistics; moves the running statistics a tenth of the way
        in_training = encoder.train()(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    encoder.eval()
    assert np.abs(wrapped.features(batch) - in_training).max() > 0.1
    wrapped.recalibrate_bn([batch])
    # equal up to PyTorch's running variance being the unbiased one (n / (n - 1), n >= 32 * 4 * 4:
    # 1e-3 in a standard deviation per BN layer; measured at the output: 1.7e-3 at most, 3.2e-3
    # relative where |feature| > 0.1)
    np.testing.assert_allclose(wrapped.features(batch), in_training, rtol=5e-3, atol=5e-4)
    assert {m.momentum for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    assert not encoder.training  # left in the mode it was in
    # Over batches of 24 and 8 images, the stem BN's statistics are the image-weighted mean of
    # the two batches' statistics (the last batch alone, or an equal weighting, would differ).
    stem_bn = next(m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    hook = stem_bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        for part in (batch[:24], batch[24:]):
            encoder(torch.from_numpy(part).permute(0, 3, 1, 2))
    hook.remove()
    means = [x.mean(dim=(0, 2, 3)) for x in seen]
    variances = [x.var(dim=(0, 2, 3), unbiased=True) for x in seen]
    wrapped.recalibrate_bn([batch[:24], batch[24:]])
    np.testing.assert_allclose(stem_bn.running_mean, (24 * means[0] + 8 * means[1]) / 32, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(stem_bn.running_var, (24 * variances[0] + 8 * variances[1]) / 32,
                               rtol=1e-5)
    assert not np.allclose(means[0], means[1], rtol=1e-2)  # so the weighting is seen
