"""keras_byol/optim.py: LARS (three published variants), SGD, Adam and AdamW as Keras 3 optimizers,
10 steps each against common/optim.py on every backend; exclusion by shape; the per-step rate."""

import keras
import numpy as np
import pytest

from common.optim import LARS_VARIANTS
from common.schedules import LrSchedule
from keras_byol.optim import LARS, OPTIMIZER_NAMES, AdamW, TableSchedule, build_optimizer
from tests.keras_checks import EVERY_BACKEND, section


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_ten_steps_match_the_numpy_references(backend):
    result = section(backend, "optim")
    for variant in LARS_VARIANTS:
        assert result[f"lars {variant}"] <= 1e-12, variant
    assert result["sgd"] <= 1e-12 and result["adam"] <= 1e-12
    # Keras' PyTorch AdamW multiplies by 1 - wd * lr with the float32 rate: float32 rounding.
    assert result["adamw"] <= (1e-7 if backend == "torch" else 1e-12)
    assert result["schedule"] <= 1e-7  # the table holds float32 rates
    assert result["built"] == {"lars": "LARS", "sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def test_rate_of_each_step_is_the_schedule_s():
    schedule = LrSchedule(base_lr=1.2, total_steps=20, warmup_steps=5, final_lr=0.01)
    optimizer = build_optimizer("lars", schedule, weight_decay=1e-6)
    variable = keras.Variable(np.ones((3, 3), np.float32))
    for step in range(22):
        assert float(optimizer.learning_rate) == pytest.approx(schedule.rate(min(step, 20)), abs=1e-6)
        optimizer.apply([np.ones((3, 3), np.float32)], [variable])


def test_excluded_tensors_are_chosen_by_shape_not_name():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization()])
    names = sorted(v.name for v in model.trainable_variables)
    # The usual name patterns ("batch_normalization", "bias") miss BN's gamma and beta in Keras 3.
    assert names == ["beta", "bias", "gamma", "kernel"]
    adamw = build_optimizer("adamw", 0.1, weight_decay=0.5)
    adamw.build(model.trainable_variables)
    decayed = {v.name: adamw._use_weight_decay(v) for v in model.trainable_variables}
    assert decayed == {"kernel": True, "bias": False, "gamma": False, "beta": False}
    assert isinstance(adamw, AdamW) and adamw.weight_decay == 0.5


def test_lars_leaves_the_base_class_weight_decay_unset():
    lars = build_optimizer("lars", 0.1, weight_decay=1e-4)
    assert lars.weight_decay is None and lars.lars_weight_decay == 1e-4
    for name in ("sgd", "adam"):
        optimizer = build_optimizer(name, 0.1, weight_decay=1e-4)
        assert optimizer.weight_decay is None and optimizer.coupled_weight_decay == 1e-4


def test_configs_round_trip():
    schedule = LrSchedule(base_lr=0.5, total_steps=10, warmup_steps=2)
    lars = build_optimizer("lars", schedule, weight_decay=1e-5, eta=0.02, lars_variant="solo-learn")
    again = LARS.from_config(lars.get_config())
    assert (again.momentum, again.lars_weight_decay, again.eta) == (0.9, 1e-5, 0.02)
    assert again.variant == LARS_VARIANTS["solo-learn"]
    assert TableSchedule.from_config(TableSchedule(schedule).get_config()).schedule == schedule
    sgd = build_optimizer("sgd", 0.1, weight_decay=1e-4)
    assert type(sgd).from_config(sgd.get_config()).coupled_weight_decay == 1e-4


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="momentum"):
        LARS(0.1, momentum=1.5)
    with pytest.raises(ValueError, match=", ".join(OPTIMIZER_NAMES)):
        build_optimizer("rmsprop", 0.1)
