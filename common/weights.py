"""Portable encoder weights: one safetensors layout that every chapter exports and imports.

Layout (also in ``docs/encoders.md``). All tensors are float32 and channels-last:

- convolution kernels are HWIO, ``(kh, kw, in_channels, out_channels)`` (TensorFlow/Keras order;
  PyTorch's OIHW weight is ``weight.permute(2, 3, 1, 0)``);
- names follow the spec's structure (``common/arch.py``), stages counted from 1, blocks from 0,
  convs within a block from 1::

      stem.conv.kernel
      stem.bn.{gamma,beta,moving_mean,moving_variance}
      stage{S}.block{B}.conv{I}.kernel
      stage{S}.block{B}.bn{I}.{gamma,beta,moving_mean,moving_variance}
      stage{S}.block{B}.shortcut.conv.kernel            (only where the block has a projection)
      stage{S}.block{B}.shortcut.bn.{gamma,beta,moving_mean,moving_variance}

- ``moving_mean`` / ``moving_variance`` are used as stored at inference in every framework, so a
  moved encoder gives the same outputs in eval mode (how they accumulate in training differs a
  little: PyTorch feeds the unbiased batch variance into the running average, Keras the biased one).
- the file's string metadata: ``format`` = ``"ssl-three-ways/encoder/v1"``, ``arch`` (an
  ``ARCHS`` name), ``stem``, ``image_size`` and ``framework`` (who wrote it).

Nothing framework-specific is stored (no ``num_batches_tracked``, no optimiser state); the
projection head is not part of the encoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from common.arch import ARCHS, ResNetSpec, resnet_spec, tensor_shapes
from common.runs import atomic_write_bytes

FORMAT = "ssl-three-ways/encoder/v1"
_METADATA_KEYS = ("format", "arch", "stem", "image_size", "framework")


class EncoderWeightsError(ValueError):
    """A portable weight file or tensor dict does not match the layout or the expected encoder."""


def validate_tensors(
    tensors: dict[str, np.ndarray], spec: ResNetSpec, source: str = "the tensors"
) -> None:
    """Raise ``EncoderWeightsError`` unless ``tensors`` has exactly ``tensor_shapes(spec)``."""
    expected = tensor_shapes(spec)
    missing = [name for name in expected if name not in tensors]
    extra = sorted(name for name in tensors if name not in expected)
    if missing or extra:
        raise EncoderWeightsError(
            f"{source} does not hold the tensors of {spec.name} ({spec.stem} stem): "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}. "
            "Export the encoder with the same arch and image size you import it into."
        )
    for name, shape in expected.items():
        actual = tuple(np.shape(tensors[name]))
        if actual != shape:
            raise EncoderWeightsError(
                f"{source}: tensor {name!r} has shape {actual}, expected {shape} for {spec.name} "
                "(conv kernels must be HWIO: kh, kw, in, out)."
            )


def _check_values(tensors: dict[str, np.ndarray], where: str) -> None:
    """Finite weights, and BatchNorm variances >= 0 (a negative one makes NaN features)."""
    broken = sorted(name for name, t in tensors.items() if not np.isfinite(t).all())
    if broken:
        raise EncoderWeightsError(f"{where}: {broken[0]} holds NaN or infinite values (the run had "
                                  "diverged?); export the encoder of a good checkpoint")
    negative = sorted(name for name, t in tensors.items()
                      if name.endswith("moving_variance") and (np.asarray(t) < 0).any())
    if negative:
        raise EncoderWeightsError(f"{where}: {negative[0]} holds negative variances, which no "
                                  "BatchNorm computes: the file is damaged; export the encoder again")


def save_encoder(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    spec: ResNetSpec,
    image_size: int,
    framework: str,
) -> None:
    """Write ``tensors`` (portable names, HWIO kernels) to ``path`` after validating them.

    The file is written whole or not at all (:func:`common.runs.atomic_write_bytes`), so a crash
    never leaves a half-written file under ``path``.
    """
    if spec.name not in ARCHS or resnet_spec(spec.name, image_size).stem != spec.stem:
        raise EncoderWeightsError(
            f"spec {spec.name} ({spec.stem} stem) is not what resnet_spec({spec.name!r}, "
            f"{image_size}) builds; pass the spec and the image size the encoder was built for."
        )
    validate_tensors(tensors, spec, "the tensors to save")
    _check_values(tensors, "the tensors to save")
    arrays = {
        name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in tensor_shapes(spec)
    }
    metadata = {
        "format": FORMAT,
        "arch": spec.name,
        "stem": spec.stem,
        "image_size": str(int(image_size)),
        "framework": str(framework),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _canonical_header(save(arrays, metadata=metadata)))


def _canonical_header(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its metadata in sorted key order.

    safetensors keeps the metadata in a Rust ``HashMap`` and writes it in that map's iteration
    order, which changes from one write to the next: the same tensors and metadata gave different
    bytes, so export -> import -> export was not byte-identical. The tensors' entries (already in a
    fixed order) and the data are kept as they are; only the header is rewritten, compact as
    safetensors writes it and space-padded to a multiple of 8 bytes as it pads it.
    """
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def load_encoder(
    path: str | os.PathLike, expected_spec: ResNetSpec | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """Read and validate a portable encoder file: ``(tensors, metadata)``.

    ``metadata`` has the keys ``format``, ``arch``, ``stem``, ``image_size`` (an int),
    ``framework`` and ``spec`` (the ``ResNetSpec`` the file describes). With ``expected_spec``,
    a file for another architecture or stem is refused with a message naming both.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no encoder weights at {path}; export them first (the chapter's export_encoder)"
        )
    try:
        with safe_open(path, framework="numpy") as file:
            raw = file.metadata() or {}
            portable = raw.get("format") == FORMAT and all(key in raw for key in _METADATA_KEYS)
            # Another model's file (gigabytes, or bfloat16) is refused below without reading a tensor.
            tensors = {name: file.get_tensor(name) for name in file.keys()} if portable else {}
    except (SafetensorError, ValueError, OSError, TypeError) as error:  # TypeError: e.g. bfloat16
        raise EncoderWeightsError(
            f"{path} is not a readable safetensors file of float32 tensors ({error}); re-export "
            "the encoder"
        ) from error
    if not portable:
        raise EncoderWeightsError(
            f"{path} is not a portable encoder file: metadata {raw!r} lacks format={FORMAT!r} "
            f"and the keys {_METADATA_KEYS}"
        )
    try:
        spec = resnet_spec(raw["arch"], int(raw["image_size"]))
    except ValueError as error:
        raise EncoderWeightsError(f"{path}: invalid metadata ({error})") from error
    if spec.stem != raw["stem"]:
        raise EncoderWeightsError(
            f"{path}: metadata says stem {raw['stem']!r} but image_size {raw['image_size']} "
            f"implies {spec.stem!r}"
        )
    if expected_spec is not None and (expected_spec.name, expected_spec.stem) != (
        spec.name,
        spec.stem,
    ):
        raise EncoderWeightsError(
            f"{path} holds {spec.name} with the {spec.stem} stem, but the encoder to load into is "
            f"{expected_spec.name} with the {expected_spec.stem} stem. It fits --arch {spec.name} "
            f"--image-size {raw['image_size']}: train --init-encoder with those flags, or evaluate "
            "--encoder on a run trained with them"
        )
    validate_tensors(tensors, spec, str(path))
    wrong = sorted(name for name, t in tensors.items() if t.dtype != np.float32)
    if wrong:
        raise EncoderWeightsError(f"{path}: {wrong[0]} is {tensors[wrong[0]].dtype}, not float32 (the "
                                  "portable layout); re-export the encoder in float32")
    _check_values(tensors, str(path))
    metadata = {**raw, "image_size": int(raw["image_size"]), "spec": spec}
    return tensors, metadata
