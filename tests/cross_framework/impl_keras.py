"""The Keras chapter (keras_byol) run on the cross-framework inputs, on whichever backend this
process's Keras runs: raw outputs only.

In the pytest process Keras runs on TensorFlow and these functions are called directly; JAX and
PyTorch run them in one subprocess each (``tests/cross_framework/keras_backend.py``). On JAX every
batch of computations is one ``jax.jit`` (compiling op by op eagerly costs several times more).
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import keras
import numpy as np
from keras import ops

from common.arch import resnet_spec
from common.schedules import EmaRise
from keras_byol import augment, losses, optim
from keras_byol import model as byol_model
from keras_byol.data import StreamDataset
from tests.cross_framework import cases

BACKEND = keras.backend.backend()
LOSSES = {"nt_xent": lambda a, t: losses.nt_xent(*a, t), "info_nce": lambda a, t: losses.info_nce(*a, t),
          "byol": lambda a, t: losses.byol(*a)}


def numpy(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def value_and_grads_many(fns, arrays_list) -> list[tuple[float, list[np.ndarray], str]]:
    """``fn(*arrays)`` and its gradient with respect to every array, for each pair; one ``jax.jit``
    for all of them on JAX."""
    if BACKEND == "jax":
        import jax

        def all_of(arrays_list):
            return [jax.value_and_grad(lambda *a, f=fn: f(list(a)), argnums=tuple(range(len(arrays))))(
                *arrays) for fn, arrays in zip(fns, arrays_list, strict=True)]

        results = jax.jit(all_of)(arrays_list)
        return [(float(v), [np.asarray(g) for g in gs], str(v.dtype)) for v, gs in results]
    out = []
    for fn, arrays in zip(fns, arrays_list, strict=True):
        value, grads = _value_and_grads(fn, arrays)
        out.append((float(numpy(value)), grads, keras.backend.standardize_dtype(value.dtype)))
    return out


def _value_and_grads(fn, arrays):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            value = fn(tensors)
        return value, [g.numpy() for g in tape.gradient(value, tensors, unconnected_gradients="zero")]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    value = fn(tensors)
    grads = torch.autograd.grad(value, tensors, allow_unused=True, materialize_grads=True)
    return value, [g.numpy() for g in grads]


def jitted_on_jax(fn):
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


# -- losses ----------------------------------------------------------------------------------------
def loss_outputs() -> dict:
    pairs = cases.loss_case_dtypes()
    fns = [lambda t, c=case: LOSSES[c.loss](t, c.temperature) for _, case in pairs]
    results = value_and_grads_many(fns, [list(case.arrays) for _, case in pairs])
    return {f"{dtype} {case.name}": result for (dtype, case), result in zip(pairs, results, strict=True)}


# -- optimisers and the schedule -------------------------------------------------------------------
def optim_outputs() -> dict:
    init, grads = cases.optim_problem()
    out = {}
    for name in cases.optimizer_names("keras"):
        kind, option = name.split(" ")
        optimizer = optim.build_optimizer(kind, cases.OPTIM_SCHEDULE, cases.OPTIM_WEIGHT_DECAY,
                                          cases.OPTIM_MOMENTUM, cases.OPTIM_ETA,
                                          lars_variant=option if kind == "lars" else "byol")
        variables = [keras.Variable(init[k], dtype="float64", name=k) for k in cases.OPTIM_SHAPES]
        trajectory = []
        for g in grads:
            optimizer.apply([ops.convert_to_tensor(g[k]) for k in cases.OPTIM_SHAPES], variables)
            trajectory.append({k: numpy(v.value).copy() for k, v in zip(cases.OPTIM_SHAPES, variables,
                                                                        strict=True)})
        out[name] = trajectory
    table = optim.TableSchedule(cases.OPTIM_SCHEDULE)
    out["schedule"] = np.array([float(numpy(table(t))) for t in range(cases.SCHEDULE_READS)])
    return out


# -- augmentations ---------------------------------------------------------------------------------
def augment_outputs() -> dict:
    """Every op case and the stream's views of both steps, as one function (one jit on JAX)."""
    inputs, specs = {}, {}
    for name in cases.AUG_OPS:
        images, params, spec = cases.aug_case(name)
        inputs[name], specs[name] = (images, augment.dense_params(params)), spec
    images, stream = cases.stream_setup()
    dataset = StreamDataset(images, stream, epoch=0)
    for step in range(cases.STREAM_STEPS):
        batch = dataset[step]
        for v, spec in enumerate(cases.STREAM_PAIR.views, start=1):
            inputs[f"step {step} view {v}"] = (batch["images"], batch[f"view{v}"])
            specs[f"step {step} view {v}"] = spec

    def views(inputs):
        return {name: augment.apply_view(x, p, specs[name]) for name, (x, p) in inputs.items()}

    out = {name: numpy(view) for name, view in jitted_on_jax(views)(inputs).items()}
    return {name: cases.unnormalise(view, specs[name]) if name.startswith("step") else view
            for name, view in out.items()}


