"""Checks of keras_byol that run once per Keras backend; the test files assert on their report.

A Keras process has one backend, fixed when ``keras`` is imported. ``report(backend)`` runs every
check below in this process when the backend is the one already loaded (TensorFlow under pytest)
and otherwise in one subprocess (``python -m tests.keras_checks``, ``KERAS_BACKEND`` set,
``JAX_ENABLE_X64`` for float64 on JAX) that prints the report as JSON. Each backend pays its start-up
and compilation once, for all the test files (``tests/test_keras_*.py``) that read its report.
In a plain ``pytest`` run the first report asked for starts the other backends' subprocesses too,
so that they run while this process works; under pytest-xdist each worker starts only the backends
its tests ask for (the tests are grouped by backend, ``xdist_group``), so none runs twice.

Each section of the report is plain numbers (errors against the NumPy references, losses, ...) or
``{"error": traceback}`` if the section raised, so a failure shows the backend's own traceback.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("optim", "augment", "compiled_view", "random_view", "training")


BACKENDS = ("tensorflow", "jax", "torch")
EVERY_BACKEND = [pytest.param(b, marks=[pytest.mark.slow, pytest.mark.xdist_group(f"keras-{b}")])
                 for b in BACKENDS]
"""``@pytest.mark.parametrize("backend", EVERY_BACKEND)``: one test per backend, grouped for xdist."""
_subprocesses: dict[str, tuple[subprocess.Popen, Path]] = {}


def _start(backend: str) -> None:
    """Launch ``backend``'s checks in a subprocess (once); its output goes to temporary files."""
    if backend in _subprocesses:
        return
    # XLA's CPU backend at its default optimisation level spends seconds compiling each of JAX's
    # random kernels (threefry: ~25 compiles to initialise a model); at level 0 the checks' many
    # small compilations take a fraction of that, for slower (unoptimised) code the checks don't
    # notice.
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO),
           "JAX_ENABLE_X64": "1", "XLA_FLAGS": "--xla_backend_optimization_level=0",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    folder = Path(tempfile.mkdtemp(prefix=f"keras-checks-{backend}-"))
    with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tests.keras_checks"], cwd=REPO,
                                   env=env, stdout=stdout, stderr=stderr, text=True)
    _subprocesses[backend] = (process, folder)


