"""tensorflow_moco/model.py: encoders match common/arch.py and PyTorch's outputs, portable weights,
the head, split BN, and the MoCo container (momentum update, key BN, queue)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import tests.tf_setup  # noqa: F401  (splits the CPU for MirroredStrategy before any TF op runs)
from common.arch import ARCHS, ResNetSpec, feature_dim, parameter_count, resnet_spec, tensor_shapes
from common.weights import EncoderWeightsError
from pytorch_simclr import model as torch_model
from tensorflow_moco.model import (
    BatchNorm,
    MoCo,
    build_encoder,
    build_head,
    encoder_from_portable,
    encoder_to_portable,
    export_encoder,
    import_encoder,
)

TINY = ResNetSpec("tiny", "basic", (1, 1), (4, 8), "cifar", 1)


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_counts_and_tensors_match_the_spec_for_both_stems(name):
    for image_size in (32, 64):
        spec = resnet_spec(name, image_size)
        encoder = build_encoder(spec)
        assert sum(int(np.prod(v.shape)) for v in encoder.trainable_variables) == parameter_count(spec)
        shapes = {k: v.shape for k, v in encoder_to_portable(encoder, spec).items()}
        assert shapes == tensor_shapes(spec)
        assert tuple(encoder.outputs[0].shape) == (None, feature_dim(spec))


@pytest.mark.parametrize("argv", [[], ["--no-zero-init-residual"]])
def test_the_command_line_chooses_the_residual_branches_initialisation(argv):
    """``--no-zero-init-residual`` reaches both encoders that training and evaluation build."""
    from tensorflow_moco.evaluate import build_moco
    from tensorflow_moco.train import parse_request

    moco = build_moco(parse_request(argv).config)
    expected = 1.0 if argv else 0.0
    for encoder in (moco.query_encoder, moco.key_encoder):
        last = [layer.gamma.numpy() for layer in encoder.layers if layer.name.endswith(".bn2")]
        assert len(last) == 8 and all(np.all(gamma == expected) for gamma in last)


def test_bn_conventions_initialisation_and_stem_geometry():
    spec = resnet_spec("resnet18_small", 64)
    encoder = build_encoder(spec)
    bns = [layer for layer in encoder.layers if isinstance(layer, BatchNorm)]
    assert {(layer.momentum, layer.epsilon) for layer in bns} == {(0.9, 1e-5)}
    zero = [layer.name for layer in bns if np.all(layer.gamma.numpy() == 0)]
    assert sorted(zero) == sorted(f"stage{s}.block{b}.bn2" for s in range(1, 5) for b in range(2))
    assert all(np.all(layer.gamma.numpy() == 1) for layer in bns if layer.name not in zero)
    # He-normal fan-out: std sqrt(2 / (3 * 3 * 128)) on the widest 3x3 kernel
    kernel = encoder.get_layer("stage4.block1.conv1").kernel.numpy()
    assert kernel.std() == pytest.approx(np.sqrt(2 / (9 * 128)), rel=0.05)
    stage4 = keras.Model(encoder.input, encoder.get_layer("stage4.block1.bn2").output)
    assert stage4(tf.zeros((1, 64, 64, 3))).shape == (1, 2, 2, 128)  # 64 px / 32


def _trained_torch_encoder(spec, seed):
    """A PyTorch encoder in eval mode whose BN parameters and statistics are all non-trivial (a zero
    gamma would hide whole residual branches from the comparison)."""
    torch.manual_seed(seed)
    encoder = torch_model.build_encoder(spec)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return encoder.eval()


@pytest.mark.parametrize(("spec", "image_size"), [
    (resnet_spec("resnet18_small", 32), 32),  # CIFAR stem
    (resnet_spec("resnet18_small", 45), 45),  # ImageNet stem, odd sides: stride-2 padding matters
    (ResNetSpec("tiny-bottleneck", "bottleneck", (1, 2), (4, 8), "imagenet", 4), 37),
])
def test_torch_encoder_gives_the_same_features_in_tensorflow(tmp_path, spec, image_size):
    source = _trained_torch_encoder(spec, seed=image_size)
    x = np.random.default_rng(0).random((2, image_size, image_size, 3), dtype=np.float32)
    with torch.no_grad():
        want = source(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    encoder = build_encoder(spec)
    if spec.name in ARCHS:  # through the file, as a user would
        torch_model.export_encoder(tmp_path / "torch.safetensors", source, spec, image_size)
        metadata = import_encoder(tmp_path / "torch.safetensors", encoder, spec)
        assert metadata["framework"] == "pytorch"
    else:  # a spec save_encoder does not know: the portable tensors directly
        encoder_from_portable(encoder, spec, torch_model.encoder_to_portable(source, spec))
    got = encoder(x, training=False).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_export_import_round_trip_and_refusals(tmp_path):
    spec = resnet_spec("resnet18_small", 32)
    keras.utils.set_random_seed(0)
    source = build_encoder(spec)
    for variable in source.non_trainable_variables:  # moving statistics away from 0 and 1
        variable.assign(np.random.default_rng(1).uniform(0.5, 1.5, variable.shape))
    path = tmp_path / "encoder.safetensors"
    export_encoder(path, source, spec, image_size=32)
    target = build_encoder(spec)
    x = np.random.default_rng(2).random((2, 32, 32, 3), dtype=np.float32)
    assert not np.allclose(source(x, training=False), target(x, training=False))
    assert import_encoder(path, target, spec)["framework"] == "tensorflow"
    np.testing.assert_array_equal(source(x, training=False), target(x, training=False))
    full = resnet_spec("resnet18", 32)
    with pytest.raises(EncoderWeightsError, match="resnet18_small"):
        import_encoder(path, build_encoder(full), full)
    with pytest.raises(ValueError, match="not resnet18_small"):
        encoder_to_portable(build_encoder(resnet_spec("resnet18_small", 64)), spec)
    # a deeper encoder holds every tensor of the shallower spec: its extra blocks are refused too
    with pytest.raises(ValueError, match=r"the encoder has tensors resnet18 \(cifar stem\) does not, "
                                         r"e.g. \['stage1.block2"):
        encoder_to_portable(build_encoder(resnet_spec("resnet34", 32)), full)


def test_head_layout_and_pytorch_default_initialisation():
    # Seeded: the 16 biases of the last layer all fall below 0.9 of the bound with probability
    # 0.9^16 = 19%, so an unseeded draw (whatever the tests before left in the RNG) fails at random.
    keras.utils.set_random_seed(0)
    head = build_head(in_dim=400, hidden_dim=300, out_dim=16, num_layers=2)
    dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.kernel.shape for layer in dense] == [(400, 300), (300, 16)]
    assert sum(int(np.prod(v.shape)) for v in head.trainable_variables) == 400 * 300 + 300 + 300 * 16 + 16
    for layer, fan_in in zip(dense, (400, 300), strict=True):  # U(+-1/sqrt(fan_in)), both
        for values in (layer.kernel.numpy(), layer.bias.numpy()):
            assert np.abs(values).max() <= 1 / np.sqrt(fan_in)
            assert np.abs(values).max() > 0.9 / np.sqrt(fan_in)
    assert len(build_head(8, 8, 4, num_layers=1).layers) == 1  # MoCo v1's linear head
    with pytest.raises(ValueError, match="num_layers"):
        build_head(8, 8, 4, num_layers=0)


def test_split_bn_normalises_contiguous_groups_and_averages_their_statistics():
    bn = BatchNorm(num_splits=2, momentum=0.9, epsilon=1e-5)
    x = np.random.default_rng(3).normal(2.0, 3.0, (8, 3, 3, 4)).astype(np.float32)
    y = bn(x, training=True).numpy()
    groups = x.reshape(2, 4, 3, 3, 4)
    mean, var = groups.mean(axis=(1, 2, 3), keepdims=True), groups.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, ((groups - mean) / np.sqrt(var + 1e-5)).reshape(x.shape), atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * mean.mean(axis=0).ravel(), atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * var.mean(axis=0).ravel(),
                               atol=1e-6)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    plain.build(x.shape)
    plain.set_weights(bn.get_weights())
    np.testing.assert_allclose(bn(x, training=False), plain(x, training=False), atol=1e-6)
    with pytest.raises(ValueError, match="does not split"):
        BatchNorm(num_splits=3)(x, training=True)


# ---------------------------------------------------------------------------------------------
# The MoCo container
# ---------------------------------------------------------------------------------------------
def _moco(**kwargs) -> MoCo:
    keras.utils.set_random_seed(0)
    return MoCo(TINY, **{"projection_dim": 4, "hidden_dim": 8, "queue_size": 8, **kwargs})


def test_key_network_starts_as_a_copy_and_is_not_what_the_optimizer_trains():
    moco = _moco()
    for key, query in zip(moco.key_variables, moco.query_variables, strict=True):
        np.testing.assert_array_equal(key.numpy(), query.numpy())
        assert key is not query
    keys = {id(v) for v in moco.key_variables}
    assert not keys & {id(v) for v in moco.query_variables}
    assert len(moco.query_variables) == len(moco.query_encoder.trainable_variables) + 4


def test_momentum_update_moves_key_weights_by_exactly_m():
    moco = _moco(key_bn_stats="skip")
    rng = np.random.default_rng(4)
    for query in moco.query_variables + moco.query_encoder.non_trainable_variables:
        query.assign(query.numpy() + rng.normal(size=query.shape))
    stats = moco.key_encoder.non_trainable_variables
    before, old_stats = [v.numpy() for v in moco.key_variables], [v.numpy() for v in stats]
    moco.momentum_update(0.9)
    for key, query, old in zip(moco.key_variables, moco.query_variables, before, strict=True):
        np.testing.assert_allclose(key.numpy(), 0.9 * old + 0.1 * query.numpy(), rtol=1e-6, atol=1e-7)
    for key, old in zip(stats, old_stats, strict=True):  # "skip": buffers untouched, as the official
        np.testing.assert_array_equal(key.numpy(), old)


@pytest.mark.parametrize("mode", ["copy", "average"])
def test_key_bn_statistics_modes(mode):
    moco = _moco(key_bn_stats=mode)
    query_stats = moco.query_encoder.non_trainable_variables
    key_stats = moco.key_encoder.non_trainable_variables
    for v in query_stats:
        v.assign(v.numpy() + 1.0)
    old = [v.numpy() for v in key_stats]
    moco.momentum_update(0.75)
    for key, query, before in zip(key_stats, query_stats, old, strict=True):
        want = query.numpy() if mode == "copy" else 0.75 * before + 0.25 * query.numpy()
        np.testing.assert_allclose(key.numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match="key_bn_stats"):
        _moco(key_bn_stats="ema")


def test_key_encoder_normalises_with_batch_statistics_in_training():
    moco = _moco()
    x = np.random.default_rng(5).random((8, 8, 8, 3), dtype=np.float32)
    train = moco.key(x, training=True).numpy()
    for v in moco.key_encoder.non_trainable_variables:  # moving statistics far off
        v.assign(np.full(v.shape, 50.0))
    np.testing.assert_allclose(moco.key(x, training=True).numpy(), train, atol=1e-6)
    assert np.abs(moco.key(x, training=False).numpy() - train).max() > 1e-3


def test_queue_starts_normalised_and_enqueue_is_fifo_with_wraparound():
    moco = _moco(queue_size=8)
    np.testing.assert_allclose(np.linalg.norm(moco.queue.numpy(), axis=1), 1.0, rtol=1e-6)
    initial = moco.queue.numpy()
    batches = [np.full((4, 4), float(i + 1), np.float32) for i in range(3)]
    moco.enqueue(batches[0])
    assert int(moco.queue_ptr.numpy()) == 4
    np.testing.assert_array_equal(moco.queue.numpy()[:4], batches[0])
    np.testing.assert_array_equal(moco.queue.numpy()[4:], initial[4:])
    moco.enqueue(batches[1])
    assert int(moco.queue_ptr.numpy()) == 0  # wrapped around
    moco.enqueue(batches[2])  # overwrites the oldest keys
    np.testing.assert_array_equal(moco.queue.numpy(), np.concatenate([batches[2], batches[1]]))
    assert int(moco.queue_ptr.numpy()) == 4
    with pytest.raises(ValueError, match="not a multiple"):
        moco.enqueue(np.zeros((3, 4), np.float32))


def test_recalibrated_bn_statistics_are_those_of_the_batches_also_with_split_bn():
    from tensorflow_moco.evaluate import TFEncoder

    batch = np.random.default_rng(0).uniform(-2, 2, (6, 16, 16, 3)).astype(np.float32)
    plain, split = _moco(), _moco(bn_splits=2)
    for a, b in zip(plain.query_encoder.weights, split.query_encoder.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    in_training = plain.query_encoder(tf.constant(batch), training=True).numpy()  # whole-batch BN
    wrapped = TFEncoder(split, {})
    assert np.abs(wrapped.features(batch) - in_training).max() > 0.1
    wrapped.recalibrate_bn([batch[:5]] + [batch])  # 5 does not split in 2: split BN is off meanwhile
    norms = [layer for layer in split.query_encoder.layers if isinstance(layer, BatchNorm)]
    assert {(layer.num_splits, round(layer.momentum, 6)) for layer in norms} == {(2, 0.9)}
    wrapped.recalibrate_bn([batch])
    np.testing.assert_allclose(wrapped.features(batch), in_training, rtol=1e-4, atol=1e-5)
    # Over batches of 5 and 1 images, the first BN's statistics are the image-weighted mean of the
    # two batches' (the last batch alone, or equal weights, would differ).
    first = norms[0]
    seen = [keras.Model(split.query_encoder.input, first.input)(tf.constant(part)).numpy()
            for part in (batch[:5], batch[5:])]
    means = [x.mean(axis=(0, 1, 2)) for x in seen]
    variances = [x.var(axis=(0, 1, 2)) for x in seen]
    wrapped.recalibrate_bn([batch[:5], batch[5:]])
    np.testing.assert_allclose(first.moving_mean.numpy(), (5 * means[0] + means[1]) / 6, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(first.moving_variance.numpy(), (5 * variances[0] + variances[1]) / 6,
                               rtol=1e-4, atol=1e-6)
    assert np.abs(means[0] - means[1]).max() > 1e-2
