"""tensorflow_moco/optim.py: every optimizer step by step against common/optim.py's NumPy references,
and the learning-rate schedule against common.schedules.LrSchedule."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import tests.tf_setup  # noqa: F401  (splits the CPU for MirroredStrategy before any TF op runs)
from common.optim import LARS_VARIANTS, OPTIMIZERS, LarsVariant, lars_step, sgd_step
from common.schedules import LrSchedule
from tensorflow_moco.optim import LARS, SGD, StepCountingLossScaleOptimizer, TableSchedule, build_optimizer

STEPS = 10
SCHEDULE = LrSchedule(base_lr=0.8, total_steps=STEPS, warmup_steps=3)
SHAPES = {"conv": (3, 3, 2, 4), "dense": (5, 3), "bias": (3,), "gamma": (4,)}


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
    params["zero"] = np.zeros((2, 2))  # trust ratio 1 where ||w|| = 0
    return params


def _grads(step: int, params: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    grads = {name: rng.standard_normal(w.shape) * 0.3 for name, w in params.items()}
    if step == 4:
        grads["dense"] = np.zeros_like(grads["dense"])  # ||g|| = 0 for one step
    return grads


def _run_keras(optimizer_of, params: dict) -> list[dict[str, np.ndarray]]:
    """STEPS steps of a Keras optimizer on float64 variables; the weights after each step."""
    variables = {name: keras.Variable(w, dtype="float64", name=name) for name, w in params.items()}
    optimizer = optimizer_of(list(variables.values()))
    history = []
    for step in range(STEPS):
        grads = _grads(step, params)
        optimizer.apply_gradients([(tf.constant(grads[name]), v) for name, v in variables.items()])
        history.append({name: v.numpy() for name, v in variables.items()})
    return history


def _run_reference(step_fn, params: dict) -> list[dict[str, np.ndarray]]:
    buffers, history = {}, []
    for step in range(STEPS):
        params, buffers = step_fn(params, _grads(step, params), buffers, SCHEDULE.rate(step))
        history.append(params)
    return history


def _assert_same_trajectory(ours, reference):
    for step, (got, want) in enumerate(zip(ours, reference, strict=True)):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name} after step {step}")


@pytest.mark.parametrize("variant", [*LARS_VARIANTS, "clipped-update-norm"])
def test_lars_follows_the_reference_for_ten_steps(variant):
    lars_variant = (LarsVariant("update_norm", True, "lr_inside", "test: clipping with update_norm")
                    if variant == "clipped-update-norm" else LARS_VARIANTS[variant])
    params = _params()
    wd, eta, momentum = 0.05, 0.02, 0.9
    ours = _run_keras(lambda v: build_optimizer("lars", v, SCHEDULE, weight_decay=wd, momentum=momentum,
                                                eta=eta, lars_variant=lars_variant), params)
    reference = _run_reference(lambda p, g, b, lr: lars_step(p, g, b, lr, momentum, wd, eta,
                                                             lars_variant), params)
    _assert_same_trajectory(ours, reference)
    # The trust ratio really acts: far from plain SGD-momentum on an adapted tensor.
    plain = _run_reference(lambda p, g, b, lr: sgd_step(p, g, b, lr, momentum, 0.0,
                                                        lars_variant.momentum_style), params)
    assert np.abs(plain[-1]["conv"] - reference[-1]["conv"]).max() > 0.1


def _built(optimizer, variables):
    optimizer.build(variables)
    return optimizer


@pytest.mark.parametrize("style", ["lr_outside", "lr_inside"])
def test_sgd_follows_the_reference_for_ten_steps(style):
    params = _params(1)
    ours = _run_keras(lambda v: build_optimizer("sgd", v, SCHEDULE, weight_decay=1e-2, momentum=0.9,
                                                sgd_momentum_style=style), params)
    reference = _run_reference(lambda p, g, b, lr: sgd_step(p, g, b, lr, 0.9, 1e-2, style), params)
    _assert_same_trajectory(ours, reference)


def test_sgd_momentum_styles_differ_under_a_schedule_and_keras_sgd_is_lr_inside():
    params = _params(2)
    outside = _run_keras(lambda v: build_optimizer("sgd", v, SCHEDULE, weight_decay=0.0), params)
    inside = _run_keras(lambda v: _built(SGD(TableSchedule(SCHEDULE, "float64"), 0.9, 0.0,
                                             "lr_inside"), v), params)
    keras_sgd = _run_keras(lambda v: _built(keras.optimizers.SGD(TableSchedule(SCHEDULE, "float64"),
                                                                  momentum=0.9), v), params)
    for got, want in zip(keras_sgd, inside, strict=True):  # the same form, up to float32 round-off
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7)
    assert np.abs(outside[-1]["dense"] - inside[-1]["dense"]).max() > 1e-3


def test_adamw_decays_only_tensors_with_more_than_one_dimension():
    params = {"dense": np.full((2, 2), 2.0), "bias": np.full((2,), 2.0)}
    variables = [keras.Variable(w, dtype="float64") for w in params.values()]
    optimizer = build_optimizer("adamw", variables, 0.1, weight_decay=0.5)
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])  # only the decay moves
    np.testing.assert_allclose(variables[0].numpy(), 2.0 * (1 - 0.1 * 0.5))
    np.testing.assert_allclose(variables[1].numpy(), 2.0)
    assert optimizer.weight_decay == 0.5


def traced_step(optimizer, weight):
    return tf.function(lambda gradient: optimizer.apply([gradient], [weight]))


def test_adamw_without_loss_scaling_is_keras_adamw_to_the_bit():
    """The chapter's AdamW (its own update step, for fp16's skipped steps) changes nothing else:
    float32 weights after five traced steps under a schedule equal Keras' own AdamW's exactly (the
    published figures of the TensorFlow chapter were measured with it)."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal((8, 8)).astype(np.float32)
    gradients = [tf.constant(rng.standard_normal((8, 8)).astype(np.float32)) for _ in range(5)]
    schedule = LrSchedule(base_lr=1e-3, total_steps=5, warmup_steps=2)
    weights = []
    for own in (True, False):
        weight = keras.Variable(start)
        optimizer = build_optimizer("adamw", [weight], schedule, weight_decay=0.05)
        if not own:
            optimizer = keras.optimizers.AdamW(TableSchedule(schedule), weight_decay=0.05,
                                               beta_1=optimizer.beta_1, beta_2=optimizer.beta_2,
                                               epsilon=optimizer.epsilon)
            optimizer.build([weight])
        step = traced_step(optimizer, weight)
        for gradient in gradients:
            step(gradient)
        weights.append(weight.numpy())
    np.testing.assert_array_equal(*weights)