@functools.cache
def report(backend: str) -> dict:
    """The report of ``backend``: in this process if it is Keras' backend here, else a subprocess."""
    import keras

    here = keras.backend.backend()
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for other in BACKENDS:
            if other != here:
                _start(other)
    if backend == here:
        return run_checks()
    _start(backend)
    process, folder = _subprocesses[backend]
    try:
        process.wait(timeout=900)
        stdout, stderr = (folder / "stdout").read_text(), (folder / "stderr").read_text()
    finally:
        process.kill()
        shutil.rmtree(folder, ignore_errors=True)
    if process.returncode != 0:
        raise RuntimeError(f"the {backend} checks crashed:\n{stderr[-5000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def run_checks() -> dict:
    """Every section, and the seconds each took (``"seconds"``)."""
    results, seconds = {}, {}
    for name in SECTIONS:
        start = time.perf_counter()
        try:
            results[name] = globals()[f"check_{name}"]()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
        seconds[name] = round(time.perf_counter() - start, 1)
    return {**results, "seconds": seconds}


def section(backend: str, name: str) -> dict:
    """One section of a backend's report; fails the calling test with the traceback if it raised."""
    result = report(backend)[name]
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(f"{name} checks raised on {backend}:\n{result['error']}")
    return result


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------
# Keras' own SGD and Adam cast their hyperparameters with ops.cast(python float, dtype), which
# TensorFlow rounds through float32: values exact in float32 keep the float64 check exact.
KERAS_MOMENTUM, BETA_1, BETA_2, ADAM_EPS = 0.875, 0.875, 0.9921875, 2.0**-20


def check_optim() -> dict:
    """10 steps of every optimizer (float64) against common/optim.py, under a moving rate."""
    import keras

    from common.optim import LARS_VARIANTS, adamw_step, is_excluded, lars_step, sgd_step
    from common.schedules import LrSchedule
    from keras_byol.optim import OPTIMIZER_NAMES, Adam, AdamW, TableSchedule, build_optimizer
    from tests.cross_framework.compare import max_abs

    steps, wd, momentum, eta = 10, 0.0625, 0.9, 0.02
    schedule = LrSchedule(base_lr=0.8, total_steps=steps, warmup_steps=3)
    rates = schedule.table(np.float32).astype(np.float64)[:steps]
    rng = np.random.default_rng(0)
    shapes = {"conv": (2, 2, 3, 4), "dense": (5, 4), "zero": (3, 3), "bias": (4,), "gamma": (4,)}
    init = {k: (np.zeros(s) if k == "zero" else rng.standard_normal(s)) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]

    def run(optimizer):
        variables = [keras.Variable(init[k], dtype="float64", name=k) for k in shapes]
        for g in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g[k]) for k in shapes], variables)
        return {k: keras.ops.convert_to_numpy(v.value) for k, v in zip(shapes, variables, strict=True)}

    def error(ours, expected):  # max_abs: inf where ours holds a NaN (Python's max drops a NaN)
        return max(max_abs(ours[k], expected[k]) for k in shapes)

    results = {}
    for variant in LARS_VARIANTS:
        params, buffers = dict(init), {}
        for g, lr in zip(grads, rates, strict=True):
            params, buffers = lars_step(params, g, buffers, lr, momentum, wd, eta, variant)
        results[f"lars {variant}"] = error(run(build_optimizer(
            "lars", schedule, wd, momentum, eta, lars_variant=variant)), params)
    params, buffers = dict(init), {}
    for g, lr in zip(grads, rates, strict=True):
        params, buffers = sgd_step(params, g, buffers, lr, KERAS_MOMENTUM, wd, style="lr_inside")
    results["sgd"] = error(run(build_optimizer("sgd", schedule, wd, KERAS_MOMENTUM)), params)
    adam = {"learning_rate": TableSchedule(schedule), "beta_1": BETA_1, "beta_2": BETA_2,
            "epsilon": ADAM_EPS}
    for name, optimizer in (("adam", Adam(**adam, coupled_weight_decay=wd)),
                            ("adamw", AdamW(**adam, weight_decay=wd))):
        params, state = dict(init), {}
        for g, lr in zip(grads, rates, strict=True):
            if name == "adam":  # coupled: the decay goes into the gradient
                g = {k: g[k] if is_excluded(g[k].shape) else g[k] + wd * params[k] for k in shapes}
            params, state = adamw_step(params, g, state, lr, wd if name == "adamw" else 0.0, "raw",
                                       betas=(BETA_1, BETA_2), eps=ADAM_EPS)
        results[name] = error(run(optimizer), params)
    results["built"] = {name: type(build_optimizer(name, schedule, wd)).__name__
                        for name in OPTIMIZER_NAMES}
    table = TableSchedule(schedule)
    read = [float(keras.ops.convert_to_numpy(table(t))) for t in range(steps + 3)]
    expected_rates = [schedule.rate(min(t, steps)) for t in range(steps + 3)]
    results["schedule"] = max_abs(read, expected_rates)
    return results


def jitted_on_jax(fn):
    """``jax.jit(fn)`` on JAX, where ``fit`` always compiles; ``fn`` elsewhere. (XLA on TensorFlow
    is checked in-process by ``tests/test_keras_augment.py``: compiling eight views there takes
    tens of seconds.)"""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def check_augment() -> dict:
    """Whole views of the three presets against common.augment.ops (max abs diff, 0..1 scale),
    the eight views as one function (compiled on JAX, :func:`jitted_on_jax`)."""
    from keras import ops

    from common.augment import apply_view_batch, preset, sample_view_params, without_normalize
    from keras_byol.augment import apply_view, dense_params

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 44, 40, 3), dtype=np.uint8)
    cases = {}
    for name, size in (("byol", 40), ("byol", 32), ("simclr", 32), ("mocov2", 32)):
        pair = without_normalize(preset(name, size))
        for index, spec in enumerate(pair.views, start=1):
            cases[f"{name} {size} view{index}"] = (spec, sample_view_params(spec, 6, (44, 40), rng))
    specs = [spec for spec, _ in cases.values()]
    views = jitted_on_jax(lambda x, *p: [apply_view(x, q, s) for q, s in zip(p, specs, strict=True)])(
        images, *(dense_params(params) for _, params in cases.values()))
    return {key: float(np.max(np.abs(ops.convert_to_numpy(view)
                                     - apply_view_batch(images, params, spec))))
            for (key, (spec, params)), view in zip(cases.items(), views, strict=True)}


