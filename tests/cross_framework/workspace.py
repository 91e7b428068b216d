"""Where every implementation's outputs come from: this process or a subprocess, computed once.

``Workspace.start`` launches, before anything else runs, the processes that cannot share this one:
Keras on JAX and on PyTorch (``keras_backend.py``, one process per backend for every section) and
the two gloo ranks of the distributed NT-Xent (``torch_gather.py``). While they work, this process
writes the portable weights they import and trains the chapters' encoders they evaluate, then runs
its own implementations (PyTorch, TensorFlow, Keras on TensorFlow) as the tests ask for them.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.cross_framework import cases

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT = 900


@dataclass(eq=False)
class Workspace:
    folder: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # -- start-up ---------------------------------------------------------------------------------
    def start(self) -> None:
        import keras

        here = keras.backend.backend()
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_ENABLE_X64": "1",
               # level 0: JAX compiles the many small functions several times faster (same numbers);
               # two host devices for the DataParallel check (the rest runs on the first).
               "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=2 "
                            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               # One thread per process: the subprocesses and this one share the cores already
               # (an OpenMP pool spinning on a busy core costs far more than it saves).
               **dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"), "1")}
        for backend in ("jax", "torch", "tensorflow"):
            if backend != here:
                self._launch(f"keras-{backend}", ["-m", "tests.cross_framework.keras_backend",
                                                  str(self.folder)], {**env, "KERAS_BACKEND": backend})
        self._launch("torch-gather", ["-m", "tests.cross_framework.torch_gather",
                                      str(self.folder / "torch-gather.pkl")], env)
        self._prepare("weights", lambda: cases.write_reference_weights(self.folder))
        self._prepare("trained", self._train_encoders)

    def _launch(self, name: str, args: list[str], env: dict) -> None:
        stderr = open(self.folder / f"{name}.stderr", "w")  # noqa: SIM115  (closed in close())
        self.processes[name] = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                                stdout=subprocess.DEVNULL, stderr=stderr)
        self.processes[name].stderr_file = stderr

    def _prepare(self, name: str, fn) -> None:
        """Run ``fn`` and write the marker the subprocesses wait for (with the traceback on failure)."""
        start = time.perf_counter()
        try:
            fn()
            text = "ok"
        except Exception:
            text = traceback.format_exc()
        (self.folder / f"{name}.ready").write_text(text)
        self.timings[f"prepare {name}"] = round(time.perf_counter() - start, 1)

    def _train_encoders(self) -> None:
        from tests.cross_framework import impl_keras, impl_tf, impl_torch

        for name, impl in zip(cases.TRAINED, (impl_torch, impl_tf, impl_keras), strict=True):
            impl.train_for_knn(self.folder / f"{name}.safetensors")

    def prepared(self, name: str) -> None:
        """Fail the calling test with the traceback if ``name`` could not be prepared."""
        text = (self.folder / f"{name}.ready").read_text()
        if text != "ok":
            raise AssertionError(f"preparing {name} failed:\n{text}")

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stderr_file.close()

    # -- outputs ----------------------------------------------------------------------------------
    def _finished(self, name: str) -> None:
        process = self.processes[name]
        try:
            process.wait(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        if process.returncode != 0:
            process.stderr_file.flush()
            stderr = (self.folder / f"{name}.stderr").read_text()
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{stderr[-5000:]}")

    @functools.cache  # noqa: B019  (one Workspace per session)
    def subprocess_results(self, name: str) -> dict:
        self._finished(name)
        path = self.folder / ("torch-gather.pkl" if name == "torch-gather" else f"{name}.pkl")
        with open(path, "rb") as file:
            return pickle.load(file)

    @functools.cache  # noqa: B019
    def outputs(self, implementation: str, section: str):
        """Implementation's raw outputs of ``section`` (raises the section's own traceback)."""
        if implementation in self.processes:
            result = self.subprocess_results(implementation)[section]
            if isinstance(result, dict) and set(result) == {"error"}:
                raise AssertionError(f"{section} raised in {implementation}:\n{result['error']}")
            return result
        module = _module(implementation)
        if section in ("encoders", "train_mode"):
            self.prepared("weights")
        if section == "knn":
            self.prepared("trained")
        function = getattr(module, SECTIONS[section])
        return function(self.folder) if section in ("encoders", "train_mode", "knn") else function()


SECTIONS = {"losses": "loss_outputs", "optim": "optim_outputs", "augment": "augment_outputs",
            "sampled": "sampled_params", "encoders": "encoder_outputs", "train_mode": "train_mode_outputs",
            "step": "simclr_step", "knn": "knn_outputs",
            # PyTorch only: the step's float64 reference and its negative controls
            "step_float64": "simclr_step_float64", "step_wrong_bn_eps": "simclr_step_wrong_bn_eps",
            "step_no_weight_decay": "simclr_step_no_weight_decay",
            "step_sum_of_norms": "simclr_step_sum_of_norms"}


def _module(implementation: str):
    if implementation == "pytorch":
        from tests.cross_framework import impl_torch as module
    elif implementation == "tensorflow":
        from tests.cross_framework import impl_tf as module
    else:
        import keras

        from tests.cross_framework import impl_keras as module

        if implementation != f"keras-{keras.backend.backend()}":
            raise ValueError(f"{implementation} is not this process's Keras backend")
    return module
