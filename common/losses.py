"""Reference losses of the three methods: NumPy float64 value and analytic gradient.

Every chapter's ``losses.py`` is tested against these functions, so each one is written for reading:
the formula, one canonical reduction, and the gradient worked out by hand (no autodiff).

All functions take raw, un-normalised embeddings of shape ``(N, D)`` and L2-normalise them inside;
the returned gradients are with respect to those raw inputs, i.e. they include the Jacobian of the
normalisation (:func:`l2_normalize_backward`). Log-softmaxes use the log-sum-exp shift, so a low
temperature (T = 0.01, logits of +-100) stays finite.

Reductions, and the factor to other well-known code bases (docs/losses.md has the checked sources):

=========================  ================================================================
ours                       others
=========================  ================================================================
``nt_xent``                google-research/simclr tf2 ``add_contrastive_loss``: 2 x ours;
(mean over 2N anchors)     lightly ``NTXentLoss`` and solo-learn ``simclr_loss_func``: 1 x ours;
                           keras.io SimCLR example: a different function (see ``nt_xent``).
``info_nce``               facebookresearch/moco (``CrossEntropyLoss`` on builder logits) and
(mean over N queries)      solo-learn ``mocov2plus_loss_func``: 1 x ours; solo-learn's symmetric
                           MoCo v2+ averages the two directions (same scale); the MoCo CIFAR-10
                           colab's ``symmetric=True`` sums them (2 x a one-direction loss).
``byol``                   deepmind-research/byol and solo-learn BYOL: 1 x ours; lightly BYOL
(mean over N pairs,        example ``0.5 * (NegativeCosineSimilarity(p0, z1) + ...(p1, z0))``
both directions summed)    = (ours - 4) / 4, an affine map (gradients 1/4 of ours).
=========================  ================================================================
"""

import numpy as np

