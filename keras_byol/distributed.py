"""Data-parallel BYOL on several devices of one machine: what differs per Keras backend.

One process drives N devices. Every device holds a copy of every variable; each step's global batch
(the shared stream's, ``common/stream.py``) is split into N contiguous shards, shard r on device r
(the stream's own convention: the shards in device order are the single-device batch); the
gradients are combined so that the optimizer applies the gradient of the *global* mean loss, and
the target's EMA follows the updated online weights on every device. ``model.fit`` stays the loop.

- **JAX**: ``keras.distribution.DataParallel`` (:func:`place` sets it before the model is built).
  ``fit`` compiles *one* program over the global batch, laid out across the devices (variables
  replicated, batch sharded); XLA inserts the collectives. Every op -- the loss's mean, BatchNorm's
  batch statistics, the EMA in ``jax_step.py`` -- sees the global batch, so a step equals the
  single-device step up to float rounding.
- **TensorFlow**: ``tf.distribute.MirroredStrategy``; the model is built and compiled inside
  ``strategy.scope()``, and ``fit`` runs ``train_step`` once per replica on its shard. Three things
  then need care, all handled in ``byol.py`` with the helpers below:

  1. *Loss scale.* The optimizer SUMs the replicas' gradients. Keras ``Loss`` objects divide by the
     replica count themselves (``scale_loss_for_distribution``), but ``BYOL.compute_loss`` is
     hand-written, so it returns :func:`replica_share` -- the replica's mean over its shard divided by
     N -- and the summed gradient is the gradient of the global mean. (Keras' ``loss`` log multiplies
     it back by N before averaging.)
  2. *The EMA.* The target's variables are mirrored, created with ``aggregation="none"``. The EMA
     runs once per step in cross-replica context (:func:`cross_replica`, a ``merge_call``): each
     assignment computes the update from the primary copies -- after the optimizer's all-reduced
     update every replica holds the same online weights -- and writes it to every copy, so the
     mirrors cannot drift apart.
  3. *BatchNorm.* Keras' TensorFlow BN normalises each replica's shard with the shard's statistics
     unless ``synchronized=True``, which all-reduces the moments: global statistics, the
     single-device numbers. BYOL's code normalises over all devices (deepmind-research
     ``configs/byol.py``: "Accumulate batchnorm statistics across devices", ``cross_replica_axis``),
     so ``--sync-bn`` is the default here. With ``--no-sync-bn`` each replica normalises its own
     shard and updates *its own copy* of the moving statistics (Keras creates them with
     ``aggregation="none"``); a checkpoint saves the primary copy, replica 0's, as PyTorch DDP's
     ``broadcast_buffers`` keeps rank 0's.

- **PyTorch**: Keras 3.15.1 (the pinned version, and the newest release) has no data-parallel
  training on this backend: ``keras.distribution`` has no torch implementation
  (``keras/src/backend/torch`` has no ``distribution_lib.py``: ``list_devices`` and
  ``DataParallel`` are unavailable) and ``TorchTrainer`` never wraps the model in
  ``DistributedDataParallel``, so N processes under ``torchrun`` would train N independent models.
  Both pieces were merged after 3.15.1 (keras-team/keras#23052, ``distribution_lib.py``; #23316,
  DDP in ``TorchTrainer``), on the way to 3.16.0. :func:`place` refuses rather than train silently
  unsynchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass, field

import keras

from common.errors import ConfigError

TORCH_UNSUPPORTED = (
    "multi-device training is not available on the torch backend with Keras {version}: its "
    "keras.distribution has no torch implementation (no keras/src/backend/torch/"
    "distribution_lib.py) and its trainer never wraps the model in DistributedDataParallel, so "
    "processes started by torchrun would each train their own model. Keras added both after 3.15.1 "
    "(keras-team/keras#23052 and #23316, for 3.16.0). Use --backend jax or --backend tensorflow "
    "for --devices N, or the PyTorch chapter (pytorch_simclr) for DDP."
)


def parse_devices(text: str) -> int | str:
    """``--devices``: a positive number of devices, or ``all`` (every accelerator, else every CPU
    device the backend sees)."""
    if text == "all":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        # argparse prints an ArgumentTypeError's own message (a ValueError: "invalid ... value")
        raise argparse.ArgumentTypeError(f"a positive number or 'all', not {text!r}")
    return count


@dataclass
class Placement:
    """Where a run trains: the backend's devices, and the TensorFlow strategy if there is one."""

    backend: str
    devices: list[str] = field(default_factory=list)
    strategy: object | None = None  # tf.distribute.MirroredStrategy on TensorFlow with N > 1
    sync_bn: bool = False  # build BatchNormalization(synchronized=True): TensorFlow, N > 1 only

    @property
    def count(self) -> int:
        return max(1, len(self.devices))

    def scope(self):
        """Build and compile the model inside this (``strategy.scope()`` on TensorFlow)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        if self.count == 1:
            return "1 device"
        how = {"jax": "keras.distribution.DataParallel",
               "tensorflow": "tf.distribute.MirroredStrategy"}[self.backend]
        bn = {"jax": "BN over the global batch",
              "tensorflow": "synchronised BN" if self.sync_bn else "per-replica BN"}[self.backend]
        return f"{self.count} devices ({how}, {bn})"


def place(devices: int | str, global_batch: int, sync_bn: bool = True) -> Placement:
    """Set up data parallelism over ``devices`` for the loaded backend; call before building the
    model (then build and compile it in ``placement.scope()``).

    One device: nothing is set up. ``sync_bn`` asks for BatchNorm over the global batch, what JAX
    always does; on TensorFlow it becomes ``synchronized=True``; refusing it is possible on
    TensorFlow only.
    """
    name = keras.backend.backend()
    if name == "torch":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if devices != 1 or world > 1:
            raise ConfigError(TORCH_UNSUPPORTED.format(version=keras.version()))
        return Placement(name)
    if devices == 1:
        return Placement(name)
    if devices != "all":
        _check_split(global_batch, devices)
    available = _jax_devices() if name == "jax" else _tf_devices(devices)
    count = len(available) if devices == "all" else devices
    if count > len(available):
        raise ConfigError(f"--devices {count}: Keras on {name} sees {len(available)} device(s) "
                          f"({', '.join(available)}). {_more_devices_hint(name, count)}")
    _check_split(global_batch, count)
    chosen = available[:count]
    if count == 1:
        return Placement(name, chosen)
    if name == "jax":
        if not sync_bn:
            raise ConfigError("--no-sync-bn is TensorFlow-only: JAX's DataParallel compiles one "
                              "program over the global batch, so BatchNorm always sees all of it")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=chosen))
        return Placement(name, chosen)  # (BN sees the global batch without synchronized=True)
    import tensorflow as tf

    return Placement(name, chosen, tf.distribute.MirroredStrategy(chosen), sync_bn=sync_bn)


def _check_split(global_batch: int, count: int) -> None:
    if global_batch % count:
        raise ConfigError(f"--batch-size {global_batch} does not split over {count} devices: use "
                          "a multiple of the device count")


def _jax_devices() -> list[str]:
    return keras.distribution.list_devices()


def _tf_devices(wanted: int | str) -> list[str]:
    """The logical GPUs; without any, the logical CPUs, splitting the CPU into ``wanted`` if
    TensorFlow has not initialised its devices yet (tests/tf_setup.py does the same)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):  # (listing *logical* devices starts the runtime)
        return [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = tf.config.list_physical_devices("CPU")
    if wanted != "all" and len(tf.config.get_logical_device_configuration(cpus[0]) or [None]) < wanted:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)])
        except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
            pass
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _more_devices_hint(name: str, count: int) -> str:
    if name == "jax":
        return (f"On a CPU, start Python with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{count} (keras_byol.train sets it for --devices N when it chooses JAX)")
    return ("On a CPU, TensorFlow must split it into logical devices before its runtime starts "
            "(keras_byol.train does this for --devices N)")


# --------------------------------------------------------------------------------------------------
# Inside the training step (TensorFlow under a strategy; no-ops elsewhere)
# --------------------------------------------------------------------------------------------------
def _replicas_in_sync() -> int:
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_share(loss):
    """What one replica differentiates so that the summed gradient is the global mean's:
    ``loss / N`` under a TensorFlow strategy of N replicas, ``loss`` otherwise (module docstring)."""
    replicas = _replicas_in_sync()
    return loss if replicas == 1 else loss * (1.0 / replicas)


def cross_replica(function):
    """``function()`` once per step in cross-replica context (``merge_call``) when called from the
    replicas of a TensorFlow strategy, so that its assignments write every mirrored copy; called
    directly anywhere else. Returns its result."""
    if keras.backend.backend() != "tensorflow":
        return function()
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:  # already cross-replica, or 1 device
        return function()
    return context.merge_call(lambda strategy: function())
