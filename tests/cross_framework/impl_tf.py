"""The TensorFlow chapter (tensorflow_moco) run on the cross-framework inputs: raw outputs only."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import tests.tf_setup  # noqa: F401,I001  (splits the CPU into 2 logical devices before TF starts)
from common.arch import resnet_spec
from common.augment.dense import dense_view_params
from tensorflow_moco import augment, losses, optim
from tensorflow_moco import model as moco_model
from tensorflow_moco.data import distribute_stream
from tests.cross_framework import cases

LOSSES = {"nt_xent": lambda a, t: losses.nt_xent(*a, t), "info_nce": lambda a, t: losses.info_nce(*a, t),
          "byol": lambda a, t: losses.byol(*a)}


def value_and_grads(fn, arrays):
    tensors = [tf.constant(a) for a in arrays]
    with tf.GradientTape() as tape:
        for t in tensors:
            tape.watch(t)
        value = fn(tensors)
    grads = tape.gradient(value, tensors, unconnected_gradients="zero")
    return value, [g.numpy() for g in grads]


# -- losses ----------------------------------------------------------------------------------------
def loss_outputs() -> dict:
    out = {}
    for dtype, case in cases.loss_case_dtypes():
        value, grads = value_and_grads(lambda t, c=case: LOSSES[c.loss](t, c.temperature), case.arrays)
        out[f"{dtype} {case.name}"] = (float(value), grads, value.dtype.name)
    return out


# -- optimisers and the schedule -------------------------------------------------------------------
def optim_outputs() -> dict:
    init, grads = cases.optim_problem()
    out = {}
    for name in cases.optimizer_names("tensorflow"):
        # Keras variables, as the chapter's models hold (its optimizers are Keras 3 optimizers).
        variables = [keras.Variable(init[k], dtype="float64", name=k) for k in cases.OPTIM_SHAPES]
        kind, option = name.split(" ")
        optimizer = optim.build_optimizer(
            kind, variables, cases.OPTIM_SCHEDULE, weight_decay=cases.OPTIM_WEIGHT_DECAY,
            momentum=cases.OPTIM_MOMENTUM, eta=cases.OPTIM_ETA,
            lars_variant=option if kind == "lars" else "simclr",
            sgd_momentum_style=option if kind == "sgd" else "lr_outside")
        trajectory = []
        for g in grads:
            named = list(zip(cases.OPTIM_SHAPES, variables, strict=True))
            optimizer.apply_gradients([(tf.constant(g[k]), v) for k, v in named])
            trajectory.append({k: np.array(v.numpy()) for k, v in named})
        out[name] = trajectory
    table = optim.TableSchedule(cases.OPTIM_SCHEDULE, dtype="float64")
    out["schedule"] = np.array([float(table(t)) for t in range(cases.SCHEDULE_READS)])
    return out


# -- augmentations ---------------------------------------------------------------------------------
def augment_outputs() -> dict:
    out = {}
    for name in cases.AUG_OPS:
        images, params, spec = cases.aug_case(name)
        out[name] = augment.apply_view(tf.constant(images), dense_view_params(params), spec).numpy()
    images, stream = cases.stream_setup()
    batches = iter(distribute_stream(tf.distribute.get_strategy(), images, stream, epoch=0))
    for step in range(cases.STREAM_STEPS):
        uint8, view1, view2, _ = next(batches)
        for v, (params, spec) in enumerate(zip((view1, view2), cases.STREAM_PAIR.views, strict=True)):
            view = augment.apply_view(uint8, params, spec).numpy()
            out[f"step {step} view {v + 1}"] = cases.unnormalise(view, spec)
    return out


# -- encoders --------------------------------------------------------------------------------------
def zero_initialised_convs():
    """Build encoders without drawing their random kernels: the weights are imported next."""
    return mock.patch.object(moco_model, "_conv_initializer", lambda: keras.initializers.Zeros())


def _encoder(spec):
    with zero_initialised_convs():
        return moco_model.build_encoder(spec)


def encoder_outputs(folder: Path) -> dict:
    out = {}
    for arch, size, side in cases.ENCODERS:
        spec = resnet_spec(arch, size)
        path = folder / f"{cases.encoder_key(arch, size)}.safetensors"
        encoder = _encoder(spec)
        moco_model.import_encoder(path, encoder, spec)
        out[cases.encoder_key(arch, size)] = {
            "features": encoder(cases.encoder_input(side), training=False).numpy(),
            "parameters": int(sum(np.prod(v.shape) for v in encoder.trainable_variables)),
            **cases.round_trip(path, lambda e=encoder, s=spec: moco_model.encoder_to_portable(e, s),
                               lambda p, e=encoder, s=spec, z=size: moco_model.export_encoder(p, e, s, z),
                               lambda p, e=encoder, s=spec: moco_model.import_encoder(p, e, s),
                               files=(arch, size, side) in cases.ROUND_TRIP_ENCODERS),
        }
    return out


def portable_names(encoder, dots: bool = True) -> list[str]:
    """The portable name of each trainable variable (layer name + attribute), in their order."""
    names = {id(v): f"{layer.name if dots else layer.name.replace('_', '.')}.{v.name}"
             for layer in encoder.layers for v in layer.trainable_weights}
    return [names[id(v)] for v in encoder.trainable_variables]


def train_mode_outputs(folder: Path) -> dict:
    out = {}
    for arch, size, side in cases.TRAIN_MODE_ENCODERS:
        spec = resnet_spec(arch, size)
        encoder = _encoder(spec)
        moco_model.import_encoder(folder / f"{cases.encoder_key(arch, size)}.safetensors", encoder, spec)
        x = cases.encoder_input(side, cases.TRAIN_MODE_BATCH, seed=1)
        with tf.GradientTape() as tape:
            h = encoder(x, training=True)
            s = tf.reduce_sum(h * cases.train_mode_weights(arch, size))
        grads = tape.gradient(s, encoder.trainable_variables)
        out[cases.encoder_key(arch, size)] = {
            "features": h.numpy(),
            "grads": {n: g.numpy() for n, g in zip(portable_names(encoder), grads, strict=True)},
            "moving": {k: v for k, v in moco_model.encoder_to_portable(encoder, spec).items()
                       if ".moving_" in k}}
    return out


# -- one SimCLR step -------------------------------------------------------------------------------
def simclr_head(setup, weights) -> keras.Sequential:
    """SimCLR's head in Keras layers (this chapter has MoCo's), PyTorch's BN conventions."""
    def bn(center, name):
        return keras.layers.BatchNormalization(momentum=1 - setup.bn_momentum, epsilon=setup.bn_eps,
                                               center=center, name=name)

    head = keras.Sequential([keras.Input((weights["linear1"].shape[0],)),
                             keras.layers.Dense(setup.hidden, use_bias=False, name="linear1"),
                             bn(True, "bn1"), keras.layers.ReLU(),
                             keras.layers.Dense(setup.out, use_bias=False, name="linear2"),
                             bn(False, "bn2")])
    for layer in head.layers:
        for v in layer.weights:
            key = layer.name if v.name == "kernel" else f"{layer.name}.{v.name}"
            v.assign(weights[key])
    return head


