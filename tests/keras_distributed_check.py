"""One data-parallel BYOL step on 2 devices against one device, for tests/test_keras_distributed.py.

    python -m tests.keras_distributed_check jax                 (prints one JSON line)
    python -m tests.keras_distributed_check tensorflow sync
    python -m tests.keras_distributed_check tensorflow replica

A process has one Keras backend and fixes its devices when the backend starts, so each case is its
own process with 2 CPU devices: on JAX ``XLA_FLAGS=--xla_force_host_platform_device_count=2``
(set here if the caller did not), on TensorFlow the CPU split into 2 logical devices by
``distributed.place`` before the runtime starts. In that one process, from the same initial weights
and on the same global batch of 8 (the shared stream's step 0), the script runs

- the **data-parallel step**: ``distributed.place(2, ...)``, the model built and compiled in its
  scope, one ``fit`` step (JAX ``DataParallel``; TensorFlow ``MirroredStrategy``, BatchNorm
  synchronised over the replicas or per replica);
- the **reference**: on JAX and TensorFlow "sync", the single-device ``fit`` step (Keras' default
  placement; on TensorFlow with ``run_eagerly``, the same ``train_step`` without tracing it a second
  time). BatchNorm sees the global batch in both, so everything must agree. On TensorFlow
  "replica" each replica normalises its own half of the batch and moves its own copy of the BN
  moving statistics, which no single-device ``fit`` does; the reference is then that step written
  out on one device: the loss as the mean of the two halves' losses, each half through the model in
  training mode (its own batch statistics) from the initial moving statistics, one optimizer step on
  the gradient of that mean, one EMA step;

and reports the largest differences: the loss, the online weights, the target weights, the BN
moving statistics, the optimizer variables, the EMA counter; on TensorFlow the differences between
the replicas' copies; and the encoder's inference features of an odd batch (the kNN monitor's path,
padded over the devices). ``moved`` (how far the online weights went) shows the comparison has
teeth. Graph optimisation (Grappler) is off on TensorFlow, to trace faster; both sides run the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

BACKEND = sys.argv[1] if __name__ == "__main__" else os.environ.get("KERAS_BACKEND", "tensorflow")
os.environ["KERAS_BACKEND"] = BACKEND
if BACKEND == "jax" and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                               "--xla_force_host_platform_device_count=2").strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from common.arch import ResNetSpec  # noqa: E402
from common.augment import PairSpec, preset  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from common.stream import DataStream  # noqa: E402
from keras_byol import backend, distributed, losses  # noqa: E402
from keras_byol.byol import BYOL  # noqa: E402
from keras_byol.data import step_inputs  # noqa: E402
from keras_byol.evaluate import KerasEncoder  # noqa: E402
from keras_byol.optim import build_optimizer  # noqa: E402
from keras_byol.target import is_moving_statistic  # noqa: E402

# Two stages (stem, a block, a strided block with its shortcut): every kind of layer of the encoder,
# at half the tracing time of tests/keras_checks.py's four.
SPEC = ResNetSpec("tiny", "basic", (1, 1), (8, 16), "cifar", 1)
# BYOL's views reduced to their geometry (crop, flip; normalised): per-image parameters that must
# follow their images onto the devices, at a fraction of the full views' tracing and compile time
# (the views themselves are checked in tests/test_keras_augment.py).
PAIR = PairSpec(*(dataclasses.replace(view, jitter=None, grayscale=None, blur=None, solarize=None)
                  for view in preset("byol", 16).views))
GLOBAL_BATCH, DEVICES = 8, 2


def build(sync_bn: bool = False) -> BYOL:
    return BYOL(SPEC, PAIR, total_steps=4, base_tau=0.9, projector_hidden=32, projection_dim=16,
                predictor_hidden=32, sync_bn=sync_bn)


def compile_model(model: BYOL, run_eagerly: bool = False) -> None:
    # LARS, BYOL's optimizer, with solo-learn's CIFAR trust coefficient: the weights move visibly.
    model.compile(optimizer=build_optimizer("lars", 1.0, weight_decay=1e-4, eta=0.02),
                  run_eagerly=run_eagerly)


def inputs() -> dict[str, np.ndarray]:
    images = np.random.default_rng(4).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    stream = DataStream(len(images), (16, 16), GLOBAL_BATCH, PAIR, seed=0)
    return step_inputs(images, stream.step(0, 0))


def groups(model: BYOL) -> dict[str, list]:
    """The model's variables by role."""
    stats = [v for v in model.non_trainable_variables if is_moving_statistic(v)]
    return {"online": list(model.trainable_variables),
            "target": [t for t, _ in model.target_pairs if not is_moving_statistic(t)],
            "bn_stats": stats,
            "optimizer": list(model.optimizer.variables),
            "ema_step": [model.ema_step]}


def copies(variable) -> list[np.ndarray]:
    """Every device's copy of a variable: a TensorFlow mirrored variable's components, else the
    (JAX: global) array."""
    components = getattr(variable.value, "values", None)  # tf.distribute's MirroredVariable
    if BACKEND == "tensorflow" and components is not None:
        return [component.numpy() for component in components]
    return [ops.convert_to_numpy(variable.value)]


def state(model: BYOL) -> dict[str, list[list[np.ndarray]]]:
    """group -> variable -> the copies of that variable on each device."""
    return {name: [copies(v) for v in variables] for name, variables in groups(model).items()}


def largest(values) -> float:
    """The largest of ``values`` (0 if none), NaN if any is NaN: Python's ``max`` drops a NaN
    (``max(0.5, nan) == 0.5``), NumPy's keeps it."""
    return float(np.max(list(values), initial=0.0))


def max_diff(a, b) -> float:
    """``max |x - y|`` over the pairs; NaN where either side holds one (both come from the model)."""
    return largest(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0)
                   for x, y in zip(a, b, strict=True))


