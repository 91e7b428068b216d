"""One MoCo v2 training step under any ``tf.distribute`` strategy (He et al. 2020, algorithm 1).

Per replica: both views of the replica's shard (``augment.apply_view``), the keys of view 2 from the
key network with Shuffle BN (``distributed.shuffled_forward``; stop-gradient), the queries of view 1
from the query network, InfoNCE against the queue, the gradient of the query network only, and the
optimizer step. Then, in cross-replica context: the momentum update of the key network and the
enqueue of the step's global batch of keys.

Scale. Replica r's loss is the mean over its n queries; the global loss is the mean over all B = W n
queries, ``(1 / W) sum_r L_r`` (each query's term depends on its own query and key and on the
queue, which every replica holds identically). The optimizer SUMs the replicas' gradients
(``Optimizer.apply_gradients`` all-reduces under tf.distribute), so each replica differentiates
``L_r / W``: the sum is then exactly the gradient of the global mean. (Keras ``Loss`` objects divide
by the replica count themselves; a hand-written mean must.)

Order. The official code updates the key network at the start of a step, before computing keys;
here it is updated at the end of a step, after the optimizer. The sequences of key weights are the
same: step t's keys see ``m w_k + (1 - m) w_q`` with the query weights as they are after step t - 1,
and the official first update is a no-op (the key network starts as a copy). That holds for a
constant m (MoCo's, every recipe's); under ``--key-momentum-schedule cosine`` the update at the end
of step t uses m_t where one at the start of step t + 1 would use m_(t+1): one step behind along
the schedule.

Views. Both views are always made by one XLA-compiled function (``jit_compile=True``), also when
the rest of the step is not compiled: the augmentation is element-wise arithmetic and gathers with
static shapes and no collectives, so it compiles under any strategy, and XLA fuses its ops into a
few loops over the pixels instead of one pass over the batch per op: on a 2-core CPU 8,018 views/s
against the plain graph's 2,662 (``python -m bench.bench_frameworks``, rows ``tensorflow`` and
``tensorflow-graph``, 2026-12-01). Each op still equals the NumPy
reference within 1/255 (``tests/test_tf_augment.py``).

Mixed precision. With a "mixed_float16" or "mixed_bfloat16" Keras policy on the networks, the
projections are cast to float32 before normalisation, so the logits (cosines / T, up to 1/T) and the
softmax are float32. float16 also needs loss scaling: pass an optimizer built with
``loss_scaling=True`` (``optim.build_optimizer``); ``optimizer.scale_loss`` and ``apply_gradients``
do the scaling and unscaling (and skip a step whose gradients overflowed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import keras
import tensorflow as tf

from common.augment import PairSpec
from tensorflow_moco import distributed
from tensorflow_moco.augment import apply_view
from tensorflow_moco.losses import info_nce, l2_normalize, symmetric_info_nce
from tensorflow_moco.model import MoCo, check_queue_size


@dataclass(frozen=True)
class StepConfig:
    """What a training step needs besides the networks and the optimizer.

    ``temperature`` defaults to MoCo v2's (``main_moco.py --moco-t 0.2``); the MoCo CIFAR-10 demo
    uses 0.1. (The key momentum m is an argument of every step: constant, or rising to 1 along a
    cosine.) ``symmetric`` is the demo's
    symmetric loss (both views as queries, the two directions summed, both views' keys enqueued:
    2 B keys per step). ``jit_compile`` compiles the forward and backward pass (views, both
    networks, loss, gradients) with XLA, on a single replica (see :func:`make_train_step`).
    """

    pair_spec: PairSpec
    global_batch: int
    temperature: float = 0.2
    shuffle_bn: bool = True
    symmetric: bool = False
    jit_compile: bool = False


@functools.cache
def compiled_views(pair_spec: PairSpec):
    """``(images, view1, view2) -> (x1, x2)``: both views in one XLA-compiled ``tf.function``
    (module docstring, "Views"). One per pair of views and process: every step that makes the
    same views (a resumed run's, an evaluation's) reuses the compiled program."""
    view1_spec, view2_spec = pair_spec.views

    @tf.function(jit_compile=True, autograph=False)
    def make_views(images, view1, view2):
        return apply_view(images, view1, view1_spec), apply_view(images, view2, view2_spec)

    return make_views


def _updates_bn_through_merge_call(strategy: tf.distribute.Strategy) -> bool:
    """Whether a Mirrored (or MultiWorkerMirrored) replica assigns its BN moving statistics (mean-
    aggregated variables) through ``merge_call``: always, except inside XLA when every device is a
    GPU (``MirroredExtended._use_merge_call`` in tensorflow/python/distribute)."""
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    return isinstance(strategy, mirrored) and any(
        "GPU" not in device.upper() for device in strategy.extended.worker_devices)


def make_train_step(strategy: tf.distribute.Strategy, moco: MoCo,
                    optimizer: keras.optimizers.Optimizer, config: StepConfig):
    """A ``tf.function`` ``train_step(images, view1, view2, seed, key_momentum) -> {"loss": global
    mean loss}``.

    The first four arguments are per-replica values as ``data.distribute_stream`` yields them (plain
    tensors on one device): uint8 NHWC images of the replica's shard, both views' dense parameters
    for them (``common.augment.dense.dense_view_params``) and the step's Shuffle BN seed, an int64
    pair (the same on every replica). ``key_momentum`` is this step's m, a float32 scalar tensor (a
    Python float would retrace the function for every new value). ``moco`` and ``optimizer`` must
    have been built in ``strategy.scope()``, the optimizer already built on ``moco.query_variables``.
    """
    world = strategy.num_replicas_in_sync
    if config.global_batch % world:
        raise ValueError(f"the global batch {config.global_batch} does not split over {world} replicas")
    check_queue_size(moco.queue_size, config.global_batch * (2 if config.symmetric else 1))
    if config.jit_compile and world > 1:
        raise ValueError(
            "jit_compile needs a single replica: with several, each replica's pass contains "
            "synchronisation points (the all-reduce of the BN moving statistics is a merge_call), "
            "which TensorFlow cannot place inside a nested XLA-compiled tf.function")
    if config.jit_compile and _updates_bn_through_merge_call(strategy):
        raise ValueError(
            "jit_compile under a MirroredStrategy with a replica on the CPU: even one replica "
            "updates the BN moving statistics through a merge_call there, which TensorFlow cannot "
            "place inside a nested XLA-compiled tf.function. On one CPU use --strategy default "
            "(what auto picks without a GPU), or leave out --jit-compile")
    if not optimizer.built:
        raise ValueError("build the optimizer on moco.query_variables inside strategy.scope() before "
                         "making the step (optim.build_optimizer does): slots created lazily inside "
                         "the traced step fail under tf.distribute")
    if (moco.dtype_policy.name == "mixed_float16"
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
        raise ValueError("mixed_float16 needs loss scaling: build the optimizer with "
                         "loss_scaling=True")
    variables = moco.query_variables
    make_views = compiled_views(config.pair_spec)

    def keys_of(views, seed):
        keys = distributed.shuffled_forward(moco.key, views, seed, config.shuffle_bn)
        return l2_normalize(tf.cast(keys, tf.float32))  # the official code enqueues normalised keys

    def queries_of(views):
        return tf.cast(moco.query(views), tf.float32)

    def loss_and_gradients(images, view1, view2, seed):
        """This replica's share of the loss, its gradient, and the global batch of new keys."""
        x1, x2 = make_views(images, view1, view2)
        k2 = keys_of(x2, tf.random.experimental.stateless_fold_in(seed, 0))
        if config.symmetric:
            k1 = keys_of(x1, tf.random.experimental.stateless_fold_in(seed, 1))
        with tf.GradientTape() as tape:
            if config.symmetric:
                loss = symmetric_info_nce(queries_of(x1), distributed.local_rows(k2), queries_of(x2),
                                          distributed.local_rows(k1), moco.queue, config.temperature)
            else:
                loss = info_nce(queries_of(x1), distributed.local_rows(k2), moco.queue,
                                config.temperature)
            replica_loss = loss / world
            scaled_loss = optimizer.scale_loss(replica_loss)
        gradients = tape.gradient(scaled_loss, variables)
        new_keys = tf.concat([k1, k2], axis=0) if config.symmetric else k2
        return replica_loss, gradients, new_keys

    if config.jit_compile:
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True, autograph=False)

    def replica_step(images, view1, view2, seed):
        replica_loss, gradients, new_keys = loss_and_gradients(images, view1, view2, seed)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return replica_loss, new_keys

    @tf.function(autograph=False)  # every Python `if` here is on static config: nothing to convert
    def train_step(images, view1, view2, seed, key_momentum):
        replica_loss, new_keys = strategy.run(replica_step, args=(images, view1, view2, seed))
        with strategy.scope():  # cross-replica updates of mirrored variables
            moco.momentum_update(key_momentum)
            moco.enqueue(new_keys)
        return {"loss": strategy.reduce(tf.distribute.ReduceOp.SUM, replica_loss, axis=None)}

    return train_step
