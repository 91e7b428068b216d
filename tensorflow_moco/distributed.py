"""tf.distribute for MoCo: the strategy, the per-replica input pipeline, and Shuffle BN.

Replicas and shards
-------------------
With W replicas, replica r trains on the contiguous shard ``[r B/W, (r + 1) B/W)`` of each global
batch (``common.stream``), so the W shards in replica order are the single-device batch: a
multi-replica step can be checked against one device on the very same images and view parameters.

Shuffle BN (He et al. 2020, section 3.3)
----------------------------------------
Each replica's BatchNorm normalises its own samples. If a query and its positive key were normalised
with statistics of the same sub-batch, the model could find the positive through those shared
statistics instead of through the image ("cheating" by intra-batch communication). MoCo therefore
computes the keys on a shuffled batch: gather the key images of all replicas, permute them with one
permutation shared by every replica, let each replica encode its shard of the permuted batch, gather
the keys and undo the permutation. The permutation is drawn from a seed that comes with the step's
data (``data.step_seed``), so every replica computes the same one without communicating (the
official code broadcasts it from rank 0, facebookresearch/moco#37; deriving it on each replica from
``experimental_local_results`` or an unseeded op would give each worker its own). On one replica
the shuffle only matters together with split BN (``model.BatchNorm``), which normalises groups of
the batch separately, as the MoCo CIFAR-10 demo does.

``ReplicaContext.all_gather`` has a gradient (it all-reduces the upstream gradient and keeps the
local rows); here it only carries images and keys under ``stop_gradient``, so none flows through it.
Every replica makes the same collective calls in the same order (no collective under ``tf.cond``).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from common.errors import ConfigError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def build_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one of :data:`STRATEGIES`).

    - ``auto``: ``MirroredStrategy`` over the local GPUs if there is any, else ``default``;
    - ``default``: TensorFlow's default strategy: one device, no distribution;
    - ``mirrored``: ``MirroredStrategy`` over all local GPUs (or the CPU): one process, synchronous;
    - ``multiworker``: ``MultiWorkerMirroredStrategy``, one process per machine, the cluster read
      from the ``TF_CONFIG`` environment variable. Create it at the start of the program, before
      any other TensorFlow op: it configures the collective runtime;
    - ``tpu``: ``TPUStrategy`` on the TPU named by the environment (``TPU_NAME``, a TPU node's
      configuration), else on the TPU attached to this machine (a Cloud TPU VM: ``tpu="local"``).
      Untested here; the input (``data.distribute_stream``) is a ``tf.data`` generator, which runs
      only in this Python process, so a TPU node, whose input pipeline runs on the TPU's own host,
      is unlikely to take it.
    """
    if name == "auto":
        return tf.distribute.MirroredStrategy() if tf.config.list_physical_devices("GPU") else \
            tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return tpu_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def check_batch_split(batch_size: int, replicas: int, bn_splits: int) -> str | None:
    """Refuse, before anything is built, a global batch the strategy's replicas cannot share, or a
    replica's share that does not cut into ``--bn-splits`` groups (split BN works per replica:
    W replicas of S groups each normalise W x S groups in all, model.py::BatchNorm).

    Returns a note for the user where that product is more groups than ``--bn-splits`` asked for:
    the MoCo demo's 8 groups stand for 8 GPUs on one, and on W GPUs S / W of them keep its 8."""
    if batch_size % replicas:
        raise ConfigError(f"--batch-size {batch_size} does not split over the strategy's {replicas} "
                          f"replicas: choose a multiple of {replicas}")
    share = batch_size // replicas
    if share % bn_splits:
        fits = max(d for d in range(1, bn_splits + 1) if share % d == 0)
        raise ConfigError(f"--bn-splits {bn_splits}: each of the {replicas} replicas gets {share} "
                          f"images of --batch-size {batch_size}, which do not cut into {bn_splits} "
                          f"BatchNorm groups (the groups are per replica); choose a --bn-splits that "
                          f"divides {share}, e.g. {fits}")
    if replicas == 1 or bn_splits == 1:
        return None
    keeps = (f"--bn-splits {bn_splits // replicas} keeps {bn_splits} groups in all"
             if bn_splits % replicas == 0 else "--bn-splits 1 gives one group per replica")
    return (f"note: split BN on {replicas} replicas: {replicas} x {bn_splits} = {replicas * bn_splits} "
            f"BatchNorm groups of {share // bn_splits} images, not {bn_splits} (the groups are per "
            f"replica; {keeps})")


