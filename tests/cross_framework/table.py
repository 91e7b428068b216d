"""The rows the cross-framework tests record, and the report written from them.

``python -m tests.cross_framework.report`` runs the checks with ``XF_REPORT`` set; at the end of the
session ``write`` turns the recorded rows into ``tests/cross_framework/REPORT.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

REPORT_ENV = "XF_REPORT"
COLUMNS = ("numpy", "pytorch", "tensorflow", "keras-tensorflow", "keras-jax", "keras-torch",
           "between implementations")
IMPLEMENTATION_COLUMN = {"pytorch (v2 per-image)": "pytorch"}
SECTIONS = ("losses", "distributed", "augment", "encoders", "optim", "step")


@dataclass
class Row:
    section: str
    check: str
    implementation: str
    abs_err: float | None
    rel_err: float | None
    tolerance: float | None
    ok: bool
    note: str = ""
    text: str | None = None
    tolerance_text: str | None = None


ROWS: list[Row] = []


def record(section: str, check: str, implementation: str, abs_err: float | None = None,
           rel_err: float | None = None, tolerance: float | None = None, *, ok: bool | None = None,
           note: str = "", text: str | None = None, tolerance_text: str | None = None) -> None:
    """One cell of the table: ``check`` x ``implementation``, in the table of ``section`` (the tests'
    ``record`` fixture fills it in). Numeric rows pass when ``rel_err <= tolerance``; rows of
    another kind give ``text`` (shown as is) and ``ok``, and ``tolerance_text`` for the tolerance
    column where it is not a number (a statistical test's level, "must fail")."""
    if ok is None:
        ok = rel_err is not None and tolerance is not None and rel_err <= tolerance
    implementation = IMPLEMENTATION_COLUMN.get(implementation, implementation)
    ROWS[:] = [r for r in ROWS if (r.check, r.implementation) != (check, implementation)]
    ROWS.append(Row(section, check, implementation, abs_err, rel_err, tolerance, bool(ok), note, text,
                    tolerance_text))


def _number(x: float | None) -> str:
    if x is None:
        return ""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def cell(row: Row) -> str:
    mark = "" if row.ok else " **FAIL**"
    if row.text is not None:
        return row.text + mark
    return f"{_number(row.abs_err)} / {_number(row.rel_err)}{mark}"


def table(section: str) -> str:
    """The matrix of ``section``: one line per check, one column per implementation that has a cell
    in it, then the tolerance."""
    checks: dict[str, dict[str, Row]] = {}
    for row in ROWS:
        if row.section == section:
            checks.setdefault(row.check, {})[row.implementation] = row
    present = {c for cells in checks.values() for c in cells}
    columns = [c for c in COLUMNS if c in present] + sorted(present - set(COLUMNS))
    lines = ["| check | " + " | ".join(columns) + " | tolerance |",
             "|---|" + "---|" * len(columns) + "---|"]
    for check, cells in checks.items():
        texts = sorted({r.tolerance_text for r in cells.values() if r.tolerance_text})
        tolerances = {r.tolerance for r in cells.values() if r.tolerance is not None}
        tolerance = ", ".join(texts) or ", ".join(_number(t) for t in sorted(tolerances)) or "exact"
        row = [check, *(cell(cells[c]) if c in cells else "" for c in columns), tolerance]
        lines.append("| " + " | ".join(text.replace("|", "\\|") for text in row) + " |")  # |z|
    return "\n".join(lines)


def notes(section: str) -> list[str]:
    """The worst case behind each cell of ``section``, where the test named one."""
    return [f"{row.check} / {row.implementation}: {row.note}" for row in ROWS
            if row.section == section and row.note]


def write(path: Path) -> None:
    from tests.cross_framework.report import render

    path.write_text(render(ROWS))
