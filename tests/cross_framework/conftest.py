"""Set-up of the cross-framework checks: one workspace per session, the report's table.

Every test here is in one xdist group (``cross-framework``), so under ``pytest -n 2 --dist
loadgroup`` one worker runs them all and starts the subprocesses once. The tests that read a
subprocess's results run last, so that the subprocesses work while this process runs its own
implementations.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from tests.cross_framework import table
from tests.cross_framework.workspace import Workspace

HERE = Path(__file__).resolve().parent
SUBPROCESS_IMPLEMENTATIONS = ("keras-jax", "keras-torch", "torch-gather")


def _reads_a_subprocess(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("implementation") in SUBPROCESS_IMPLEMENTATIONS \
        or "subprocess" in item.keywords


def pytest_collection_modifyitems(config, items):
    ours = [i for i in items if Path(str(i.fspath)).resolve().parent == HERE]
    if not ours:
        return
    late = [i for i in ours if _reads_a_subprocess(i)]
    early = [i for i in ours if not _reads_a_subprocess(i)]
    position = items.index(ours[0])
    rest = [i for i in items if i not in set(ours)]
    items[:] = rest[:position] + early + late + rest[position:]


@pytest.fixture(scope="session", autouse=True)
def workspace(tmp_path_factory) -> Workspace:
    space = Workspace(tmp_path_factory.mktemp("cross-framework"))
    try:
        space.start()
        yield space
    finally:
        space.close()


@pytest.fixture
def record(request):
    """``record(check, implementation, abs_err, rel_err, ...)``: a cell of the report's table of this
    test module's section (``test_losses.py``: "losses")."""
    section = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    assert section in table.SECTIONS, section
    return functools.partial(table.record, section)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(table.REPORT_ENV)
    if path and table.ROWS:
        table.write(Path(path))


def pytest_configure(config):
    config.addinivalue_line("markers", "subprocess: reads another process's results (runs last)")
