"""The three canonical losses in TensorFlow, value-for-value equal to ``common/losses.py``.

Each takes raw embeddings, L2-normalises them inside (norms clamped at ``common.losses.NORM_EPS``,
as the reference), and uses the reference's one reduction; ``tf.GradientTape`` supplies the
gradients, which ``tests/test_tf_losses.py`` checks against the reference's hand-derived ones in
float64. The computation stays in the inputs' dtype: under mixed precision, cast the projections to
float32 first (the training step does), so that the logits divided by a small temperature never
overflow float16.
"""

from __future__ import annotations

import tensorflow as tf

from common.losses import NORM_EPS


def l2_normalize(x: tf.Tensor) -> tf.Tensor:
    """Rows scaled to unit L2 norm: ``x / max(||x||, NORM_EPS)``.

    ``tf.math.l2_normalize`` computes ``x * rsqrt(max(sum(x^2), epsilon))``, which is that with
    ``epsilon = NORM_EPS**2`` (it clamps the squared norm), and keeps a finite gradient at 0.
    """
    return tf.math.l2_normalize(x, axis=1, epsilon=NORM_EPS**2)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (MoCo v2 uses 0.2)")


def _check_pair(a: tf.Tensor, b: tf.Tensor, names: str) -> None:
    if a.shape.rank != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"{names} must be two non-empty (N, D) tensors of the same shape; got "
                         f"{a.shape} and {b.shape}")


def nt_xent(z1: tf.Tensor, z2: tf.Tensor, temperature: float) -> tf.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1), the mean over the 2N anchors.

    ``z1[i]`` and ``z2[i]`` are two views of image ``i``; each anchor's positive is its other view,
    its negatives every other sample of both views (itself excluded: its logit is -inf).
    """
    _check_pair(z1, z2, "z1 and z2")
    _check_temperature(temperature)
    n = tf.shape(z1)[0]
    u = l2_normalize(tf.concat([z1, z2], axis=0))
    logits = tf.matmul(u, u, transpose_b=True) / temperature
    self_pairs = tf.eye(2 * n, dtype=tf.bool)
    logits = tf.where(self_pairs, tf.constant(float("-inf"), logits.dtype), logits)
    positives = tf.concat([tf.range(n, 2 * n), tf.range(n)], axis=0)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=logits))


def info_nce(q: tf.Tensor, k: tf.Tensor, queue: tf.Tensor, temperature: float) -> tf.Tensor:
    """MoCo's InfoNCE with a queue (He et al. 2020, eq. 1): the mean over the N queries.

    Logits ``[u_n . v_n, u_n . w_1 .. u_n . w_K] / T`` with the positive in column 0, cross-entropy
    with label 0, as facebookresearch/moco's ``CrossEntropyLoss`` on its builder's logits. ``queue``
    (K, D) holds the negatives (a constant: its gradient is stopped). ``k`` is not stopped here,
    so it can be compared with the reference's ``dk``; MoCo's keys come from
    ``MoCo.key``, which stops it.
    """
    _check_pair(q, k, "q and k")
    if queue.shape.rank != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, D) with D = {q.shape[1]}; got {queue.shape} (a (D, K) "
                         "queue as in facebookresearch/moco needs a transpose)")
    _check_temperature(temperature)
    u, v = l2_normalize(q), l2_normalize(k)
    w = l2_normalize(tf.stop_gradient(queue))
    positive = tf.reduce_sum(u * v, axis=1, keepdims=True)
    logits = tf.concat([positive, tf.matmul(u, w, transpose_b=True)], axis=1) / temperature
    labels = tf.zeros(tf.shape(q)[:1], dtype=tf.int32)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def symmetric_info_nce(q1: tf.Tensor, k2: tf.Tensor, q2: tf.Tensor, k1: tf.Tensor,
                       queue: tf.Tensor, temperature: float) -> tf.Tensor:
    """The symmetric MoCo loss as the MoCo CIFAR-10 demo computes it: the SUM of both directions.

    ``colab/moco_cifar10_demo.ipynb`` (facebookresearch/moco, branch colab-notebook) returns
    ``loss_12 + loss_21`` with ``symmetric=True``: 2 x the scale of one direction's
    :func:`info_nce`. (solo-learn's MoCo v2+ averages the two directions instead: half of this.)
    Both directions see the same queue, the one before this step's keys are enqueued.
    """
    return info_nce(q1, k2, queue, temperature) + info_nce(q2, k1, queue, temperature)


def byol(p1: tf.Tensor, p2: tf.Tensor, z1: tf.Tensor, z2: tf.Tensor) -> tf.Tensor:
    """BYOL's symmetrised loss (Grill et al. 2020, eq. 2): mean over pairs of both directions summed.

    ``L = mean_n [(2 - 2 cos(p1_n, z2_n)) + (2 - 2 cos(p2_n, z1_n))]``, in [0, 8]; the targets ``z``
    are stop-gradient.
    """
    if not p1.shape == p2.shape == z1.shape == z2.shape or p1.shape.rank != 2:
        raise ValueError("p1, p2, z1 and z2 must be (N, D) tensors of one shape")

    def regression(p, z):
        return 2.0 - 2.0 * tf.reduce_sum(l2_normalize(p) * l2_normalize(tf.stop_gradient(z)), axis=1)

    return tf.reduce_mean(regression(p1, z2) + regression(p2, z1))
