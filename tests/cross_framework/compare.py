"""Error measures shared by the cross-framework tests (what the report's numbers mean)."""

from __future__ import annotations

import numpy as np


def max_abs(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != {want.shape}")
    return float(np.max(np.abs(got - want))) if got.size else 0.0


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