def check_compiled_view() -> dict:
    """``ViewLayer(compiled=True)``: on PyTorch the ``torch.compile``d view against the NumPy
    reference and the eager view; elsewhere the refusal (those backends compile the step)."""
    import keras

    from common.augment import apply_view_batch, preset, sample_view_params, without_normalize
    from keras_byol.augment import ViewLayer, dense_params

    spec = without_normalize(preset("byol", 32)).view2
    if keras.backend.backend() != "torch":
        try:
            ViewLayer(spec, compiled=True)
        except ValueError as error:
            return {"refused": str(error)}
        return {"refused": None}
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (8, 40, 36, 3), dtype=np.uint8)
    params = sample_view_params(spec, 8, (40, 36), rng)
    compiled = keras.ops.convert_to_numpy(ViewLayer(spec, compiled=True)(images, dense_params(params)))
    eager = keras.ops.convert_to_numpy(ViewLayer(spec)(images, dense_params(params)))
    return {"vs_reference": float(np.max(np.abs(compiled - apply_view_batch(images, params, spec)))),
            "vs_eager": float(np.max(np.abs(compiled - eager))),
            "hue_fired": int(np.sum(params.jitter * (params.hue != 0)))}


def check_random_view() -> dict:
    """``RandomView`` inside a compiled ``predict``: new parameters every batch, valid pixels."""
    import keras

    from common.augment import preset, without_normalize
    from keras_byol.augment import RandomView

    spec = without_normalize(preset("byol", 40)).view2
    images = np.random.default_rng(2).integers(0, 256, (4, 44, 40, 3), dtype=np.uint8)
    model = keras.Sequential([keras.Input((44, 40, 3), dtype="uint8"), RandomView(spec, seed=3)])
    out = model.predict(np.concatenate([images, images]), batch_size=4, verbose=0)
    return {"shape": list(out.shape), "finite": bool(np.all(np.isfinite(out))),
            "in_range": bool(out.min() >= 0.0 and out.max() <= 1.0),
            "batches_differ": float(np.max(np.abs(out[:4] - out[4:])))}


def _saved_for_backward(update) -> int | None:
    """How many tensors PyTorch's autograd saves during ``update()``; None on the other backends,
    which record no graph outside a gradient tape or transform."""
    import keras

    if keras.backend.backend() != "torch":
        update()
        return None
    import torch

    saved = []

    def pack(tensor):
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        update()
    return len(saved)


