"""common/arch.py (ResNet specs, parameter counts) and common/weights.py (portable safetensors)."""

import json
import math
import os
import re

import numpy as np
import pytest

from common import augment
from common.arch import ARCHS, encoder_spec, feature_dim, parameter_count, resnet_spec, tensor_shapes
from common.weights import FORMAT, EncoderWeightsError, load_encoder, save_encoder

# ---------------------------------------------------------------------------------------------
# Specs and parameter counts


@pytest.mark.parametrize(
    ("name", "image_size", "expected"),
    [
        # torchvision's counts minus its classifier fc (512 * 1000 + 1000 = 513,000, or 2,049,000)
        ("resnet18", 224, 11_689_512 - 513_000),
        ("resnet34", 224, 21_797_672 - 513_000),
        ("resnet50", 224, 25_557_032 - 2_049_000),
        # the CIFAR stem: a 3x3x3x64 stem kernel (1,728 weights) instead of 7x7x3x64 (9,408)
        ("resnet18", 32, 11_689_512 - 513_000 - 9_408 + 1_728),
        ("resnet50", 32, 25_557_032 - 2_049_000 - 9_408 + 1_728),
    ],
)
def test_parameter_count_matches_torchvision(name, image_size, expected):
    assert parameter_count(resnet_spec(name, image_size)) == expected


def test_small_resnet_has_resnet18_topology_at_a_quarter_width():
    full, small = resnet_spec("resnet18", 32), resnet_spec("resnet18_small", 32)
    assert small.widths == tuple(w // 4 for w in full.widths) == (16, 32, 64, 128)
    assert small.blocks_per_stage == full.blocks_per_stage
    assert list(tensor_shapes(small)) == list(tensor_shapes(full))  # same names, in order
    # Every conv kernel has in and out channels / 4 (the stem's in stays at 3 RGB channels), so
    # conv weights shrink 16x except the stem's 4x; each BN has 4x fewer entries.
    for name, shape in tensor_shapes(full).items():
        small_shape = tensor_shapes(small)[name]
        if name == "stem.conv.kernel":
            assert small_shape == (3, 3, 3, 16)
        elif name.endswith("kernel"):
            assert small_shape == (*shape[:2], shape[2] // 4, shape[3] // 4)
        else:
            assert small_shape == (shape[0] // 4,)


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet34", 512),
                                           ("resnet50", 2048), ("resnet18_small", 128),
                                           ("resnet10_small", 128)])
def test_feature_dim(name, dim):
    assert name in ARCHS
    assert feature_dim(resnet_spec(name, 96)) == dim


@pytest.mark.parametrize(("image_size", "stem"), [(28, "cifar"), (32, "cifar"), (33, "imagenet"),
                                                  (64, "imagenet"), (96, "imagenet")])
def test_stem_follows_image_size_with_the_augmentation_threshold(image_size, stem):
    spec = resnet_spec("resnet18", image_size)
    assert spec.stem == stem
    kernel = tensor_shapes(spec)["stem.conv.kernel"]
    assert kernel == ((3, 3, 3, 64) if stem == "cifar" else (7, 7, 3, 64))
    # One rule: the CIFAR stem exactly where the presets pick their small-image (no blur) variant.
    assert (augment.preset("simclr", image_size).view1.blur is None) == (stem == "cifar")


def test_shortcuts_exactly_where_resolution_or_width_changes():
    def shortcuts(name):
        return sorted(k.split(".shortcut")[0] for k in tensor_shapes(resnet_spec(name, 32))
                      if k.endswith("shortcut.conv.kernel"))

    assert shortcuts("resnet18") == ["stage2.block0", "stage3.block0", "stage4.block0"]
    # A bottleneck's first block also widens 64 -> 256 channels at stage 1.
    assert shortcuts("resnet50") == [f"stage{s}.block0" for s in (1, 2, 3, 4)]
    shapes = tensor_shapes(resnet_spec("resnet50", 32))
    assert shapes["stage1.block0.shortcut.conv.kernel"] == (1, 1, 64, 256)
    assert shapes["stage2.block0.shortcut.conv.kernel"] == (1, 1, 256, 512)
    assert shapes["stage4.block2.conv2.kernel"] == (3, 3, 512, 512)
    assert shapes["stage4.block2.conv3.kernel"] == (1, 1, 512, 2048)
    assert shapes["stage4.block2.bn3.moving_variance"] == (2048,)


def test_tensor_count_per_architecture():
    # 5 tensors per conv+BN pair (kernel + 4 BN) ; resnet18: stem + 8 blocks x 2 + 3 shortcuts = 20.
    assert len(tensor_shapes(resnet_spec("resnet18", 32))) == 5 * 20
    assert len(tensor_shapes(resnet_spec("resnet50", 32))) == 5 * (1 + 16 * 3 + 4)


def test_bn_defaults_are_torch_convention():
    spec = resnet_spec("resnet50", 224)
    assert (spec.bn_eps, spec.bn_momentum) == (1e-5, 0.1)


def test_a_runs_configuration_names_its_encoder_spec():
    config = {"arch": "resnet18_small", "image_size": 64, "zero_init_residual": False}
    assert encoder_spec(config) == resnet_spec("resnet18_small", 64, zero_init_residual=False)
    assert encoder_spec(config).stem == "imagenet" and not encoder_spec(config).zero_init_residual
    # a run saved before the key existed was initialised with zero gammas
    assert encoder_spec({"arch": "resnet18_small", "image_size": 32}).zero_init_residual is True


@pytest.mark.parametrize(("name", "size", "message"), [
    ("resnet101", 32, "unknown architecture 'resnet101'; choose one of resnet18, "),
    ("resnet18", 4, "image_size must be an integer >= 8, got 4"),
    ("resnet18", 3.5, "image_size must be an integer >= 8, got 3.5"),
])
def test_bad_spec_requests_are_refused(name, size, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resnet_spec(name, size)


# ---------------------------------------------------------------------------------------------
# Portable weights


def _random_tensors(spec, seed=0):
    """Random weights; BatchNorm variances positive, as any BatchNorm computes them."""
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal(shape).astype(np.float32)
               for name, shape in tensor_shapes(spec).items()}
    return {name: np.abs(t) if name.endswith("moving_variance") else t for name, t in tensors.items()}


@pytest.fixture
def small_spec():
    return resnet_spec("resnet18_small", 32)


def test_round_trip_keeps_every_value_and_metadata(tmp_path, small_spec):
    tensors = _random_tensors(small_spec)
    path = tmp_path / "enc" / "encoder.safetensors"
    save_encoder(path, tensors, small_spec, 32, "numpy")
    loaded, metadata = load_encoder(path, expected_spec=small_spec)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], value)
    assert metadata["format"] == FORMAT
    assert (metadata["arch"], metadata["stem"], metadata["image_size"]) == ("resnet18_small",
                                                                           "cifar", 32)
    assert metadata["framework"] == "numpy"
    assert metadata["spec"] == small_spec
    assert [p.name for p in path.parent.iterdir()] == ["encoder.safetensors"]  # no temp file left


