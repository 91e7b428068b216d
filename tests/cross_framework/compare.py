"""Error measures shared by the cross-framework tests (what the report's numbers mean)."""

from __future__ import annotations

import numpy as np


def max_abs(got, want) -> float:
    """``max |got - want|``; ``inf`` where either holds a NaN or an infinity the other does not
    (a NaN must fail every check, and Python's ``max`` would drop it)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != {want.shape}")
    if not got.size:
        return 0.0
    same = (got == want) | (np.isnan(got) & np.isnan(want))  # equal infinities and NaNs
    difference = np.where(same, 0.0, np.abs(got - want))
    return float(np.max(np.where(np.isnan(difference), np.inf, difference)))


def scale_of(arrays) -> float:
    """The largest magnitude among ``arrays`` (the scale relative errors are taken against)."""
    return max((float(np.max(np.abs(np.asarray(a)))) for a in arrays if np.size(a)), default=0.0)


def relative(got, want, scale: float | None = None) -> tuple[float, float]:
    """``(max |got - want|, that divided by the scale of want)``: relative to the tensor's largest
    entry (or to ``scale``), so a small entry is held to the precision of the large ones."""
    error = max_abs(got, want)
    scale = scale_of([want]) if scale is None else scale
    return error, error / scale if scale > 0 else error


def worst(pairs) -> tuple[float, float]:
    """Element-wise max of ``(abs, rel)`` pairs."""
    pairs = list(pairs)
    return max(p[0] for p in pairs), max(p[1] for p in pairs)
