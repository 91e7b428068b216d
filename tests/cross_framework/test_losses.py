"""NT-Xent, InfoNCE with a queue and BYOL in every implementation equal the common/losses.py
references and each other: value and the gradient with respect to every input (zero for the queue
and BYOL's targets), float64 within 1e-9 and float32 within 1e-5, over a pairwise-covering grid of
N, D, T, K (``cases.GRID_LEVELS``; the degenerate cases with one candidate on top) and the edge
cases (identical embeddings, row norms from 1e-6 to 1e6, a zero row, every row one point)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.cross_framework import cases
from tests.cross_framework.compare import max_abs, scale_of, worst

pytestmark = [pytest.mark.xdist_group("cross-framework"), pytest.mark.slow]

TOLERANCE = {"float64": 1e-9, "float32": 1e-5}
TITLES = {"nt_xent": "NT-Xent", "info_nce": "InfoNCE with queue", "byol": "BYOL"}


def gradient_floor(case: cases.LossCase) -> float:
    """1 / (N x the largest row norm of the case's inputs), the order of these losses' gradients:
    the least scale a gradient error is relative to, for gradients that are exactly 0 (BYOL's
    predictions on their targets)."""
    n = case.arrays[0].shape[0]
    norms = [np.max(np.linalg.norm(a.astype(np.float64), axis=1)) for a in case.arrays if a.size]
    return 1.0 / (n * max(norms))


def gradient_scale(case: cases.LossCase, ref_grads) -> float:
    """What the difference between two implementations' gradients is relative to: the case's
    largest reference gradient entry, at least :func:`gradient_floor`."""
    return max(scale_of(ref_grads), gradient_floor(case))


def row_relative(got, want, floor: float) -> float:
    """The largest error of a gradient, each row relative to its own reference row's largest entry
    (at least ``floor``): rows of norm 1e-6 to 1e6 have gradients of 1e6 to 1e-6, and one scale for
    the whole case would let the small rows be wrong by as much as they are large."""
    want = np.asarray(want, np.float64)
    if not want.size:  # an empty queue
        return max_abs(got, want)
    got, want = np.asarray(got, np.float64).reshape(len(want), -1), want.reshape(len(want), -1)
    return max((max_abs(g, w) / max(scale_of([w]), floor) for g, w in zip(got, want, strict=True)),
               default=0.0)


def case_errors(case: cases.LossCase, value: float, grads) -> tuple[float, float]:
    """``(max abs error, relative error)`` of one case over the value and every gradient. The value
    is relative to max(1, |L|); each gradient row to its own scale (:func:`row_relative`), at least
    :func:`gradient_floor`."""
    ref_value, ref_grads = case.reference()
    value_abs = max_abs(value, ref_value)
    grads_abs = max((max_abs(g, r) for g, r in zip(grads, ref_grads, strict=True)), default=0.0)
    grads_rel = max((row_relative(g, r, gradient_floor(case)) for g, r in zip(grads, ref_grads, strict=True)),
                    default=0.0)
    return max(value_abs, grads_abs), max(value_abs / max(1.0, abs(ref_value)), grads_rel)


@pytest.mark.parametrize("implementation", cases.IMPLEMENTATIONS)
def test_losses_equal_the_reference(workspace, record, implementation):
    outputs = workspace.outputs(implementation, "losses")
    families: dict[tuple[str, str], list] = {}
    for dtype, case in cases.loss_case_dtypes():
        value, grads, out_dtype = outputs[f"{dtype} {case.name}"]
        assert out_dtype == dtype, f"{case.name}: {dtype} inputs gave a {out_dtype} loss"
        assert all(np.asarray(g).dtype == np.dtype(dtype) for g in grads), case.name
        families.setdefault((case.loss, dtype), []).append((case.name, *case_errors(case, value, grads)))
    failures = []
    for (loss, dtype), rows in families.items():
        abs_err, rel_err = worst((a, r) for _, a, r in rows)
        name = max(rows, key=lambda row: row[2])[0]
        record(f"{TITLES[loss]}, {dtype}", implementation, abs_err, rel_err, TOLERANCE[dtype],
               note=f"{len(rows)} cases; worst: {name}")
        failures += [f"{dtype} {n}: rel {r:.2e}" for n, _, r in rows if not r <= TOLERANCE[dtype]]
    assert not failures, failures


def _degenerate(loss: str, levels: tuple) -> bool:
    """One candidate, the positive: NT-Xent with N = 1, InfoNCE with an empty queue."""
    return loss == "nt_xent" and levels[0] == 1 or loss == "info_nce" and levels[3] == 0


@pytest.mark.parametrize("loss, grid", [("nt_xent", cases.NT_XENT_GRID), ("info_nce", cases.INFO_NCE_GRID)])
def test_every_pair_of_levels_occurs_in_a_case_that_is_not_degenerate(loss, grid):
    """The degenerate cases' loss and gradients are exactly 0, so the agreement above says nothing
    of the arithmetic there; the pairwise design must hold without them."""
    losses = {c.name: c for c in cases.loss_cases() if c.loss == loss}
    axes = list(cases.GRID_LEVELS)[: len(grid[0])]
    for levels in grid:
        if _degenerate(loss, levels):
            name = " ".join([loss] + [f"{axis}{level:g}" for axis, level in zip(axes, levels, strict=True)])
            value, grads = losses[name].reference()
            assert abs(value) <= 1e-12 and all(not np.any(g) for g in grads), name
    live = [levels for levels in grid if not _degenerate(loss, levels)]
    for i, axis in enumerate(axes):
        dropped = {("nt_xent", "N"): {1}, ("info_nce", "K"): {0}}.get((loss, axis), set())
        assert {levels[i] for levels in live} == set(cases.GRID_LEVELS[axis]) - dropped, axis
    for i, j in itertools.combinations(range(len(axes)), 2):
        pairs = {(levels[i], levels[j]) for levels in live}
        want = set(itertools.product({levels[i] for levels in live}, {levels[j] for levels in live}))
        assert pairs == want, f"{axes[i]} x {axes[j]} misses {sorted(want - pairs)}"


@pytest.mark.subprocess
def test_implementations_agree_with_each_other(workspace, record):
    """The largest difference between any two implementations, case by case, held to the tolerance
    each has against the reference. (Each within it of the reference would only bound two of them
    to twice it, so this check asks for more than the other tests do; measured, it is far less.)"""
    outputs = {impl: workspace.outputs(impl, "losses") for impl in cases.IMPLEMENTATIONS}
    families: dict[str, list] = {}
    for dtype, case in cases.loss_case_dtypes():
        key = f"{dtype} {case.name}"
        ref_value, ref_grads = case.reference()
        g_scale = gradient_scale(case, ref_grads)
        for a, b in itertools.combinations(cases.IMPLEMENTATIONS, 2):
            (va, ga, _), (vb, gb, _) = outputs[a][key], outputs[b][key]
            value_abs = max_abs(va, vb)
            grads_abs = max((max_abs(x, y) for x, y in zip(ga, gb, strict=True)), default=0.0)
            families.setdefault(dtype, []).append(
                (f"{case.name}: {a} vs {b}", max(value_abs, grads_abs),
                 max(value_abs / max(1.0, abs(ref_value)), grads_abs / g_scale)))
    for dtype, rows in families.items():
        abs_err, rel_err = worst((a, r) for _, a, r in rows)
        worst_pair = max(rows, key=lambda row: row[2])[0]
        record(f"all losses, {dtype}: any two implementations", "between implementations", abs_err,
               rel_err, TOLERANCE[dtype], note=f"worst: {worst_pair}")
        assert rel_err <= TOLERANCE[dtype], worst_pair
