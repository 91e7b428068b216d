"""common/losses.py: values against a naive loop implementation, closed forms, and gradients
against central finite differences (float64)."""

import math

import numpy as np
import pytest

from common.losses import byol, info_nce, l2_normalize, l2_normalize_backward, nt_xent


# ----- independent naive implementations: one anchor / query / pair at a time ------------------
def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def naive_nt_xent(z1, z2, temperature):
    views = list(z1) + list(z2)
    n = len(z1)
    total = 0.0
    for i, anchor in enumerate(views):
        positive = (i + n) % (2 * n)
        numerator = math.exp(_cos(anchor, views[positive]) / temperature)
        denominator = sum(
            math.exp(_cos(anchor, other) / temperature) for j, other in enumerate(views) if j != i
        )
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def naive_info_nce(q, k, queue, temperature):
    total = 0.0
    for query, key in zip(q, k, strict=True):
        positive = math.exp(_cos(query, key) / temperature)
        negatives = sum(math.exp(_cos(query, neg) / temperature) for neg in queue)
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def naive_byol(p1, p2, z1, z2):
    terms = [
        (2 - 2 * _cos(a, d)) + (2 - 2 * _cos(b, c))
        for a, b, c, d in zip(p1, p2, z1, z2, strict=True)
    ]
    return sum(terms) / len(terms)


def central_differences(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = h
        grad[idx] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def assert_gradient_close(analytic, numeric):
    rel = np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-12)
    assert rel < 1e-6, f"relative gradient error {rel:.2e}"


CASES = [(1, 3, 0.5), (3, 4, 0.1), (5, 8, 1.0), (8, 16, 0.2)]


# ----- values -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "d", "t"), CASES)
def test_nt_xent_matches_naive_loop(n, d, t):
    rng = np.random.default_rng(n * 100 + d)
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    assert nt_xent(z1, z2, t)[0] == pytest.approx(naive_nt_xent(z1, z2, t), rel=1e-12)


@pytest.mark.parametrize(("n", "d", "t"), CASES)
def test_info_nce_matches_naive_loop(n, d, t):
    rng = np.random.default_rng(n * 100 + d)
    q, k, queue = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(7, d))
    assert info_nce(q, k, queue, t)[0] == pytest.approx(naive_info_nce(q, k, queue, t), rel=1e-12)


@pytest.mark.parametrize(("n", "d", "t"), CASES)
def test_byol_matches_naive_loop(n, d, t):
    rng = np.random.default_rng(n * 100 + d)
    p1, p2, z1, z2 = (rng.normal(size=(n, d)) for _ in range(4))
    assert byol(p1, p2, z1, z2)[0] == pytest.approx(naive_byol(p1, p2, z1, z2), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_nt_xent_of_identical_embeddings_is_log_2n_minus_1(n):
    z = np.tile([[0.3, -1.2, 2.0]], (n, 1))
    assert nt_xent(z, 5.0 * z, 0.1)[0] == pytest.approx(math.log(2 * n - 1), abs=1e-12)


@pytest.mark.parametrize("queue_size", [1, 10, 4096])
def test_info_nce_of_identical_embeddings_is_log_k_plus_1(queue_size):
    z = np.array([[1.0, 2.0, -0.5, 0.1]])
    loss = info_nce(np.tile(z, (4, 1)), 3.0 * np.tile(z, (4, 1)), np.tile(z, (queue_size, 1)), 0.2)
    assert loss[0] == pytest.approx(math.log(queue_size + 1), abs=1e-12)


def test_byol_of_identical_directions_is_zero_and_of_opposite_ones_is_eight():
    rng = np.random.default_rng(0)
    p1, p2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    assert byol(p1, p2, 2.0 * p2, 0.5 * p1)[0] == pytest.approx(0.0, abs=1e-12)
    assert byol(p1, p2, -p2, -3.0 * p1)[0] == pytest.approx(8.0, abs=1e-12)


def test_low_temperature_with_large_logits_stays_finite():
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(16, 8)) * 1e3
    z2 = z1 + rng.normal(size=(16, 8))
    loss, grads = nt_xent(z1, z2, 0.01)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads)
    assert loss == pytest.approx(naive_nt_xent(z1, z2, 0.01), rel=1e-9)
    queue = rng.normal(size=(64, 8))
    loss, grads = info_nce(z1, z2, queue, 0.01)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads)
    # A confidently wrong query: its negative is far more similar than its positive.
    loss, _ = info_nce(z1[:1], -z1[:1], z1[:1], 0.01)
    assert loss == pytest.approx(200.0, rel=1e-9)  # (1 - (-1)) / 0.01, no overflow


def test_losses_are_invariant_to_the_scale_of_each_input():
    rng = np.random.default_rng(2)
    a, b, c, d = (rng.normal(size=(5, 6)) for _ in range(4))
    scale = rng.uniform(0.01, 100.0, size=(5, 1))
    assert nt_xent(a * scale, b / scale, 0.3)[0] == pytest.approx(nt_xent(a, b, 0.3)[0], rel=1e-12)
    assert info_nce(a * scale, b, c * 7.0, 0.3)[0] == pytest.approx(
        info_nce(a, b, c, 0.3)[0], rel=1e-12
    )
    assert byol(a * scale, b, c / scale, d * 3)[0] == pytest.approx(byol(a, b, c, d)[0], rel=1e-12)


# ----- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "d", "t"), CASES)
def test_nt_xent_gradient_matches_finite_differences(n, d, t):
    rng = np.random.default_rng(n + d)
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    _, (dz1, dz2) = nt_xent(z1, z2, t)
    assert_gradient_close(dz1, central_differences(lambda x: nt_xent(x, z2, t)[0], z1))
    assert_gradient_close(dz2, central_differences(lambda x: nt_xent(z1, x, t)[0], z2))


@pytest.mark.parametrize(("n", "d", "t"), CASES)
def test_info_nce_gradient_matches_finite_differences(n, d, t):
    rng = np.random.default_rng(n + d)
    q, k, queue = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(9, d))
    _, (dq, dk) = info_nce(q, k, queue, t)
    assert_gradient_close(dq, central_differences(lambda x: info_nce(x, k, queue, t)[0], q))
    assert_gradient_close(dk, central_differences(lambda x: info_nce(q, x, queue, t)[0], k))


@pytest.mark.parametrize(("n", "d", "t"), CASES)
def test_byol_gradient_matches_finite_differences(n, d, t):
    rng = np.random.default_rng(n + d)
    p1, p2, z1, z2 = (rng.normal(size=(n, d)) for _ in range(4))
    _, (dp1, dp2) = byol(p1, p2, z1, z2)
    assert_gradient_close(dp1, central_differences(lambda x: byol(x, p2, z1, z2)[0], p1))
    assert_gradient_close(dp2, central_differences(lambda x: byol(p1, x, z1, z2)[0], p2))


def test_l2_normalize_backward_is_the_jacobian_transpose_product():
    rng = np.random.default_rng(3)
    x, g = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    numeric = central_differences(lambda y: float(np.sum(l2_normalize(y) * g)), x)
    assert_gradient_close(l2_normalize_backward(x, g), numeric)
    assert np.allclose(np.linalg.norm(l2_normalize(x), axis=1), 1.0)


# ----- bad input --------------------------------------------------------------------------------
def test_bad_shapes_and_temperatures_raise_clear_errors():
    z = np.ones((4, 3))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z, np.ones((5, 3)), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, 0.0)
    with pytest.raises(ValueError, match="transpose"):
        info_nce(z, z, np.ones((3, 10)), 0.1)
