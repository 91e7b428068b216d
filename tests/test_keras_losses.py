"""keras_byol/losses.py on Keras' default backend (TensorFlow): closed forms, dtypes, refusals.

Value and gradient against the NumPy references of common/losses.py, in float64 and float32 on every
backend, are in the cross-framework suite (tests/cross_framework/test_losses.py: keras-tensorflow,
keras-jax, keras-torch)."""

import math

import keras
import numpy as np
import pytest

from keras_byol import losses


def test_closed_forms():
    ones = np.ones((5, 4))
    z1, z2 = np.random.default_rng(0).standard_normal((2, 4, 6))
    # five identical embeddings: each positive and its 8 negatives have the same logit
    assert float(losses.nt_xent(ones, ones.copy(), 0.5)) == pytest.approx(math.log(9), abs=1e-12)
    # 2 - 2 cos per view pair, summed over both directions: 0 when aligned, 8 when opposite
    assert float(losses.byol(3 * z2, 0.5 * z1, z1, z2)) == pytest.approx(0.0, abs=1e-12)
    assert float(losses.byol(-z2, -z1, z1, z2)) == pytest.approx(8.0, abs=1e-12)


def test_float32_stays_float32_and_agrees_with_float64():
    rng = np.random.default_rng(0)
    z1, z2, z3, z4 = (rng.standard_normal((8, 16)) for _ in range(4))
    for loss, args in ((losses.nt_xent, (z1, z2, 0.1)), (losses.info_nce, (z1, z2, z3[:5], 0.2)),
                       (losses.byol, (z1, z2, z3, z4))):
        single = loss(*(a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args))
        assert keras.backend.standardize_dtype(single.dtype) == "float32"
        assert float(single) == pytest.approx(float(loss(*args)), rel=1e-5)


def test_bad_shapes_and_temperatures_are_refused():
    a, b = np.ones((4, 8)), np.ones((3, 8))
    with pytest.raises(ValueError, match="one shape"):
        losses.nt_xent(a, b, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        losses.nt_xent(a, a, 0.0)
    with pytest.raises(ValueError, match="transpose"):
        losses.info_nce(a, a, np.ones((8, 5)), 0.1)
    with pytest.raises(ValueError, match="one shape"):
        losses.byol(a, a, a, b)