def check_training() -> dict:
    """``BYOL.fit`` on a fixed batch: the loss goes down and the target follows the EMA exactly.

    One step per epoch, so that a callback sees the variables after every step on JAX too (its
    ``fit`` writes the state back at the end of each epoch). After step k the target must be
    ``xi_k + (1 - tau_k)(theta_{k+1} - xi_k)`` with theta_{k+1} the online weights *after* that
    step; ``late_error`` is the distance to the same update with the weights before it (an EMA
    applied one step late, or before the optimizer), which the check must tell apart.

    The target's BatchNorm statistics ("skip", the default) are replayed for its first BatchNorm
    (``stem_bn``): each step its two training-mode forwards (view 1, then view 2) move them
    towards the batch means of its own stem convolution, and nothing else touches them;
    ``target_stats_if_averaged`` is the distance to the same replay followed by the EMA towards the
    online statistics ("average"), ``target_stats_own`` the distance to the online ones ("copy").
    The variables the optimizer holds are named ``network:path`` (an encoder's paths alone are
    the same in the online and the target network).
    """
    import keras
    from keras import ops

    from common.arch import ResNetSpec
    from common.augment import preset
    from common.schedules import ema_momentum
    from common.stream import DataStream
    from keras_byol.backend import set_random_seed
    from keras_byol.byol import BYOL
    from keras_byol.data import StreamDataset, step_inputs
    from keras_byol.optim import build_optimizer

    set_random_seed(0)
    steps, base_tau = 4, 0.9
    spec = ResNetSpec("tiny", "basic", (1, 1, 1, 1), (8, 8, 16, 16), "cifar", 1)  # small to trace
    pair = preset("byol", 16)
    images = np.random.default_rng(4).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    stream = DataStream(len(images), (16, 16), 8, pair, seed=0)
    model = BYOL(spec, pair, total_steps=steps, base_tau=base_tau, projector_hidden=32,
                 projection_dim=16, predictor_hidden=32)
    model.compile(optimizer=build_optimizer("sgd", 0.05, weight_decay=1e-4))
    fixed = step_inputs(images, stream.step(0, 0))

    class FixedBatch(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return fixed

    def snapshot():
        return [(ops.convert_to_numpy(t.value).copy(), ops.convert_to_numpy(o.value).copy())
                for t, o in model.target_pairs]

    def stat(layer_model, name):
        return ops.convert_to_numpy(getattr(layer_model.get_layer("stem_bn"), name).value)

    # What the target's stem_bn normalises each view with: its stem convolution's batch means.
    target_bn = model.target_encoder.get_layer("stem_bn")
    target_stem = keras.Model(model.target_encoder.input, target_bn.input)
    views = [model.view1(fixed["images"], fixed["view1"]), model.view2(fixed["images"], fixed["view2"])]

    def stem_means():
        return [ops.convert_to_numpy(ops.mean(target_stem(v), axis=(0, 1, 2))) for v in views]

    snapshots, means, online_stats_after = [snapshot()], [stem_means()], []
    target_stats_before = stat(model.target_encoder, "moving_mean").copy()

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(snapshot())
            means.append(stem_means())
            online_stats_after.append(stat(model.online_encoder, "moving_mean").copy())

    history = model.fit(FixedBatch(), epochs=steps, verbose=0, callbacks=[Record()]).history
    # np.max keeps a NaN (Python's max drops it), on either side: both come from the model here.
    ema_errors, late_errors = [], []
    skip = averaged = target_stats_before.astype(np.float64)
    for k in range(steps):
        tau = ema_momentum(base_tau, k, steps)
        for (xi, theta_before), (xi_next, theta_after) in zip(snapshots[k], snapshots[k + 1],
                                                              strict=True):
            ema_errors.append(np.max(np.abs(xi_next - (xi + (1 - tau) * (theta_after - xi)))))
            late_errors.append(np.max(np.abs(xi_next - (xi + (1 - tau) * (theta_before - xi)))))
        for mean in means[k]:  # the step's two target forwards
            skip = target_bn.momentum * skip + (1 - target_bn.momentum) * mean
            averaged = target_bn.momentum * averaged + (1 - target_bn.momentum) * mean
        averaged = averaged + (1 - tau) * (online_stats_after[k] - averaged)
    online_stats = stat(model.online_encoder, "moving_mean")
    target_stats = stat(model.target_encoder, "moving_mean")
    online_networks = (model.online_encoder, model.online_projector, model.predictor)
    target_networks = (model.target_encoder, model.target_projector)
    owner = {id(v): f"{network.name}:{v.path}" for network in online_networks + target_networks
             for v in network.weights}

    def named(variables):
        return [owner.get(id(v), f"?:{v.path}") for v in variables]

    stream_history = model.fit(StreamDataset(images, stream, epoch=0), epochs=1, shuffle=False,
                               verbose=0).history
    ema_step = int(ops.convert_to_numpy(model.ema_step.value))
    return {
        "loss": history["loss"],
        "tau": history["tau"],
        "expected_tau": [float(ema_momentum(base_tau, k, steps)) for k in range(steps)],
        "ema_error": float(np.max(ema_errors)),
        "late_error": float(np.max(late_errors)),
        "ema_step": ema_step,
        "ema_saved_for_backward": _saved_for_backward(model.update_target),
        "optimizer_variables": named(model.optimizer._trainable_variables),
        "online_trainable": named(v for network in online_networks for v in network.trainable_variables),
        "model_trainable": named(model.trainable_variables),
        "target_variables": named(v for network in target_networks for v in network.weights),
        "target_stats_moved": float(np.max(np.abs(target_stats - target_stats_before))),
        "target_stats_skip_error": float(np.max(np.abs(target_stats - skip))),
        "target_stats_if_averaged": float(np.max(np.abs(target_stats - averaged))),
        "target_stats_own": float(np.max(np.abs(target_stats - online_stats))),
        "stream_loss": stream_history["loss"],
    }


if __name__ == "__main__":
    print(json.dumps(run_checks()))
