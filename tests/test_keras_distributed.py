"""Data-parallel BYOL (keras_byol/distributed.py): one step on 2 devices against one device.

Each case runs ``tests/keras_distributed_check.py`` in a process of its own, because a process has
one Keras backend and fixes its devices when the backend starts: JAX with 2 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``), TensorFlow with its CPU split into 2
logical devices. From the same initial weights, on the same global batch of 8, ONE ``fit`` step on
2 devices is compared with a one-device step within 1e-5 -- the loss, the online weights, the target
weights (the EMA), the BatchNorm moving statistics, the optimizer variables -- and the encoder's
inference features (the kNN monitor's path). What the one-device step is depends on what BatchNorm
does under data parallelism:

- **JAX, ``keras.distribution.DataParallel``**: one program over the global batch, so BatchNorm's
  statistics are the global batch's: the reference is the plain single-device ``fit`` step.
- **TensorFlow, ``MirroredStrategy``, BatchNorm synchronised** (``synchronized=True``, the chapter's
  default, as BYOL's code): the moments are all-reduced over the replicas, global statistics again:
  the same reference. Every replica's copy of every variable must be identical.
- **TensorFlow, per-replica BatchNorm** (``--no-sync-bn``): each replica normalises its own half of
  the batch and moves its own copy of the moving statistics, which no single-device ``fit`` does.
  The reference is that step written out on one device: each half through the model with its own
  batch statistics, the gradient of the mean of the two halves' losses, one optimizer step, one EMA
  step. Replica r's copy of the moving statistics must be what half r alone gives; the copies differ
  from each other, and the loss differs from the global-BatchNorm loss (the setting matters).
- **PyTorch**: Keras 3.15.1 has no data parallelism on this backend; ``--devices`` is refused.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import pytest

from common.errors import ConfigError
from keras_byol import distributed

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5
CASES = {"jax": ("jax",), "tensorflow-sync": ("tensorflow", "sync"),
         "tensorflow-replica": ("tensorflow", "replica")}
_processes: dict[str, tuple[subprocess.Popen, Path]] = {}


def _start(case: str) -> None:
    """Launch ``case``'s check (once); its output goes to temporary files."""
    if case in _processes:
        return
    backend, *mode = CASES[case]
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    folder = Path(tempfile.mkdtemp(prefix=f"keras-distributed-{case}-"))
    with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tests.keras_distributed_check", backend,
                                    *mode], cwd=REPO, env=env, stdout=stdout, stderr=stderr,
                                   text=True)
    _processes[case] = (process, folder)


@functools.cache
def report(case: str) -> dict:
    """The JSON report of ``case``. In a plain pytest run the first call starts every case, so that
    they run side by side; under pytest-xdist each worker starts only its own."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for other in CASES:
            _start(other)
    _start(case)
    process, folder = _processes[case]
    try:
        process.wait(timeout=600)
        stdout, stderr = (folder / "stdout").read_text(), (folder / "stderr").read_text()
    finally:
        process.kill()
        shutil.rmtree(folder, ignore_errors=True)
    if process.returncode != 0:
        raise AssertionError(f"the {case} check crashed:\n{stderr[-5000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def case(name: str):
    return pytest.mark.parametrize("case", [pytest.param(
        name, marks=[pytest.mark.slow, pytest.mark.xdist_group(f"keras-distributed-{name}")])])


def _assert_equal_step(result: dict, copies: int) -> None:
    assert result["devices"] == 2
    assert result["moved"] > 1e-2  # the step moved the weights: the comparisons below have teeth
    assert abs(result["loss"] - result["expected_loss"]) <= TOL, result
    for group in ("online", "target", "bn_stats", "optimizer"):
        assert result[group] <= TOL, (group, result)
        assert result[f"{group}_copies"] == copies, (group, result)
    assert result["ema_step"] == [1] * copies
    assert result["features_shape"] == [5, 16]  # an odd batch, padded over the devices and cut
    assert result["features"] <= TOL, result


@case("jax")
def test_jax_data_parallel_step_equals_the_single_device_step(case):
    result = report(case)
    _assert_equal_step(result, copies=1)  # one global array per variable ...
    assert result["variable_devices"] == 2  # ... replicated over both devices
    assert result["data_axes"][0] == "batch"  # the batch dimension sharded over them
    assert "TensorFlow-only" in result["no_sync_bn_refused"]


@case("tensorflow-sync")
def test_tensorflow_mirrored_step_with_synchronised_bn_equals_the_single_device_step(case):
    result = report(case)
    _assert_equal_step(result, copies=2)
    for group in ("online", "target", "bn_stats", "optimizer"):
        assert result[f"{group}_spread"] == 0.0, (group, result)  # the mirrors are identical
    assert "synchronised BN" in result["describe"]
    assert "drop --jit-compile" in result["jit_with_devices_refused"]


@case("tensorflow-replica")
def test_tensorflow_mirrored_step_with_per_replica_bn_equals_the_split_reference(case):
    result = report(case)
    _assert_equal_step(result, copies=2)  # bn_stats: replica r's copy against half r's statistics
    for group in ("online", "target", "optimizer"):
        assert result[f"{group}_spread"] == 0.0, (group, result)
    assert result["bn_stats_spread"] > 1e-3  # each replica keeps its own moving statistics
    assert abs(result["loss"] - result["global_bn_loss"]) > 1e-3  # per-replica BN is another loss
    assert "per-replica BN" in result["describe"]


# ---------------------------------------------------------------------------------------------
# The set-up itself (in this process: nothing is placed on any device)
# ---------------------------------------------------------------------------------------------
def test_devices_flag_values():
    assert distributed.parse_devices("2") == 2 and distributed.parse_devices("all") == "all"
    for wrong in ("0", "-1", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="a positive number or 'all', not"):
            distributed.parse_devices(wrong)  # what argparse prints (a ValueError it would not)


def test_one_device_sets_nothing_up_and_a_batch_must_split():
    placement = distributed.place(1, 7)
    assert placement.count == 1 and placement.strategy is None and not placement.sync_bn
    assert placement.describe() == "1 device"
    with pytest.raises(ConfigError, match="does not split over 3 devices"):
        distributed.place(3, 8)


def test_the_torch_backend_is_refused(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ConfigError, match="#23316") as error:
        distributed.place(2, 8)
    assert "3.15.1" in str(error.value) and "--backend jax" in str(error.value)
    monkeypatch.setenv("WORLD_SIZE", "2")  # one process of several under torchrun: refused too
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        distributed.place(1, 8)
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.place(1, 8).count == 1


def test_train_flags_reach_the_configuration(capsys):
    from keras_byol import train

    config = train.parse_request(["--devices", "2", "--no-sync-bn"]).config
    assert config["devices"] == 2 and config["sync_bn"] is False
    config = train.parse_request([]).config
    assert config["devices"] == 1 and config["sync_bn"] is True
    # the target's update cannot move per-replica statistics replica by replica: refused
    for mode in ("average", "copy"):
        with pytest.raises(SystemExit):
            train.parse_request(["--devices", "2", "--no-sync-bn", "--target-bn-stats", mode])
        assert f"--target-bn-stats {mode} with --no-sync-bn on several devices" in capsys.readouterr().err
    assert train.parse_request(["--devices", "2", "--target-bn-stats", "average"]).config["sync_bn"]