NORM_EPS = 1e-12
"""Norms are clamped to at least this before dividing (as ``torch.nn.functional.normalize``)."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm: ``u = x / max(||x||, eps)``."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)


def l2_normalize_backward(x: np.ndarray, grad_u: np.ndarray) -> np.ndarray:
    """Gradient with respect to ``x`` given the gradient ``grad_u`` with respect to ``u = x/||x||``.

    The Jacobian of ``u`` is ``J = (I - u u^T) / ||x||``. It is symmetric, so this one function is
    both the vector-Jacobian product (backward) and the Jacobian-vector product (forward):
    ``grad_x = (grad_u - u (u . grad_u)) / ||x||``.
    """
    x = np.asarray(x, dtype=np.float64)
    norm = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)
    u = x / norm
    return (grad_u - u * np.sum(u * grad_u, axis=-1, keepdims=True)) / norm


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax with the log-sum-exp shift (``-inf`` entries get probability 0)."""
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _check_pair(a: np.ndarray, b: np.ndarray, names: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(
            f"{names} must be two non-empty (N, D) arrays of the same shape; got {a.shape} and "
            f"{b.shape}. Pass one embedding per row, the two views in the same order."
        )
    return a, b


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (SimCLR uses 0.1-0.5).")
    return float(temperature)


def nt_xent(
    z1: np.ndarray, z2: np.ndarray, temperature: float
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """SimCLR's NT-Xent loss (Chen et al. 2020, eq. 1) and its gradient ``(dz1, dz2)``.

    The 2N normalised embeddings ``u = [z1; z2]`` form ``s_ij = u_i . u_j / T``. Anchor ``i`` has
    one positive, its other view ``p(i) = i +- N``, and 2N - 2 negatives (every other sample,
    itself excluded)::

        l_i = -log( exp(s_i,p(i)) / sum_{j != i} exp(s_ij) )        L = (1 / 2N) sum_i l_i

    Gradient: with ``P_ij`` the softmax of row ``i`` over ``j != i`` (``P_ii = 0``) and
    ``Y_ij = [j = p(i)]``, ``dL/ds = G = (P - Y) / 2N`` and, as ``s`` is symmetric,
    ``dL/du = (G + G^T) u / T``; then through the normalisation.

    Factors to other code (checked sources in docs/losses.md):
    google-research/simclr tf2 returns ``reduce_mean(loss_a + loss_b)`` over N rows, i.e. the
    *sum* of the two views' terms: 2 x ours. lightly ``NTXentLoss`` and solo-learn
    ``simclr_loss_func`` average over the 2N anchors: 1 x ours. The keras.io SimCLR example uses
    only the N x N cross-view logits ``u1 u2^T / T`` (N - 1 negatives per anchor, none from the
    anchor's own view) and averages both directions: a different function, not a constant
    factor; for identical embeddings it gives ``log N`` where ours gives ``log(2N - 1)``. (It
    returns the per-sample vector, and ``tape.gradient`` differentiates its sum: N x its mean.)
    """
    z1, z2 = _check_pair(z1, z2, "z1 and z2")
    temperature = _check_temperature(temperature)
    n = z1.shape[0]
    z = np.concatenate([z1, z2])
    u = l2_normalize(z)
    logits = u @ u.T / temperature
    np.fill_diagonal(logits, -np.inf)  # an anchor is never its own negative
    positive = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    rows = np.arange(2 * n)
    log_prob = _log_softmax(logits)
    loss = -np.mean(log_prob[rows, positive])

    grad_logits = np.exp(log_prob)  # P, with zeros on the diagonal
    grad_logits[rows, positive] -= 1.0
    grad_logits /= 2 * n
    grad_u = (grad_logits + grad_logits.T) @ u / temperature
    grad_z = l2_normalize_backward(z, grad_u)
    return float(loss), (grad_z[:n], grad_z[n:])


def info_nce(
    q: np.ndarray, k: np.ndarray, queue: np.ndarray, temperature: float
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """MoCo's InfoNCE loss with a queue of negatives (He et al. 2020, eq. 1) and ``(dq, dk)``.

    ``q`` (N, D) are the queries, ``k`` (N, D) their positive keys, ``queue`` (K, D) the negative
    keys (one per row; a constant: no gradient). With ``u = q/||q||`` etc., each query has the
    1 + K logits ``[u_n . v_n, u_n . w_1, ..., u_n . w_K] / T`` and the cross-entropy with label 0::

        l_n = -log( exp(u_n.v_n / T) / (exp(u_n.v_n / T) + sum_m exp(u_n.w_m / T)) )
        L = (1 / N) sum_n l_n

    Gradient: with ``P`` the row softmax, ``dL/dlogit_pos = (P_n0 - 1) / N`` and
    ``dL/dlogit_neg_m = P_nm / N``; ``du_n = (dpos_n v_n + sum_m dneg_nm w_m) / T`` and
    ``dv_n = dpos_n u_n / T``; then through the normalisation. MoCo stops the gradient to ``k``
    (its momentum encoder is not trained by back-propagation); ``dk`` is what it would be, given so
    that frameworks can be compared on both inputs.

    Factors: facebookresearch/moco (``nn.CrossEntropyLoss()`` on the builder's logits) and
    solo-learn ``mocov2plus_loss_func`` are 1 x ours (they expect already normalised inputs and a
    (D, K) queue; we normalise and take (K, D)). solo-learn's symmetric MoCo v2+ averages the two
    directions (same scale as ours); the MoCo CIFAR-10 colab with ``symmetric=True`` sums them.
    """
    q, k = _check_pair(q, k, "q and k")
    queue = np.asarray(queue, dtype=np.float64)
    if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"queue must be (K, D) with D = {q.shape[1]} (one negative key per row); got "
            f"{queue.shape}. A (D, K) queue as in facebookresearch/moco needs a transpose."
        )
    temperature = _check_temperature(temperature)
    n = q.shape[0]
    u, v, w = l2_normalize(q), l2_normalize(k), l2_normalize(queue)
    logits = np.concatenate([np.sum(u * v, axis=1, keepdims=True), u @ w.T], axis=1) / temperature
    log_prob = _log_softmax(logits)
    loss = -np.mean(log_prob[:, 0])

    grad_logits = np.exp(log_prob)
    grad_logits[:, 0] -= 1.0
    grad_logits /= n
    grad_pos = grad_logits[:, :1]
    grad_u = (grad_pos * v + grad_logits[:, 1:] @ w) / temperature
    grad_v = grad_pos * u / temperature
    return float(loss), (l2_normalize_backward(q, grad_u), l2_normalize_backward(k, grad_v))


def byol(
    p1: np.ndarray, p2: np.ndarray, z1: np.ndarray, z2: np.ndarray
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """BYOL's symmetrised regression loss (Grill et al. 2020, eq. 2 and its symmetrisation).

    ``p1, p2`` are the online predictions of views 1 and 2, ``z1, z2`` the target projections
    (stop-gradient: no gradient is returned for them). With hats for L2-normalised rows::

        L = (1/N) sum_n [ ||p1^_n - z2^_n||^2 + ||p2^_n - z1^_n||^2 ]
          = (1/N) sum_n [ (2 - 2 cos(p1_n, z2_n)) + (2 - 2 cos(p2_n, z1_n)) ]      in [0, 8]

    Gradient: of the cosine form, ``dL/dp1^_n = -2 z2^_n / N`` (likewise for ``p2``), then through
    the normalisation. (The squared-distance form gives ``2 (p1^_n - z2^_n) / N``; the difference,
    ``2 p1^_n / N``, is radial and the normalisation's Jacobian removes it: the gradient with
    respect to ``p1`` is the same.)

    Factors: deepmind-research/byol (``jnp.mean`` of the two summed ``regression_loss`` terms) and
    solo-learn BYOL (``byol_loss_func(p1, z2) + byol_loss_func(p2, z1)``) are 1 x ours. lightly's
    BYOL example uses ``0.5 * (NegativeCosineSimilarity(p0, z1) + NegativeCosineSimilarity(p1,
    z0))`` in [-1, 1], which equals ``(ours - 4) / 4``: same minimiser, gradients 1/4 of ours.
    """
    p1, z2 = _check_pair(p1, z2, "p1 and z2")
    p2, z1 = _check_pair(p2, z1, "p2 and z1")
    if p1.shape != p2.shape:
        raise ValueError(f"p1 and p2 must have the same shape; got {p1.shape} and {p2.shape}.")
    n = p1.shape[0]
    p1_hat, p2_hat = l2_normalize(p1), l2_normalize(p2)
    z1_hat, z2_hat = l2_normalize(z1), l2_normalize(z2)
    cos_12 = np.sum(p1_hat * z2_hat, axis=1)
    cos_21 = np.sum(p2_hat * z1_hat, axis=1)
    loss = np.mean((2.0 - 2.0 * cos_12) + (2.0 - 2.0 * cos_21))
    grad_p1 = l2_normalize_backward(p1, -2.0 * z2_hat / n)
    grad_p2 = l2_normalize_backward(p2, -2.0 * z1_hat / n)
    return float(loss), (grad_p1, grad_p2)
