"""common/runs.py: the run-directory writer, atomic writes and the tolerant reader."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import runs
from common.errors import known_message
from common.runs import (
    METRIC_KEYS,
    RunExistsError,
    RunWriter,
    atomic_write_bytes,
    atomic_write_json,
    library_versions,
    list_runs,
    read_run,
)

CONFIG = {"epochs": 2, "batch_size": 256, "temperature": 0.5}


def write_run(run_dir, rows=((0, 10, 5.1), (1, 20, 4.2)), summary=None, **writer_kw):
    with RunWriter(run_dir, CONFIG, "pytorch", "simclr", **writer_kw) as writer:
        for epoch, step, loss in rows:
            writer.log(kind="step", epoch=epoch, step=step, wall_s=step / 10, loss=loss, lr=0.3)
        if summary is not None:
            writer.write_summary(summary)


def test_round_trip(tmp_path):
    write_run(tmp_path / "run", summary={"knn_top1": 0.41, "epochs_done": 2})
    run = read_run(tmp_path / "run")
    assert run.config["epochs"] == 2 and run.config["temperature"] == 0.5
    assert run.config["framework"] == "pytorch" and run.config["method"] == "simclr"
    assert run.config["library_versions"]["numpy"] == np.__version__
    assert [row["loss"] for row in run.metrics] == [5.1, 4.2]
    assert all(set(METRIC_KEYS) <= set(row) for row in run.metrics)
    first = run.metrics[0]
    identity = (first["framework"], first["method"], first["kind"], first["epoch"], first["step"])
    assert identity == ("pytorch", "simclr", "step", 0, 10)
    assert first["knn_top1"] is None and first["images_per_sec"] is None
    assert (first["wall_s"], run.metrics[1]["wall_s"]) == (1.0, 2.0)
    assert run.summary == {"knn_top1": 0.41, "epochs_done": 2}
    assert not run.truncated and run.warnings == []


def test_truncated_last_line_is_dropped_and_reported(tmp_path):
    write_run(tmp_path / "run", rows=[(0, 1, 3.0), (0, 2, 2.5), (0, 3, 2.0)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    data = metrics.read_bytes()
    metrics.write_bytes(data[: len(data) - 25])  # a kill in the middle of the third row
    run = read_run(tmp_path / "run")
    assert [row["step"] for row in run.metrics] == [1, 2]
    assert run.truncated and "cut" in run.warnings[0]
    assert run.summary is None  # killed before the end: no summary, still readable


def test_resume_removes_the_cut_line_and_appends(tmp_path):
    write_run(tmp_path / "run", rows=[(0, 1, 3.0), (0, 2, 2.5)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-10])
    write_run(tmp_path / "run", rows=[(1, 3, 2.0)], resume=True)
    run = read_run(tmp_path / "run")
    assert [row["step"] for row in run.metrics] == [1, 3] and not run.truncated


def test_resume_drops_the_rows_written_after_the_checkpoint(tmp_path):
    """Killed after step 9 with a checkpoint at step 6: steps 7-9 are replayed, never listed twice."""
    write_run(tmp_path / "run", rows=[(0, step, 1.0 / step) for step in range(1, 10)])
    write_run(tmp_path / "run", rows=[(0, step, 1.0 / step) for step in range(7, 10)], resume=True,
              keep_row=lambda row: row["step"] <= 6)
    assert [row["step"] for row in read_run(tmp_path / "run").metrics] == list(range(1, 10))


def test_the_lock_refuses_a_second_writer_and_dies_with_its_process(tmp_path):
    script = ("import sys, time; from common.runs import RunLock; lock = RunLock(sys.argv[1]); "
              "lock.acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunBusyError, match=f"another process \\(pid {holder.pid}\\)"):
            runs.RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    with runs.RunLock(tmp_path):  # not blocked by the dead process's lock file
        pass


def test_existing_run_is_not_overwritten_unless_resuming(tmp_path):
    write_run(tmp_path / "run")
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(RunExistsError, match="resume=True"):
        RunWriter(tmp_path / "run", {**CONFIG, "epochs": 9}, "pytorch", "simclr")
    assert (tmp_path / "run" / "config.json").read_text() == before
    with pytest.raises(ValueError, match="not keras/byol"):
        RunWriter(tmp_path / "run", CONFIG, "keras", "byol", resume=True)
    with RunWriter(tmp_path / "run", {**CONFIG, "epochs": 9}, "pytorch", "simclr", resume=True):
        pass
    config = read_run(tmp_path / "run").config
    assert config["epochs"] == 9  # the config in force; the change is recorded
    assert config["resumes"][0]["changed"] == {"epochs": {"old": 2, "new": 9}}
    # Resuming with the config read back from config.json (bookkeeping keys included) works.
    with RunWriter(tmp_path / "run", config, "pytorch", "simclr", resume=True):
        pass
    again = read_run(tmp_path / "run").config
    assert len(again["resumes"]) == 2 and again["resumes"][1]["changed"] == {}
    assert again["created"] == config["created"]


def test_config_bookkeeping_keys_must_agree_with_the_writer(tmp_path):
    with RunWriter(tmp_path / "a", {**CONFIG, "framework": "keras"}, "keras", "byol"):
        pass
    assert read_run(tmp_path / "a").config["framework"] == "keras"
    with pytest.raises(ValueError, match="contradicts"):
        RunWriter(tmp_path / "b", {**CONFIG, "framework": "keras"}, "pytorch", "simclr")


def test_crash_during_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"version": 1})

    def crash(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"version": 2})
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(tmp_path / "checkpoint.bin", b"\x00" * 100)
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_writes_get_the_umasks_permissions_or_keep_the_replaced_files(tmp_path):
    """A run shared with a group stays readable: not tempfile's private 0600."""
    previous = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "config.json", {"epochs": 1})
        (tmp_path / "summary.json").write_text("{}")
        (tmp_path / "summary.json").chmod(0o604)
        atomic_write_json(tmp_path / "summary.json", {"knn": 0.5})
    finally:
        os.umask(previous)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o604
    assert json.loads((tmp_path / "summary.json").read_text()) == {"knn": 0.5}


