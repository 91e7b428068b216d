"""The views compiled with ``torch.compile`` on the PyTorch backend (``--compile-views``).

Why a module of its own: on TensorFlow and JAX, ``model.fit`` compiles the whole training step, the
views included (``jax.jit``; ``tf.function``, with XLA under ``--jit-compile`` or on an
accelerator), so ``keras_byol.augment.apply_view`` runs as one program. On PyTorch, Keras runs the
step eagerly, op by op: a view is some 150 small tensor operations, each a pass over the batch in
memory (about 3x the torchvision per-image path in views/s, ``bench/bench_frameworks.py``). Keras'
own ``jit_compile=True`` on PyTorch compiles the whole step with ``torch.compile``, which here took
minutes and ran no faster (keras_byol/README.md). Compiling only the view function, the same
``keras.ops`` code, fuses its element-wise passes (6-7x the torchvision path) for a one-off
compilation per view spec and batch shape: about 20 s with Inductor's cache warm, about 65 s on a
fresh machine (2 CPU cores).
"""

from __future__ import annotations

import functools
import os
import shutil

import torch

from common.augment import ViewSpec
from keras_byol.augment import apply_view


@functools.cache
def compiled_view(spec: ViewSpec):
    """``apply_view(images_uint8, params, spec)`` compiled for ``spec`` (one per spec, cached);
    static shapes (``dynamic=False``): a new batch size compiles once more."""
    return torch.compile(functools.partial(apply_view, spec=spec), dynamic=False)


def missing_compiler() -> str | None:
    """Why ``torch.compile`` cannot build the views here, or None. On a CPU, Inductor writes C++ and
    builds it with ``$CXX`` or g++ (``torch._inductor.config.cpp.cxx``); without a compiler the
    first step would fail deep inside Dynamo."""
    if torch.cuda.is_available():
        return None  # Inductor generates Triton kernels on GPUs
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        return (f"--compile-views needs a C++ compiler on a CPU ({compiler} not found): install one "
                "(e.g. apt install g++) or drop the flag")
    return None
