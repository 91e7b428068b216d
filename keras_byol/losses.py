"""The three canonical losses in ``keras.ops``, value-for-value equal to ``common/losses.py``.

One code path for the TensorFlow, JAX and PyTorch backends. Each loss takes raw embeddings,
L2-normalises them inside (norms clamped at ``common.losses.NORM_EPS``, as the reference), and uses
the reference's one reduction; each backend's autodiff supplies the gradient, which
``tests/test_keras_losses.py`` checks against the reference's hand-derived one. The computation stays
in the inputs' dtype (float64 where the backend has it: JAX needs ``JAX_ENABLE_X64``).

float64 needs care on JAX and PyTorch: Keras' type promotion maps float64 to float32 on every backend
but TensorFlow (``BIT64_TO_BIT32_DTYPE`` in ``keras/src/backend/common/dtypes.py``), and the ops that
consult it compute in float32 -- on PyTorch ``ops.matmul`` and ``ops.maximum``, on JAX and PyTorch
``ops.mean``. Hence ``ops.einsum`` for the similarity matrices, ``ops.where`` for the norm clamp and
a sum for the mean: each keeps its inputs' dtype on all three backends.
"""

from __future__ import annotations

import math

from keras import ops

from common.losses import NORM_EPS


def l2_normalize(x):
    """Rows scaled to unit L2 norm: ``x / max(||x||, NORM_EPS)``.

    The square root is taken of the clamped squared norm only: for a zero row the derivative of
    ``sqrt`` at 0 is infinite, and ``where`` multiplies it by the zero gradient of the branch it did
    not take, giving NaN (inf * 0) on JAX and PyTorch. So a zero row gets the reference's gradient,
    ``1 / NORM_EPS`` (``x / NORM_EPS`` there), as ``torch.nn.functional.normalize`` and
    ``tf.math.l2_normalize`` give it. The clamp is a tensor of ``x``'s dtype: on PyTorch a Python
    float in ``where`` becomes a float32 tensor first, and float32's 1e-12 is 4e-9 off.
    """
    squared = ops.sum(ops.square(x), axis=-1, keepdims=True)
    large = squared > NORM_EPS**2
    eps = ops.convert_to_tensor(NORM_EPS, dtype=x.dtype)
    return x / ops.where(large, ops.sqrt(ops.where(large, squared, 1.0)), eps)


def _mean(x):
    """Mean of a 1-D tensor, in its dtype (module docstring)."""
    return ops.sum(x) / ops.cast(ops.shape(x)[0], x.dtype)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (SimCLR uses 0.1-0.5)")


def _check_pairs(*pairs) -> None:
    for a, b in pairs:
        if len(a.shape) != 2 or tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"embeddings must be (N, D) tensors of one shape; got {tuple(a.shape)} and "
                f"{tuple(b.shape)}. Pass one embedding per row, the two views in the same order."
            )


def nt_xent(z1, z2, temperature: float):
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1), the mean over the 2N anchors.

    ``u = normalize([z1; z2])``, logits ``u u^T / T`` with the diagonal at ``-inf`` (an anchor is
    never its own negative); anchor ``i``'s positive is its other view ``(i + N) mod 2N``.
    """
    _check_pairs((z1, z2))
    _check_temperature(temperature)
    n = ops.shape(z1)[0]  # a tensor inside tf.function when the batch size is not static
    u = l2_normalize(ops.concatenate([z1, z2], axis=0))
    logits = ops.einsum("id,jd->ij", u, u) / temperature
    logits = ops.where(ops.eye(2 * n, dtype="bool"), -math.inf, logits)
    positives = (ops.arange(2 * n) + n) % (2 * n)
    log_prob = ops.log_softmax(logits, axis=-1)
    return -_mean(ops.take_along_axis(log_prob, positives[:, None], axis=1)[:, 0])


def info_nce(q, k, queue, temperature: float):
    """MoCo's InfoNCE (He et al. 2020, eq. 1): the mean over the N queries.

    Each query's logits are ``[u_n . v_n, u_n . w_1 .. w_K] / T`` and its label is 0. ``queue`` (K, D)
    holds the negatives and is a constant (``stop_gradient``); ``k`` is left differentiable, as the
    reference (MoCo's key encoder is never back-propagated into anyway).
    """
    _check_pairs((q, k))
    if len(queue.shape) != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"queue must be (K, D) with D = {q.shape[1]}; got {tuple(queue.shape)} (a (D, K) "
            "queue as in facebookresearch/moco needs a transpose)"
        )
    _check_temperature(temperature)
    u, v = l2_normalize(q), l2_normalize(k)
    w = l2_normalize(ops.stop_gradient(ops.convert_to_tensor(queue)))
    positive = ops.sum(u * v, axis=1, keepdims=True)
    logits = ops.concatenate([positive, ops.einsum("nd,kd->nk", u, w)], axis=1) / temperature
    return -_mean(ops.log_softmax(logits, axis=-1)[:, 0])


def byol(p1, p2, z1, z2):
    """BYOL's symmetrised loss (Grill et al. 2020, eq. 2 and its symmetrisation).

    ``L = mean_n [(2 - 2 cos(p1_n, z2_n)) + (2 - 2 cos(p2_n, z1_n))]`` in [0, 8], with ``p`` the
    online predictions and ``z`` the target projections of views 1 and 2. The targets go through
    ``stop_gradient``: only the online network learns from this loss (deepmind-research
    ``byol_experiment.py`` does the same, noting it is also implied by differentiating with respect
    to the online parameters only).
    """
    _check_pairs((p1, z2), (p2, z1), (p1, p2))

    def regression(p, z):
        target = l2_normalize(ops.stop_gradient(ops.convert_to_tensor(z)))
        return 2.0 - 2.0 * ops.sum(l2_normalize(p) * target, axis=1)

    return _mean(regression(p1, z2) + regression(p2, z1))
