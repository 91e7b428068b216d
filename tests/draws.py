"""p-values of drawn augmentation parameters against the distributions the spec names, shared by
the sampler tests (tests/test_augment_sampler.py, tests/test_keras_augment.py) and the
cross-framework draws (tests/cross_framework/test_augment.py)."""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

_PERMUTATIONS = np.array(list(itertools.permutations(range(4)))) @ np.array([64, 16, 4, 1])


def uniform_p_value(values: np.ndarray, low: float, high: float) -> float:
    """Kolmogorov-Smirnov p-value of ``values`` against U(low, high)."""
    return float(stats.kstest(np.asarray(values, np.float64), "uniform", args=(low, high - low)).pvalue)


def jitter_order_p_value(order: np.ndarray) -> float:
    """Chi-square p-value of the jitter orders (rows: a permutation of 0..3) against the uniform
    distribution on all 24 permutations: a sampler drawing only some of them (e.g. a random cyclic
    shift, each op equally likely at each position) fails it where per-position rates would not."""
    order = np.asarray(order, np.int64)
    assert np.all(np.sort(order, axis=1) == np.arange(4)), "a jitter order that is not a permutation"
    codes = order @ np.array([64, 16, 4, 1])
    counts = np.array([np.sum(codes == c) for c in _PERMUTATIONS])
    assert counts.sum() == len(codes)
    return float(stats.chisquare(counts).pvalue)
