"""Each framework's LARS (the three published variants), SGD with momentum and the warm-up + cosine
schedule equal the NumPy references of common/optim.py and common/schedules.py step by step: the
parameters after every one of 10 steps from the same initial parameters and gradients (float64),
and the rate of every step (steps 0-12: warm-up, cosine, and past the end)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cross_framework import cases
from tests.cross_framework.compare import relative, worst

pytestmark = [pytest.mark.xdist_group("cross-framework"), pytest.mark.slow]

FLOAT64 = 1e-9
FLOAT32 = 1e-5


def _framework(implementation: str) -> str:
    return "keras" if implementation.startswith("keras") else implementation


def rates_of(outputs) -> np.ndarray:
    """The rates the implementation's optimizers read: its own schedule's (float32 in Keras'
    ``TableSchedule``, float64 elsewhere), which the schedule check compares with the reference.
    The optimizer check then measures the update arithmetic alone, in float64."""
    return np.asarray(outputs["schedule"], np.float64)


@pytest.mark.parametrize("implementation", cases.IMPLEMENTATIONS)
def test_optimizers_equal_the_reference_step_by_step(workspace, record, implementation):
    outputs = workspace.outputs(implementation, "optim")
    rates = rates_of(outputs)
    sgd = f"sgd {cases.SGD_STYLE[_framework(implementation)]}"
    failures = []
    for name in [f"lars {v}" for v in cases.LARS_VARIANT_NAMES] + [sgd]:
        expected = cases.optim_reference(name, rates)
        got = outputs[name]
        assert len(got) == cases.OPTIM_STEPS
        errors = [relative(step[k], want[k], scale=max(1.0, float(np.max(np.abs(want[k])))))
                  for step, want in zip(got, expected, strict=True) for k in want]
        abs_err, rel_err = worst(errors)
        title = f"LARS ({name.split(' ')[1]} variant)" if name.startswith("lars") else "SGD with momentum"
        record(f"{title}, 10 steps, float64", implementation, abs_err, rel_err, FLOAT64,
               note="" if name.startswith("lars") else f"momentum {name.split(' ')[1].replace('_', ' ')}")
        if not rel_err <= FLOAT64:
            failures.append(f"{name}: {rel_err:.2e}")
    assert not failures, failures


@pytest.mark.parametrize("implementation", cases.IMPLEMENTATIONS)
def test_schedule_equals_the_reference(workspace, record, implementation):
    rates = np.asarray(workspace.outputs(implementation, "optim")["schedule"], np.float64)
    want = cases.schedule_rates()
    # Keras' TableSchedule is a float32 table (the chapter's choice: a float32 rate on every
    # backend); the others hold float64 rates.
    tolerance = FLOAT32 if implementation.startswith("keras") else FLOAT64
    abs_err, rel_err = relative(rates, want)
    record("warm-up + cosine schedule, steps 0-12", implementation, abs_err, rel_err, tolerance)
    assert rel_err <= tolerance