def test_nan_and_inf_are_written_as_null(tmp_path):
    with RunWriter(tmp_path / "run", {"lr": float("inf")}, "tensorflow", "moco") as writer:
        writer.log(kind="step", epoch=0, step=1, wall_s=0.5, loss=float("nan"),
                   grad_norm=np.float32("inf"), top=np.int64(3))
        writer.write_summary({"final_loss": np.nan, "curve": np.array([1.0, np.inf])})
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    run = read_run(tmp_path / "run")
    assert run.metrics[0]["loss"] is None and run.metrics[0]["grad_norm"] is None
    assert run.metrics[0]["top"] == 3
    assert run.summary == {"final_loss": None, "curve": [1.0, None]}
    assert run.config["lr"] is None


def test_list_runs_finds_nested_runs_sorted(tmp_path):
    write_run(tmp_path / "sweep" / "t0.5")
    write_run(tmp_path / "sweep" / "t0.1")
    write_run(tmp_path / "baseline")
    (tmp_path / "not_a_run").mkdir()
    found = list_runs(tmp_path)
    names = [run.path.relative_to(tmp_path).as_posix() for run in found]
    assert names == ["baseline", "sweep/t0.1", "sweep/t0.5"]


def test_reader_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory") as not_a_run:
        read_run(tmp_path)
    # one line, the reader's own advice: not an OS error's "...: check the path" appended to it
    assert known_message(not_a_run.value) == (f"{tmp_path} is not a run directory (no config.json); "
                                              "pass the directory a chapter's train.py wrote, e.g. "
                                              "runs/<name>")
    with pytest.raises(FileNotFoundError, match="not a directory") as not_a_folder:
        list_runs(tmp_path / "missing")
    assert known_message(not_a_folder.value).endswith("pass the folder that holds the runs")
    with pytest.raises(TypeError, match="convert it"):
        atomic_write_json(tmp_path / "x.json", {"model": object()})


def test_library_versions_never_imports_a_framework():
    script = (
        "import json, sys\n"
        "from common.runs import library_versions\n"
        "versions = library_versions()\n"
        "loaded = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]\n"
        "print(json.dumps({'versions': versions, 'loaded': loaded}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["versions"]["torch"] == importlib.metadata.version("torch")  # found without importing it
    assert library_versions(("no-such-package-xyz",))["no-such-package-xyz"] is None
