"""keras_byol/losses.py equals the NumPy references of common/losses.py, value and gradient, in
float64 on every backend (each backend's own autodiff; see tests/keras_checks.py)."""

import math

import keras
import numpy as np
import pytest

from keras_byol import losses
from tests.keras_checks import EVERY_BACKEND, section

TOL = 1e-9


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_losses_match_the_reference_in_float64(backend):
    result = section(backend, "losses")
    assert len(result["cases"]) == 9
    for case, outcome in result["cases"].items():
        assert outcome["dtype"] == "float64", case
        assert outcome["max_error"] <= TOL, case  # value and every gradient; z/queue grads are 0
    closed = result["closed_forms"]
    assert closed["nt_xent_identical"] == pytest.approx(math.log(9), abs=1e-12)
    assert closed["byol_aligned"] == pytest.approx(0.0, abs=1e-12)
    assert closed["byol_opposite"] == pytest.approx(8.0, abs=1e-12)


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
