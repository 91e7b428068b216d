"""pytorch_simclr/losses.py equals the NumPy references of common/losses.py (value and gradient)."""

import numpy as np
import pytest
import torch

from common import losses as reference
from pytorch_simclr import losses

TOL = 1e-9


def _leaf(array):
    return torch.tensor(array, dtype=torch.float64, requires_grad=True)


def _grads(loss, *tensors):
    return [g.numpy() for g in torch.autograd.grad(loss, tensors)]


@pytest.mark.parametrize(("n", "d", "temperature", "seed"),
                         [(1, 3, 0.5, 0), (4, 8, 0.1, 1), (16, 32, 0.2, 2), (8, 5, 0.01, 3)])
def test_nt_xent_matches_reference(n, d, temperature, seed):
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((n, d)) * 3, rng.standard_normal((n, d))
    ref_loss, (ref_d1, ref_d2) = reference.nt_xent(z1, z2, temperature)
    t1, t2 = _leaf(z1), _leaf(z2)
    loss = losses.nt_xent(t1, t2, temperature)
    d1, d2 = _grads(loss, t1, t2)
    assert np.isfinite(ref_loss)
    assert loss.item() == pytest.approx(ref_loss, abs=TOL, rel=TOL)
    np.testing.assert_allclose(d1, ref_d1, rtol=0, atol=TOL)
    np.testing.assert_allclose(d2, ref_d2, rtol=0, atol=TOL)


def test_nt_xent_known_value_for_identical_views():
    # Identical views at one point: every logit is 1/T, so each anchor's loss is log(2N - 1).
    z = torch.ones(5, 4, dtype=torch.float64)
    assert losses.nt_xent(z, z.clone(), 0.5).item() == pytest.approx(np.log(9), abs=1e-12)


def test_nt_xent_gather_outside_a_process_group_changes_nothing():
    rng = np.random.default_rng(4)
    z1, z2 = (torch.tensor(rng.standard_normal((6, 7))) for _ in range(2))
    assert losses.nt_xent(z1, z2, 0.3, gather=True).item() == losses.nt_xent(z1, z2, 0.3).item()


@pytest.mark.parametrize(("n", "k", "d", "temperature", "seed"),
                         [(1, 1, 3, 0.07, 0), (8, 32, 16, 0.2, 1), (4, 64, 8, 0.01, 2)])
def test_info_nce_matches_reference(n, k, d, temperature, seed):
    rng = np.random.default_rng(seed)
    q, key, queue = rng.standard_normal((n, d)), rng.standard_normal((n, d)), rng.standard_normal((k, d))
    ref_loss, (ref_dq, ref_dk) = reference.info_nce(q, key, queue, temperature)
    tq, tk, tqueue = _leaf(q), _leaf(key), _leaf(queue)
    loss = losses.info_nce(tq, tk, tqueue, temperature)
    dq, dk = _grads(loss, tq, tk)
    assert loss.item() == pytest.approx(ref_loss, abs=TOL, rel=TOL)
    np.testing.assert_allclose(dq, ref_dq, rtol=0, atol=TOL)
    np.testing.assert_allclose(dk, ref_dk, rtol=0, atol=TOL)
    loss = losses.info_nce(tq, tk, tqueue, temperature)
    loss.backward()
    assert tqueue.grad is None  # the queue is a constant


@pytest.mark.parametrize(("n", "d", "seed"), [(1, 2, 0), (8, 16, 1), (32, 4, 2)])
def test_byol_matches_reference_and_stops_target_gradients(n, d, seed):
    rng = np.random.default_rng(seed)
    p1, p2, z1, z2 = (rng.standard_normal((n, d)) for _ in range(4))
    ref_loss, (ref_d1, ref_d2) = reference.byol(p1, p2, z1, z2)
    tp1, tp2, tz1, tz2 = _leaf(p1), _leaf(p2), _leaf(z1), _leaf(z2)
    loss = losses.byol(tp1, tp2, tz1, tz2)
    assert loss.item() == pytest.approx(ref_loss, abs=TOL, rel=TOL)
    loss.backward()
    np.testing.assert_allclose(tp1.grad.numpy(), ref_d1, rtol=0, atol=TOL)
    np.testing.assert_allclose(tp2.grad.numpy(), ref_d2, rtol=0, atol=TOL)
    assert tz1.grad is None and tz2.grad is None


def test_byol_is_zero_when_predictions_point_at_their_targets():
    z1, z2 = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    assert losses.byol(3 * z2, 0.5 * z1, z1, z2).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.byol(-z2, -z1, z1, z2).item() == pytest.approx(8.0, abs=1e-12)


def test_losses_keep_float32_and_agree_with_float64():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    loss32 = losses.nt_xent(z1, z2, 0.1)
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(losses.nt_xent(z1.double(), z2.double(), 0.1).item(),
                                          rel=1e-5)
    assert losses.byol(z1, z2, z2, z1).dtype == torch.float32
    assert losses.info_nce(z1, z2, torch.randn(5, 16, generator=gen), 0.2).dtype == torch.float32


def test_bad_shapes_and_temperatures_are_refused():
    a, b = torch.randn(4, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="same shape"):
        losses.nt_xent(a, b, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        losses.nt_xent(a, a, 0.0)
    with pytest.raises(ValueError, match="transpose"):
        losses.info_nce(a, a, torch.randn(8, 5), 0.1)
    with pytest.raises(ValueError, match="one shape"):
        losses.byol(a, a, a, b)