def sampled_params() -> dict:
    """``RandomView``'s in-graph sampler (``augment.sample_params``): dense parameter matrices."""
    return {f"{hw[0]}x{hw[1]}": numpy(augment.sample_params(cases.SAMPLE_SPEC, cases.SAMPLE_DRAWS, hw,
                                                            keras.random.SeedGenerator(index)))
            for index, hw in enumerate(cases.SAMPLE_SIZES)}


# -- encoders --------------------------------------------------------------------------------------
def zero_initialised_convs():
    """Build encoders without drawing their random kernels (on JAX each shape's draw is a compiled
    kernel of its own): the weights are imported next."""
    return mock.patch.object(byol_model, "conv_initializer", lambda: keras.initializers.Zeros())


def _encoder(spec):
    with zero_initialised_convs():
        return byol_model.build_encoder(spec)


def encoder_outputs(folder: Path) -> dict:
    out = {}
    for arch, size, side in cases.ENCODERS:
        spec = resnet_spec(arch, size)
        path = folder / f"{cases.encoder_key(arch, size)}.safetensors"
        encoder = _encoder(spec)
        byol_model.import_encoder(path, encoder, spec)
        out[cases.encoder_key(arch, size)] = {
            "features": numpy(encoder(cases.encoder_input(side), training=False)),
            "parameters": int(sum(np.prod(v.shape) for v in encoder.trainable_variables)),
            **cases.round_trip(path, lambda e=encoder, s=spec: byol_model.encoder_to_portable(e, s),
                               lambda p, e=encoder, s=spec, z=size: byol_model.export_encoder(p, e, s, z),
                               lambda p, e=encoder, s=spec: byol_model.import_encoder(p, e, s),
                               files=(arch, size, side) in cases.ROUND_TRIP_ENCODERS),
        }
    return out


def portable_names(encoder) -> list[str]:
    names = {id(v): f"{byol_model.portable_prefix(layer.name)}.{v.name}"
             for layer in encoder.layers for v in layer.trainable_weights}
    return [names[id(v)] for v in encoder.trainable_variables]