def simclr_step() -> dict:
    setup = cases.STEP
    encoder_weights, head_weights = cases.step_weights()
    spec = setup.spec
    encoder = _encoder(spec)
    moco_model.encoder_from_portable(encoder, spec, encoder_weights)
    head = simclr_head(setup, head_weights)
    variables = encoder.trainable_variables + head.trainable_variables
    optimizer = optim.build_optimizer("lars", variables, setup.lr, weight_decay=setup.weight_decay,
                                      momentum=setup.momentum, eta=setup.eta, lars_variant="simclr")
    images, params1, params2 = cases.step_inputs()
    views = [augment.apply_view(tf.constant(images), dense_view_params(p), s)
             for p, s in zip((params1, params2), setup.pair.views, strict=True)]
    with tf.GradientTape() as tape:
        z = head(encoder(tf.concat(views, axis=0), training=True), training=True)
        loss = losses.nt_xent(z[: setup.batch], z[setup.batch:], setup.temperature)
    grads = tape.gradient(loss, variables)
    names = portable_names(encoder)
    encoder_grads = {n: g.numpy() for n, g in zip(names, grads, strict=False)}
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    weights = moco_model.encoder_to_portable(encoder, spec)
    return {"loss": float(loss), "grads": encoder_grads, "weights": {k: weights[k] for k in names},
            "head": {"linear1": head.get_layer("linear1").kernel.numpy(),
                     "linear2": head.get_layer("linear2").kernel.numpy()}}


