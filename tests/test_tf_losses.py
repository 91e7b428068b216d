"""tensorflow_moco/losses.py equals the NumPy references of common/losses.py (value and gradient)."""

import numpy as np
import pytest
import tensorflow as tf

import tests.tf_setup  # noqa: F401  (splits the CPU for MirroredStrategy before any TF op runs)
from common import losses as reference
from tensorflow_moco import losses

TOL = 1e-9


def _gradients(loss_fn, *arrays):
    tensors = [tf.Variable(a, dtype=tf.float64) for a in arrays]
    with tf.GradientTape() as tape:
        loss = loss_fn(*tensors)
    return float(loss), [g if g is None else g.numpy() for g in tape.gradient(loss, tensors)]


@pytest.mark.parametrize(("n", "d", "temperature", "seed"),
                         [(1, 3, 0.5, 0), (4, 8, 0.1, 1), (16, 32, 0.2, 2), (8, 5, 0.01, 3)])
def test_nt_xent_matches_reference(n, d, temperature, seed):
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((n, d)) * 3, rng.standard_normal((n, d))
    ref_loss, ref_grads = reference.nt_xent(z1, z2, temperature)
    loss, grads = _gradients(lambda a, b: losses.nt_xent(a, b, temperature), z1, z2)
    assert np.isfinite(ref_loss)
    assert loss == pytest.approx(ref_loss, abs=TOL, rel=TOL)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize(("n", "k", "d", "temperature", "seed"),
                         [(1, 1, 3, 0.07, 0), (8, 32, 16, 0.2, 1), (4, 64, 8, 0.01, 2)])
def test_info_nce_matches_reference_and_stops_the_queue(n, k, d, temperature, seed):
    rng = np.random.default_rng(seed)
    q, key, queue = rng.standard_normal((n, d)), rng.standard_normal((n, d)), rng.standard_normal((k, d))
    ref_loss, ref_grads = reference.info_nce(q, key, queue, temperature)
    loss, (dq, dk, dqueue) = _gradients(
        lambda a, b, c: losses.info_nce(a, b, c, temperature), q, key, queue)
    assert loss == pytest.approx(ref_loss, abs=TOL, rel=TOL)
    np.testing.assert_allclose(dq, ref_grads[0], rtol=0, atol=TOL)
    np.testing.assert_allclose(dk, ref_grads[1], rtol=0, atol=TOL)
    assert dqueue is None  # the queue is a constant


def test_symmetric_info_nce_sums_both_directions_as_the_cifar_demo():
    rng = np.random.default_rng(5)
    q1, k2, q2, k1 = (rng.standard_normal((6, 8)) for _ in range(4))
    queue = rng.standard_normal((12, 8))
    want = reference.info_nce(q1, k2, queue, 0.1)[0] + reference.info_nce(q2, k1, queue, 0.1)[0]
    got = losses.symmetric_info_nce(*(tf.constant(a) for a in (q1, k2, q2, k1, queue)), 0.1)
    assert float(got) == pytest.approx(want, rel=TOL)


@pytest.mark.parametrize(("n", "d", "seed"), [(1, 2, 0), (8, 16, 1), (32, 4, 2)])
def test_byol_matches_reference_and_stops_target_gradients(n, d, seed):
    rng = np.random.default_rng(seed)
    p1, p2, z1, z2 = (rng.standard_normal((n, d)) for _ in range(4))
    ref_loss, (ref_d1, ref_d2) = reference.byol(p1, p2, z1, z2)
    loss, (d1, d2, dz1, dz2) = _gradients(losses.byol, p1, p2, z1, z2)
    assert loss == pytest.approx(ref_loss, abs=TOL, rel=TOL)
    np.testing.assert_allclose(d1, ref_d1, rtol=0, atol=TOL)
    np.testing.assert_allclose(d2, ref_d2, rtol=0, atol=TOL)
    assert dz1 is None and dz2 is None


def test_normalisation_clamps_the_norm_as_the_reference():
    x = np.array([[3e-13, 4e-13], [3.0, 4.0], [0.0, 0.0]])  # norms 5e-13 (< NORM_EPS), 5, 0
    np.testing.assert_allclose(losses.l2_normalize(tf.constant(x)).numpy(),
                               reference.l2_normalize(x), rtol=1e-12, atol=0)
    with tf.GradientTape() as tape:
        zero = tf.Variable(np.zeros((1, 3)))
        total = tf.reduce_sum(losses.l2_normalize(zero))
    assert np.all(np.isfinite(tape.gradient(total, zero).numpy()))


def test_float32_losses_stay_float32_and_agree_with_float64():
    rng = np.random.default_rng(0)
    z1, z2, queue = rng.standard_normal((8, 16)), rng.standard_normal((8, 16)), rng.standard_normal((5, 16))
    for fn, args in ((losses.nt_xent, (z1, z2, 0.1)), (losses.info_nce, (z1, z2, queue, 0.2))):
        low = fn(*(tf.constant(a, tf.float32) if isinstance(a, np.ndarray) else a for a in args))
        high = fn(*(tf.constant(a) if isinstance(a, np.ndarray) else a for a in args))
        assert low.dtype == tf.float32
        assert float(low) == pytest.approx(float(high), rel=1e-5)


def test_bad_shapes_and_temperatures_are_refused():
    a, b = tf.zeros((4, 8)), tf.zeros((3, 8))
    with pytest.raises(ValueError, match="same shape"):
        losses.nt_xent(a, b, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        losses.info_nce(a, a, tf.zeros((5, 8)), 0.0)
    with pytest.raises(ValueError, match="transpose"):
        losses.info_nce(a, a, tf.zeros((8, 5)), 0.1)
    with pytest.raises(ValueError, match="one shape"):
        losses.byol(a, a, a, b)