def model_value_and_grads(model, x, loss_fn):
    """``loss_fn(model(x, training=True))`` and its gradient w.r.t. the model's trainable variables,
    with the backend's own autodiff (JAX: ``stateless_call`` under ``jax.value_and_grad``, jitted,
    then the BN moving statistics it updated assigned, as a training call does on the others).
    Returns the outputs too."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            y = model(x, training=True)
            value = loss_fn(y)
        return value, y, tape.gradient(value, variables)
    if BACKEND == "jax":
        import jax

        def f(trainable, non_trainable, x):
            y, updated = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_fn(y), (y, updated)

        (value, (y, updated)), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(
            [v.value for v in variables], [v.value for v in model.non_trainable_variables], x)
        for variable, new in zip(model.non_trainable_variables, updated, strict=True):
            variable.assign(new)
        return value, y, grads
    for v in variables:
        v.value.grad = None
    y = model(x, training=True)
    value = loss_fn(y)
    value.backward()
    return value, y, [v.value.grad for v in variables]


def train_mode_outputs(folder: Path) -> dict:
    out = {}
    for arch, size, side in cases.TRAIN_MODE_ENCODERS:
        spec = resnet_spec(arch, size)
        encoder = _encoder(spec)
        byol_model.import_encoder(folder / f"{cases.encoder_key(arch, size)}.safetensors", encoder, spec)
        r = ops.convert_to_tensor(cases.train_mode_weights(arch, size))
        x = cases.encoder_input(side, cases.TRAIN_MODE_BATCH, seed=1)
        _, h, grads = model_value_and_grads(encoder, x, lambda h, r=r: ops.sum(h * r))
        out[cases.encoder_key(arch, size)] = {
            "features": numpy(h),
            "grads": {n: numpy(g) for n, g in zip(portable_names(encoder), grads, strict=True)},
            "moving": {k: v for k, v in byol_model.encoder_to_portable(encoder, spec).items()
                       if ".moving_" in k}}
    return out


def apply_gradients(optimizer, grads, variables) -> None:
    """``optimizer.apply``; on JAX its ``stateless_apply`` jitted (eagerly, every op of every
    variable's update compiles on its own)."""
    if BACKEND != "jax":
        optimizer.apply(grads, variables)
        return
    import jax

    new_values, _ = jax.jit(optimizer.stateless_apply)([v.value for v in optimizer.variables], grads,
                                                         [v.value for v in variables])
    for variable, value in zip(variables, new_values, strict=True):
        variable.assign(value)


# -- one SimCLR step -------------------------------------------------------------------------------
def simclr_step() -> dict:
    """SimCLR's step with this chapter's pieces (encoder, views, NT-Xent, LARS) and SimCLR's head
    in Keras layers; both views in one forward pass, as the PyTorch chapter."""
    setup = cases.STEP
    encoder_weights, head_weights = cases.step_weights()
    spec = setup.spec
    encoder = _encoder(spec)
    byol_model.encoder_from_portable(encoder, spec, encoder_weights)

    def bn(center, name):
        return keras.layers.BatchNormalization(momentum=1 - setup.bn_momentum, epsilon=setup.bn_eps,
                                               center=center, name=name)

    head = keras.Sequential([keras.Input((head_weights["linear1"].shape[0],)),
                             keras.layers.Dense(setup.hidden, use_bias=False, name="linear1"),
                             bn(True, "bn1"), keras.layers.ReLU(name="relu"),
                             keras.layers.Dense(setup.out, use_bias=False, name="linear2"),
                             bn(False, "bn2")], name="head")
    for layer in head.layers:
        for v in layer.weights:
            v.assign(head_weights[layer.name if v.name == "kernel" else f"{layer.name}.{v.name}"])
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, head(encoder(inputs)))
    optimizer = optim.build_optimizer("lars", setup.lr, setup.weight_decay, setup.momentum, setup.eta,
                                      lars_variant="simclr")
    optimizer.build(model.trainable_variables)
    images, params1, params2 = cases.step_inputs()

    def both_views(images, dense1, dense2):
        return ops.concatenate([augment.apply_view(images, p, s)
                                for p, s in zip((dense1, dense2), setup.pair.views, strict=True)], axis=0)

    x = jitted_on_jax(both_views)(images, augment.dense_params(params1), augment.dense_params(params2))
    loss, _, grads = model_value_and_grads(
        model, x, lambda z: losses.nt_xent(z[: setup.batch], z[setup.batch:], setup.temperature))
    names = portable_names(encoder)
    encoder_grads = {n: numpy(g) for n, g in zip(names, grads, strict=False)}
    apply_gradients(optimizer, grads, model.trainable_variables)
    weights = byol_model.encoder_to_portable(encoder, spec)
    return {"loss": float(numpy(loss)), "grads": encoder_grads, "weights": {k: weights[k] for k in names},
            "head": {"linear1": numpy(head.get_layer("linear1").kernel.value),
                     "linear2": numpy(head.get_layer("linear2").kernel.value)}}


