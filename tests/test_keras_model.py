"""keras_byol/model.py: encoders match common/arch.py and PyTorch, the MLP heads, portable weights.

In-process tests run on Keras' default backend (TensorFlow); the cross-framework suite
(tests/cross_framework/test_encoders.py) loads the same portable weights, and the encoders each chapter
trained, on JAX and PyTorch too.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
import torch

from common.arch import ARCHS, feature_dim, parameter_count, resnet_spec, tensor_shapes
from common.weights import EncoderWeightsError, load_encoder
from keras_byol.model import (
    build_encoder,
    build_mlp,
    encoder_from_portable,
    encoder_to_portable,
    export_encoder,
    import_encoder,
    portable_prefix,
)
from pytorch_simclr import model as torch_model


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("image_size", [32, 96])
def test_encoder_parameters_and_tensors_match_the_spec(name, image_size):
    spec = resnet_spec(name, image_size)
    encoder = build_encoder(spec)
    assert sum(int(np.prod(v.shape)) for v in encoder.trainable_weights) == parameter_count(spec)
    portable = encoder_to_portable(encoder, spec)
    assert {k: v.shape for k, v in portable.items()} == tensor_shapes(spec)
    assert encoder.output.shape == (None, feature_dim(spec))


def test_stems_and_stage_geometry():
    cifar = build_encoder(resnet_spec("resnet18_small", 32))
    assert cifar.get_layer("stem_conv").strides == (1, 1)
    assert "stem_pool" not in [layer.name for layer in cifar.layers]
    assert cifar.compute_output_spec(keras.KerasTensor((2, 32, 32, 3))).shape == (2, 128)
    imagenet = build_encoder(resnet_spec("resnet18_small", 96))
    assert imagenet.get_layer("stem_conv").kernel_size == (7, 7)
    assert imagenet.get_layer("stem_conv").padding == "valid"  # explicit symmetric ZeroPadding2D
    probe = keras.Model(imagenet.input, imagenet.get_layer("stage4_block1_out").output)
    assert probe.compute_output_spec(keras.KerasTensor((1, 96, 96, 3))).shape == (1, 3, 3, 128)


def test_bottleneck_strides_on_the_3x3_conv():
    encoder = build_encoder(resnet_spec("resnet50", 96))
    strides = [encoder.get_layer(f"stage2_block0_{n}").strides
               for n in ("conv1", "conv2", "shortcut_conv")]
    assert strides == [(1, 1), (2, 2), (2, 2)]


def test_batchnorm_and_conv_conventions():
    spec = resnet_spec("resnet18_small", 32)
    encoder = build_encoder(spec)
    bns = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == sum(1 for k in tensor_shapes(spec) if k.endswith(".gamma"))
    assert {(bn.momentum, bn.epsilon) for bn in bns} == {(1 - spec.bn_momentum, spec.bn_eps)}
    convs = [layer for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    assert not any(conv.use_bias for conv in convs)
    # He-normal on fan-out, not truncated: the widest kernels' std is sqrt(2 / (kh kw out)).
    kernel = keras.ops.convert_to_numpy(encoder.get_layer("stage4_block1_conv2").kernel)
    assert kernel.std() == pytest.approx(np.sqrt(2 / (3 * 3 * 128)), rel=0.03)
    assert np.abs(kernel).max() > 3 * kernel.std()  # a truncated normal would stop at 2 std


@pytest.mark.parametrize("name", ["resnet18_small", "resnet50"])
def test_every_residual_branch_starts_as_zero(name):
    spec = resnet_spec(name, 32)
    portable = encoder_to_portable(build_encoder(spec), spec)
    last = "bn3" if spec.block == "bottleneck" else "bn2"
    gammas = {k: v for k, v in portable.items() if k.endswith(".gamma")}
    zero = sorted(k for k, v in gammas.items() if np.all(v == 0))
    assert len(zero) == sum(spec.blocks_per_stage) and all(f".{last}." in k for k in zero)
    assert all(np.all(v == 1) for k, v in gammas.items() if k not in zero)


@pytest.mark.parametrize("argv", [[], ["--no-zero-init-residual"]])
def test_the_command_line_chooses_the_residual_branches_initialisation(argv):
    """``--no-zero-init-residual`` reaches the online and target encoders training builds."""
    from keras_byol.evaluate import build_byol
    from keras_byol.train import parse_request

    byol = build_byol(parse_request(argv).config)
    expected = 1.0 if argv else 0.0
    for encoder in (byol.online_encoder, byol.target_encoder):
        last = [keras.ops.convert_to_numpy(layer.gamma) for layer in encoder.layers
                if layer.name.endswith("_bn2")]
        assert len(last) == 8 and all(np.all(gamma == expected) for gamma in last)


def test_portable_prefix():
    assert portable_prefix("stage2_block0_shortcut_conv") == "stage2.block0.shortcut.conv"


def _with_moved_statistics(encoder, spec):
    """Non-trivial BN statistics (training-mode forwards) and gammas."""
    rng = np.random.default_rng(0)
    for _ in range(2):
        encoder(rng.random((4, 32, 32, 3)).astype(np.float32) * 2 + 0.5, training=True)
    tensors = encoder_to_portable(encoder, spec)
    for name in tensors:
        if name.endswith(".gamma"):
            tensors[name] = rng.uniform(0.5, 1.5, tensors[name].shape).astype(np.float32)
    encoder_from_portable(encoder, spec, tensors)
    return encoder


def test_export_import_round_trip_gives_identical_outputs(tmp_path):
    spec = resnet_spec("resnet18_small", 32)
    source = _with_moved_statistics(build_encoder(spec), spec)
    path = tmp_path / "encoder.safetensors"
    export_encoder(path, source, spec, image_size=32)
    target = build_encoder(spec)
    x = np.random.default_rng(1).random((3, 32, 32, 3)).astype(np.float32)
    assert not np.allclose(source(x), target(x))
    metadata = import_encoder(path, target, spec)
    assert (metadata["framework"], metadata["arch"]) == ("keras-tensorflow", "resnet18_small")
    np.testing.assert_array_equal(source(x, training=False), target(x, training=False))
    tensors, _ = load_encoder(path)
    np.testing.assert_array_equal(tensors["stage3.block0.shortcut.bn.moving_variance"],
                                  source.get_layer("stage3_block0_shortcut_bn").moving_variance)


@pytest.mark.parametrize("image_size", [32, 64])  # CIFAR stem; ImageNet stem with its max-pool
def test_pytorch_encoder_gives_the_same_features(tmp_path, image_size):
    spec = resnet_spec("resnet18_small", image_size)
    torch.manual_seed(0)
    source = torch_model.build_encoder(spec)
    with torch.no_grad():
        for module in source.modules():  # zero-init residual leaves every block's branch at 0:
            if isinstance(module, torch.nn.BatchNorm2d):  # give the branches a say
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for _ in range(2):
            source(torch.rand(8, 3, image_size, image_size) * 2 + 0.5)
    source.eval()
    path = tmp_path / "torch.safetensors"
    torch_model.export_encoder(path, source, spec, image_size=image_size)
    x = np.random.default_rng(2).random((2, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = source(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    encoder = build_encoder(spec)
    assert import_encoder(path, encoder, spec)["framework"] == "pytorch"
    ours = keras.ops.convert_to_numpy(encoder(x, training=False))
    assert np.max(np.abs(ours - expected)) <= 1e-4 * np.max(np.abs(expected))


def test_import_refuses_weights_of_another_architecture(tmp_path):
    small = resnet_spec("resnet18_small", 32)
    export_encoder(tmp_path / "small.safetensors", build_encoder(small), small, 32)
    imagenet_stem = resnet_spec("resnet18_small", 96)
    with pytest.raises(EncoderWeightsError, match="stem"):
        import_encoder(tmp_path / "small.safetensors", build_encoder(imagenet_stem), imagenet_stem)


def test_portable_conversion_refuses_a_mismatched_encoder():
    with pytest.raises(ValueError, match="do not match resnet18_small"):
        encoder_to_portable(build_encoder(resnet_spec("resnet18_small", 96)),
                            resnet_spec("resnet18_small", 32))
    spec = resnet_spec("resnet18_small", 32)
    tensors = encoder_to_portable(build_encoder(spec), spec)
    tensors["stem.bn.gamma"] = np.ones(15, np.float32)
    with pytest.raises(EncoderWeightsError, match="stem.bn.gamma"):
        encoder_from_portable(build_encoder(spec), spec, tensors)


def test_mlp_layout_and_haiku_initialisation():
    mlp = build_mlp(in_dim=256, hidden_dim=512, out_dim=64, name="projector")
    kinds = [type(layer) for layer in mlp.layers]
    assert kinds == [keras.layers.Dense, keras.layers.BatchNormalization, keras.layers.ReLU,
                     keras.layers.Dense]
    first, bn, _, last = mlp.layers
    assert first.use_bias and not last.use_bias
    np.testing.assert_array_equal(first.bias, np.zeros(512))
    assert (bn.momentum, bn.epsilon, bn.center, bn.scale) == (0.9, 1e-5, True, True)
    for layer, fan_in in ((first, 256), (last, 512)):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert np.abs(kernel).max() <= 2 / np.sqrt(fan_in)  # truncated at two stddev
        # a normal truncated at +-2 sigma has std 0.8796 sigma (Haiku does not correct it)
        assert kernel.std() == pytest.approx(0.8796 / np.sqrt(fan_in), rel=0.03)
    assert sum(int(np.prod(v.shape)) for v in mlp.trainable_weights) == (
        256 * 512 + 512 + 2 * 512 + 512 * 64)
    assert mlp(np.zeros((3, 256), np.float32)).shape == (3, 64)


def test_an_export_stopped_while_keras_saves_keeps_the_previous_keras_file(tmp_path, monkeypatch):
    """Keras writes a ``.keras`` file in place: a Ctrl-C or a full disk in the middle would leave a
    cut file where the good one was. The export saves to a temporary name and renames."""
    from keras_byol.evaluate import KerasEncoder, build_byol
    from keras_byol.train import parse_request

    config = parse_request(["--arch", "resnet10_small", "--image-size", "16"]).config
    encoder = KerasEncoder(build_byol(config), config)
    encoder.export(tmp_path / "encoder.safetensors")
    good = (tmp_path / "encoder.keras").read_bytes()

    def cut_short(path, *args, **kwargs):
        Path(path).write_bytes(b"PK cut")  # what an interrupted save leaves at its destination
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(encoder.model.online_encoder, "save", cut_short)
    with pytest.raises(OSError, match="No space left"):
        encoder.export(tmp_path / "encoder.safetensors")
    assert (tmp_path / "encoder.keras").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.keras", "encoder.safetensors"]