def test_schedule_gives_the_rate_of_each_step_and_holds_the_final_rate():
    schedule = dataclasses.replace(SCHEDULE, final_lr=0.01).continued(at_step=6, end_step=14)
    for dtype, tolerance in (("float64", 0.0), ("float32", 1e-7)):
        table = TableSchedule(schedule, dtype)
        for step in range(schedule.end_step + 3):
            got = float(table(tf.constant(step, tf.int64)))
            assert got == pytest.approx(schedule.rate(step), rel=tolerance, abs=1e-12), step
    again = TableSchedule.from_config(TableSchedule(schedule).get_config())
    assert again.schedule == schedule


def test_optimizer_applies_the_rate_of_its_own_iteration_count():
    """Keras evaluates the schedule at optimizer.iterations: step t moves w by rate(t) x g."""
    weight = keras.Variable(np.zeros((2, 2)), dtype="float64")
    optimizer = build_optimizer("sgd", [weight], SCHEDULE, weight_decay=0.0, momentum=0.0)
    for step in range(5):
        before = weight.numpy()
        optimizer.apply_gradients([(tf.ones((2, 2), tf.float64), weight)])
        np.testing.assert_allclose(before - weight.numpy(), SCHEDULE.rate(step), rtol=1e-12)


def test_build_optimizer_names_and_errors():
    variables = [keras.Variable(np.ones((2, 2)))]
    for name in OPTIMIZERS:
        optimizer = build_optimizer(name, variables, 0.1, weight_decay=1e-4)
        assert optimizer.built and optimizer.weight_decay in (None, 1e-4)
        if name != "adamw":
            assert optimizer.weight_decay is None  # Keras' decoupled decay never switched on
            assert optimizer.coupled_weight_decay == 1e-4
    scaled = build_optimizer("sgd", variables, 0.1, weight_decay=0.0, loss_scaling=True)
    assert isinstance(scaled, StepCountingLossScaleOptimizer) and scaled.built
    with pytest.raises(ValueError, match="lars, sgd, adamw"):
        build_optimizer("adam", variables, 0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="momentum_style"):
        SGD(0.1, momentum_style="nesterov")
    config = LARS(0.1, variant="solo-learn").get_config()
    assert LARS.from_config(config).variant == LARS_VARIANTS["solo-learn"]