# -- distributed: JAX DataParallel over 2 host devices ---------------------------------------------
def data_parallel_losses() -> dict:
    """The three losses on a global batch sharded over 2 devices by Keras' ``DataParallel`` layout,
    value and gradient under ``jax.jit`` (XLA partitions the computation over both devices)."""
    import jax

    devices = jax.devices()
    if len(devices) < cases.WORLD:
        return {"skipped": f"only {len(devices)} device(s)"}
    distribution = keras.distribution.DataParallel(devices=devices[: cases.WORLD])
    inputs = cases.distributed_inputs()
    sharded = {}
    with distribution.scope():
        for name, array in inputs.items():
            if name == "queue":  # every replica holds the whole queue
                sharded[name] = jax.device_put(array, jax.sharding.NamedSharding(
                    distribution.device_mesh.backend_mesh, jax.sharding.PartitionSpec()))
            else:
                layout = distribution.get_data_layout(array.shape)
                sharded[name] = keras.distribution.distribute_tensor(array, layout)
    specs = {"nt_xent": (("z1", "z2"), lambda a, b: losses.nt_xent(a, b, cases.DIST_T)),
             "info_nce": (("q", "k", "queue"), lambda a, b, c: losses.info_nce(a, b, c, cases.DIST_T)),
             "byol": (("p1", "p2", "t1", "t2"), losses.byol)}
    out = {"devices": len({d for x in sharded.values() for d in x.sharding.device_set}),
           "sharded_batch": all(len(sharded[n].addressable_shards) == cases.WORLD and
                                sharded[n].addressable_shards[0].data.shape[0] == cases.DIST_N // cases.WORLD
                                for n in ("z1", "q", "p1"))}
    for loss, (names, fn) in specs.items():
        value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(names)))))(
            *(sharded[n] for n in names))
        out[loss] = {"loss": float(value), "grads": [np.asarray(g) for g in grads],
                     "grad_devices": len(grads[0].sharding.device_set)}
    return out


# -- kNN of chapter-trained encoders ---------------------------------------------------------------
def train_for_knn(path: Path) -> None:
    """A few BYOL steps (the chapter's model and training step, eagerly) on the shared stream."""
    from keras_byol.evaluate import build_byol

    config = {**cases.KNN_CONFIG, "backend": BACKEND}
    keras.utils.set_random_seed(2)
    model = build_byol(config, tau=EmaRise(config["target_momentum"], cases.KNN_STEPS))
    model.compile(optimizer=optim.build_optimizer("lars", 1.0, 1e-4))
    images, stream = cases.knn_stream()
    dataset = StreamDataset(images, stream, epoch=0)
    for step in range(len(dataset)):  # the chapter's train_step (what fit traces), run eagerly
        model.train_step(dataset[step])
    byol_model.export_encoder(path, model.online_encoder, resnet_spec(config["arch"], config["image_size"]),
                              config["image_size"])


def knn_outputs(folder: Path) -> dict:
    from keras_byol.evaluate import load_encoder as load

    config = {**cases.KNN_CONFIG, "backend": BACKEND}
    data = cases.knn_data()
    out = {}
    encoder = None
    for name in cases.TRAINED:
        path = folder / f"{name}.safetensors"
        if encoder is None:
            with zero_initialised_convs():
                encoder = load(config, "cpu", None, path)
        else:
            byol_model.import_encoder(path, encoder.model.online_encoder,
                                      resnet_spec(config["arch"], config["image_size"]))
        out[name] = cases.knn_result(encoder.features, data)
    return out