def test_float64_input_is_stored_as_float32(tmp_path, small_spec):
    tensors = {k: v.astype(np.float64) for k, v in _random_tensors(small_spec).items()}
    save_encoder(tmp_path / "e.safetensors", tensors, small_spec, 32, "numpy")
    loaded, _ = load_encoder(tmp_path / "e.safetensors")
    assert all(v.dtype == np.float32 for v in loaded.values())
    np.testing.assert_array_equal(loaded["stem.conv.kernel"],
                                  tensors["stem.conv.kernel"].astype(np.float32))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda t: {**t, "stem.conv.kernel": t["stem.conv.kernel"].astype(np.float16)}, "float16, not float32"),
    (lambda t: {**t, "stem.bn.gamma": np.full_like(t["stem.bn.gamma"], np.nan)}, "NaN or infinite"),
    (lambda t: {**t, "stem.bn.moving_variance": -t["stem.bn.moving_variance"]}, "negative variances"),
])
def test_a_file_of_other_dtypes_or_non_finite_weights_is_refused(tmp_path, small_spec, damage, message):
    """Written by another tool (save_encoder writes finite float32 only): one clear error."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    save_encoder(tmp_path / "good.safetensors", _random_tensors(small_spec), small_spec, 32, "numpy")
    with safe_open(tmp_path / "good.safetensors", framework="numpy") as file:
        metadata = file.metadata()
    save_file(damage(load_file(tmp_path / "good.safetensors")), tmp_path / "bad.safetensors", metadata)
    with pytest.raises(EncoderWeightsError, match=message):
        load_encoder(tmp_path / "bad.safetensors", expected_spec=small_spec)


def test_save_refuses_weights_it_would_refuse_to_load(tmp_path, small_spec):
    """A diverged encoder is not exported into a file that every later load would refuse."""
    tensors = _random_tensors(small_spec)
    tensors["stage1.block0.conv1.kernel"][0, 0, 0, 0] = np.inf
    with pytest.raises(EncoderWeightsError, match="the tensors to save: stage1.block0.conv1.kernel holds"):
        save_encoder(tmp_path / "e.safetensors", tensors, small_spec, 32, "numpy")
    assert not (tmp_path / "e.safetensors").exists()


def test_the_file_is_readable_as_the_umask_allows_and_written_atomically(tmp_path, small_spec,
                                                                          monkeypatch):
    path = tmp_path / "e.safetensors"
    previous = os.umask(0o022)
    try:
        save_encoder(path, _random_tensors(small_spec), small_spec, 32, "numpy")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # not tempfile's private 0600
    good = path.read_bytes()

    def full_disk(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_encoder(path, _random_tensors(small_spec, seed=1), small_spec, 32, "numpy")
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


def test_the_file_is_plain_safetensors_with_hwio_kernels(tmp_path, small_spec):
    save_encoder(tmp_path / "e.safetensors", _random_tensors(small_spec), small_spec, 32, "numpy")
    raw = (tmp_path / "e.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["format"] == FORMAT
    assert header["stem.conv.kernel"] == {"dtype": "F32", "shape": [3, 3, 3, 16],
                                          "data_offsets": header["stem.conv.kernel"]["data_offsets"]}


def test_save_refuses_missing_extra_and_misshaped_tensors(tmp_path, small_spec):
    tensors = _random_tensors(small_spec)
    path = tmp_path / "e.safetensors"
    missing = dict(tensors)
    del missing["stage3.block0.shortcut.bn.gamma"]
    with pytest.raises(EncoderWeightsError, match="missing.*stage3.block0.shortcut.bn.gamma"):
        save_encoder(path, missing, small_spec, 32, "numpy")
    with pytest.raises(EncoderWeightsError, match="unexpected.*fc.kernel"):
        save_encoder(path, {**tensors, "fc.kernel": np.zeros((128, 10))}, small_spec, 32, "numpy")
    wrong = {**tensors, "stem.conv.kernel": tensors["stem.conv.kernel"].transpose(3, 2, 0, 1)}
    with pytest.raises(EncoderWeightsError, match="HWIO"):
        save_encoder(path, wrong, small_spec, 32, "numpy")
    with pytest.raises(EncoderWeightsError, match="image size"):
        save_encoder(path, tensors, small_spec, 224, "numpy")  # a CIFAR-stem spec at 224 px
    assert not path.exists()


def test_load_refuses_another_architecture_with_a_clear_message(tmp_path, small_spec):
    save_encoder(tmp_path / "e.safetensors", _random_tensors(small_spec), small_spec, 32, "numpy")
    with pytest.raises(EncoderWeightsError, match="resnet18_small.*cifar.*resnet18 with"):
        load_encoder(tmp_path / "e.safetensors", expected_spec=resnet_spec("resnet18", 32))
    with pytest.raises(EncoderWeightsError, match="imagenet stem"):
        load_encoder(tmp_path / "e.safetensors", expected_spec=resnet_spec("resnet18_small", 96))


def test_load_refuses_missing_corrupt_and_foreign_files(tmp_path, small_spec):
    from safetensors.numpy import save_file

    with pytest.raises(FileNotFoundError, match="export"):
        load_encoder(tmp_path / "absent.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(EncoderWeightsError, match="not a readable safetensors"):
        load_encoder(tmp_path / "corrupt.safetensors")
    save_file(_random_tensors(small_spec), str(tmp_path / "foreign.safetensors"))
    with pytest.raises(EncoderWeightsError, match="not a portable encoder file"):
        load_encoder(tmp_path / "foreign.safetensors")
    # another model's bfloat16 file: told what it is, from its metadata, before a tensor is read
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "llm.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(EncoderWeightsError, match="not a portable encoder file"):
        load_encoder(tmp_path / "llm.safetensors")


def test_load_refuses_a_file_whose_tensors_disagree_with_its_metadata(tmp_path, small_spec):
    from safetensors.numpy import save_file

    tensors = _random_tensors(small_spec)
    tensors["stage1.block0.bn1.beta"] = np.zeros(17, np.float32)
    metadata = {"format": FORMAT, "arch": "resnet18_small", "stem": "cifar", "image_size": "32",
                "framework": "hand-made"}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(EncoderWeightsError, match=r"stage1.block0.bn1.beta.*\(17,\).*\(16,\)"):
        load_encoder(tmp_path / "bad.safetensors")


def test_parameter_count_is_the_trainable_part_of_the_portable_tensors(small_spec):
    shapes = tensor_shapes(small_spec)
    stats = sum(math.prod(s) for n, s in shapes.items() if "moving_" in n)
    assert parameter_count(small_spec) + stats == sum(math.prod(s) for s in shapes.values())
    assert stats == 2 * sum(s[0] for n, s in shapes.items() if n.endswith(".gamma"))