# --------------------------------------------------------------------------------------------------
# Inside strategy.run: collectives over the replicas
# --------------------------------------------------------------------------------------------------
def replica_position() -> tuple[tf.Tensor | int, int]:
    """``(rank, world)``: this replica's index and the number of replicas in sync."""
    context = tf.distribute.get_replica_context()
    return context.replica_id_in_sync_group, context.num_replicas_in_sync


def all_gather(x: tf.Tensor) -> tf.Tensor:
    """Every replica's ``x`` concatenated along axis 0 in replica order (``x`` itself on one)."""
    context = tf.distribute.get_replica_context()
    world = context.num_replicas_in_sync
    if world == 1:
        return x
    gathered = context.all_gather(x, axis=0)
    gathered.set_shape([None if x.shape[0] is None else world * x.shape[0], *x.shape[1:]])
    return gathered  # (the gather's shape function forgets the static shape)


def local_rows(x: tf.Tensor) -> tf.Tensor:
    """This replica's contiguous shard of a global batch ``x`` (replica r: rows r n .. r n + n - 1)."""
    rank, world = replica_position()
    shard = tf.reshape(x, tf.concat([[world, -1], tf.shape(x)[1:]], axis=0))[rank]
    shard.set_shape([None if x.shape[0] is None else x.shape[0] // world, *x.shape[1:]])
    return shard


def permutation(batch: int | tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A uniform random permutation of ``range(batch)``, a pure function of the stateless ``seed``."""
    return tf.argsort(tf.random.stateless_uniform([batch], seed=seed))


def shuffled_forward(function: Callable[[tf.Tensor], tf.Tensor], local: tf.Tensor,
                     seed: tf.Tensor, shuffle: bool = True) -> tf.Tensor:
    """``function`` (the key network) on the global batch, with Shuffle BN: the global result.

    ``local`` is this replica's shard; returns the outputs of the whole global batch in its
    original order (every replica gets the same tensor). With ``shuffle``: gather the global
    batch, permute it with :func:`permutation` (``seed``: the same on every replica), apply
    ``function`` to this replica's contiguous shard of the permuted batch, gather and un-permute.
    Without: apply ``function`` to the local shard and gather.
    """
    if not shuffle:
        return all_gather(function(local))
    rank, world = replica_position()
    inputs = all_gather(local)
    order = permutation(tf.shape(inputs)[0], seed)
    mine = tf.reshape(order, [world, -1])[rank]
    outputs = all_gather(function(tf.gather(inputs, mine)))
    return tf.gather(outputs, tf.argsort(order))  # outputs[i] belongs to sample order[i]


def tpu_strategy() -> tf.distribute.TPUStrategy:
    """``TPUStrategy`` on the TPU the environment names, else on the one attached to this machine;
    no TPU at all is a ConfigError that says so."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    except ValueError:  # "Please provide a TPU Name": none named, so a TPU VM's own chips
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.OpError, ValueError) as error:
        raise ConfigError(f"--strategy tpu: no TPU found ({str(error).splitlines()[0][:120]}); run "
                          "on a Cloud TPU VM, or set TPU_NAME to your TPU") from error
    return tf.distribute.TPUStrategy(resolver)


def worker_position(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """``(index, count)`` of this worker process among the cluster's (``(0, 1)`` on one machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 0, 1
    return cluster_position(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id)


def cluster_position(cluster: dict, task_type: str | None, task_id: int | None) -> tuple[int, int]:
    """``(index, count)`` of a task in a ``TF_CONFIG`` cluster: the chief (if there is one) is 0,
    then the workers, as TensorFlow's own rule for which task saves; no cluster (a
    ``MultiWorkerMirroredStrategy`` on one machine, without ``TF_CONFIG``) is ``(0, 1)``."""
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if chiefs + workers == 0:
        return 0, 1
    task_id = int(task_id or 0)
    return (task_id if task_type == "chief" else chiefs + task_id), chiefs + workers


def any_replica(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True on every worker if ``flag`` is True on any (an all-reduce over the replicas; on one
    process the flag itself). The run policy asks this after every step, so that an interrupt seen
    by one worker stops all of them at the same step boundary."""
    if worker_position(strategy)[1] == 1:
        return flag
    value = strategy.run(lambda: tf.constant(int(flag)))
    return bool(strategy.reduce(tf.distribute.ReduceOp.MAX, value, axis=None).numpy())