# -- distributed: InfoNCE under MirroredStrategy over 2 logical CPUs -------------------------------
def mirrored_info_nce() -> dict:
    """Each replica's InfoNCE over its contiguous half of the global batch, divided by the replica
    count as tensorflow_moco/step.py does; the replicas' losses summed (``strategy.reduce``) and
    each replica's gradient with respect to its own queries and keys, concatenated in replica order."""
    devices = tests.tf_setup.logical_cpus()
    if len(devices) < cases.WORLD:
        return {"skipped": f"only {len(devices)} logical CPU(s)"}
    strategy = tf.distribute.MirroredStrategy(devices[: cases.WORLD])
    inputs = cases.distributed_inputs()
    size = cases.DIST_N // cases.WORLD

    def shard(name):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(inputs[name][ctx.replica_id_in_sync_group * size:][:size]))

    queue = tf.constant(inputs["queue"])

    def replica(q, k):
        with tf.GradientTape() as tape:
            tape.watch([q, k])
            loss = losses.info_nce(q, k, queue, cases.DIST_T) / strategy.num_replicas_in_sync
        return (loss, *tape.gradient(loss, [q, k]))

    loss, dq, dk = strategy.run(replica, args=(shard("q"), shard("k")))
    return {"replicas": strategy.num_replicas_in_sync,
            "loss": float(strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)),
            "grads": [np.concatenate([t.numpy() for t in strategy.experimental_local_results(g)])
                      for g in (dq, dk)]}


# -- kNN of chapter-trained encoders ---------------------------------------------------------------
def train_for_knn(path: Path) -> None:
    """A few MoCo steps (the chapter's make_train_step, run eagerly) on the shared stream."""
    from tensorflow_moco.evaluate import build_moco
    from tensorflow_moco.step import StepConfig, make_train_step

    config = cases.KNN_CONFIG
    keras.utils.set_random_seed(1)
    strategy = tf.distribute.get_strategy()
    moco = build_moco(config)
    optimizer = optim.build_optimizer("sgd", moco.query_variables, 0.5, weight_decay=1e-4)
    images, stream = cases.knn_stream()
    step = make_train_step(strategy, moco, optimizer, StepConfig(stream.pair_spec, stream.global_batch,
                                                                 temperature=0.2, shuffle_bn=False))
    batches = iter(distribute_stream(strategy, images, stream, epoch=0))
    tf.config.run_functions_eagerly(True)  # tracing the step costs more than these steps
    try:
        for _ in range(cases.KNN_STEPS):
            step(*next(batches), tf.constant(0.99))
    finally:
        tf.config.run_functions_eagerly(False)
    moco_model.export_encoder(path, moco.query_encoder, resnet_spec(config["arch"], config["image_size"]),
                              config["image_size"])


def knn_outputs(folder: Path) -> dict:
    from tensorflow_moco.evaluate import load_encoder as load

    config = cases.KNN_CONFIG
    data = cases.knn_data()
    out = {}
    encoder = None
    for name in cases.TRAINED:
        path = folder / f"{name}.safetensors"
        if encoder is None:  # one model; the other files imported into it (the chapter's own import)
            encoder = load(config, "cpu", None, path)
        else:
            moco_model.import_encoder(path, encoder.moco.query_encoder,
                                      resnet_spec(config["arch"], config["image_size"]))
        out[name] = cases.knn_result(encoder.features, data)
    return out