class OneBatch(keras.utils.PyDataset):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.batch


def fit_one_step(model: BYOL, batch) -> float:
    history = model.fit(OneBatch(batch), epochs=1, shuffle=False, verbose=0).history
    return float(history["step_loss"][0])


def split_reference(initial: list[np.ndarray], batch) -> dict:
    """TensorFlow's per-replica-BN step written out on one device (module docstring)."""
    import tensorflow as tf

    model = build()
    model.set_weights(initial)
    compile_model(model)
    stats = groups(model)["bn_stats"]
    start = [v.numpy() for v in stats]
    out = model(batch, training=True)  # the loss with BN over the global batch, for comparison
    global_bn_loss = float(losses.byol(out["p1"], out["p2"], out["z1"], out["z2"]))
    shard_stats = []
    with tf.GradientTape() as tape:
        shard_losses = []
        for rank in range(DEVICES):
            for variable, value in zip(stats, start, strict=True):
                variable.assign(value)
            shard = {k: v[rank * GLOBAL_BATCH // DEVICES:(rank + 1) * GLOBAL_BATCH // DEVICES]
                     for k, v in batch.items()}
            out = model(shard, training=True)
            shard_losses.append(losses.byol(out["p1"], out["p2"], out["z1"], out["z2"]))
            shard_stats.append([v.numpy() for v in stats])
        loss = tf.add_n(shard_losses) / DEVICES
    gradients = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply(gradients, model.trainable_variables)
    model.update_target()
    for variable, value in zip(stats, shard_stats[0], strict=True):
        variable.assign(value)  # replica 0's statistics: the primary copy, what a checkpoint saves
    result = state(model)
    result["bn_stats"] = [[shard_stats[rank][i] for rank in range(DEVICES)]
                          for i in range(len(stats))]
    return {"loss": float(loss), "state": result, "model": model, "global_bn_loss": global_bn_loss}


def encoder_features(model: BYOL, replicas: int) -> np.ndarray:
    images = np.random.default_rng(5).random((5, 16, 16, 3)).astype(np.float32)
    return KerasEncoder(model, {}, replicas=replicas).features(images)


def run(mode: str) -> dict:
    seconds, clock = {}, time.perf_counter()

    def lap(name):
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    report: dict = {"backend": BACKEND, "mode": mode}
    batch = inputs()
    sync_bn = mode != "replica"
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        # Placed first: the CPU must be split into 2 logical devices before TensorFlow's runtime
        # starts; the reference then runs outside the strategy's scope, on the default device.
        placement = distributed.place(DEVICES, GLOBAL_BATCH, sync_bn=sync_bn)
    backend.set_random_seed(0)
    reference = build()
    initial = [ops.convert_to_numpy(v.value) for v in reference.weights]
    initial_online = [ops.convert_to_numpy(v.value) for v in reference.trainable_variables]
    lap("build")
    if mode == "replica":
        split = split_reference(initial, batch)
        expected_loss, expected = split["loss"], split["state"]
        reference = split["model"]
        report["global_bn_loss"] = split["global_bn_loss"]
    else:
        compile_model(reference, run_eagerly=BACKEND == "tensorflow")  # (module docstring)
        expected_loss = fit_one_step(reference, batch)
        expected = state(reference)
    expected_features = encoder_features(reference, 1)
    lap("reference")
    if BACKEND == "jax":
        try:
            distributed.place(DEVICES, GLOBAL_BATCH, sync_bn=False)
        except ConfigError as error:
            report["no_sync_bn_refused"] = str(error)
        placement = distributed.place(DEVICES, GLOBAL_BATCH)
    with placement.scope():
        model = build(placement.sync_bn)
        model.set_weights(initial)
        compile_model(model)
    lap("build_distributed")
    loss = fit_one_step(model, batch)
    lap("distributed_step")
    features = encoder_features(model, placement.count)
    lap("distributed_features")
    got = state(model)
    report.update({
        "devices": placement.count,
        "describe": placement.describe(),
        "loss": loss,
        "expected_loss": expected_loss,
        "features_shape": list(features.shape),
        "features": max_diff([features], [expected_features]),
        "moved": max_diff([c[0] for c in expected["online"]], initial_online),
        "ema_step": [int(c) for c in got["ema_step"][0]],
    })
    # Each device's copy against the reference (per-replica statistics: the replica's own shard).
    for name in ("online", "target", "bn_stats", "optimizer"):
        if name == "bn_stats" and mode == "replica":
            report[name] = largest(max_diff(g, e) for g, e in zip(got[name], expected[name], strict=True))
        else:
            report[name] = largest(max_diff(g, [e[0]] * len(g))
                                   for g, e in zip(got[name], expected[name], strict=True))
        report[f"{name}_copies"] = len(got[name][0])
        report[f"{name}_spread"] = largest(max_diff(g, [g[0]] * len(g)) for g in got[name])
    if BACKEND == "jax":
        value = model.trainable_variables[0].value
        report["variable_devices"] = len(value.sharding.device_set)
        layout = keras.distribution.distribution().get_data_layout((GLOBAL_BATCH, 16, 16, 3))
        report["data_axes"] = [str(a) for a in layout.axes]
    elif mode == "sync":  # last (it makes a strategy of its own): the program refuses XLA over the
        from keras_byol import train  # replicas (once: the BN mode does not matter to it)

        try:
            train.Trainer(train.parse_request(["--devices", str(DEVICES), "--jit-compile",
                                               "--batch-size", str(GLOBAL_BATCH)]))
        except ConfigError as error:
            report["jit_with_devices_refused"] = str(error)
    report["seconds"] = seconds
    return report


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[2] if len(sys.argv) > 2 else "sync")))
