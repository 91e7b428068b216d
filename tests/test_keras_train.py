"""The BYOL training program on the chapter contract, on the TensorFlow backend (in this process)
and on JAX and PyTorch (a subprocess each: the backend is fixed per process): the run's rows, a
stop after step 4 and a resume that reproduces the uninterrupted run exactly -- every weight, the
optimizer's variables and the target's EMA position -- and the evaluation's exports. The policy
itself is tested once in tests/test_session.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tests.tf_setup  # noqa: F401  (TF's devices and XLA flags, before any TF op)
from tests import keras_train_check

pytestmark = pytest.mark.xdist_group("keras-train")  # one worker builds the module's fixtures

REPO = Path(__file__).resolve().parents[1]


def assert_exact_resume(result: dict):
    assert result["stopped"]  # the run did stop ...
    assert result["stopped_at"] == result["interrupt_at"] + 1  # ... once the Ctrl-C's step was done, ...
    assert result["resumed_losses"] == result["full_losses"]  # ... and its resume lost nothing
    assert len(result["full_losses"]) == 6 and result["full_losses"][-1] < result["full_losses"][0]
    assert result["equal_state"] and result["ema_step"] == 6 and result["summary_steps"] == 6


@pytest.fixture(scope="module")
def tensorflow_result(tmp_path_factory):
    return keras_train_check.run_checks(tmp_path_factory.mktemp("keras-tf"))


def test_resume_is_exact_on_tensorflow(tensorflow_result):
    assert tensorflow_result["backend"] == "tensorflow"
    assert_exact_resume(tensorflow_result)
    # fit's tf.data iterator switched glibc's large-buffer reuse off: back on once per fit (epoch)
    assert tensorflow_result["large_buffer_resets"] == [True, True]


SUBPROCESS_ENV = {
    # The three runs compile the same step: JAX's persistent cache compiles it once.
    "jax": lambda tmp_path: {"XLA_FLAGS": "--xla_backend_optimization_level=0",
                             "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
                             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"},
    "torch": lambda tmp_path: {},  # eager: nothing compiles
}


# Subprocesses needing nothing of this module's: each its own group, free to run alongside.
@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.xdist_group(f"keras-resume-{b}"))
                                     for b in SUBPROCESS_ENV])
def test_resume_is_exact_on_the_other_backends(backend, tmp_path):
    env = {**os.environ, **SUBPROCESS_ENV[backend](tmp_path)}
    out = subprocess.run([sys.executable, "-m", "tests.keras_train_check", backend, str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert_exact_resume(result)
    assert result["large_buffer_resets"] == []  # no tf.data off TensorFlow: nothing to switch back
    assert not result["tensorflow_loaded"]  # nor TensorFlow at all (keras_byol/backend.py)


def test_evaluate_exports_the_online_encoder_twice(tensorflow_result, tmp_path_factory):
    from keras_byol import evaluate

    [run_dir] = (tmp_path_factory.getbasetemp() / "keras-tf0" / "full").iterdir()
    args = ["--max-train", "200", "--max-test", "100", "--no-label-efficiency"]
    assert evaluate.main([str(run_dir), *args]) == 0
    results = json.loads((run_dir / "evaluation.json").read_text())
    assert results["checkpoint"]["finished"] is True
    import keras
    import numpy as np

    from common.checkpoints import CheckpointStore

    # Both exports are the trained online encoder (not the target, its moving average).
    config = json.loads((run_dir / "config.json").read_text())
    trained = evaluate.load_encoder(config, "cpu", CheckpointStore(run_dir).latest(), None)
    portable = evaluate.load_encoder(config, "cpu", None, run_dir / "encoder.safetensors")
    saved = keras.saving.load_model(run_dir / "encoder.keras")
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    online = trained.features(x)
    np.testing.assert_array_equal(portable.features(x), online)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(saved(x, training=False)), online, rtol=1e-6,
                               atol=1e-7)
    target = keras.ops.convert_to_numpy(trained.model.target_encoder(x, training=False))
    assert np.abs(target - online).max() > 1e-6


def test_resume_starts_on_the_backend_the_run_saved(tmp_path):
    # `python -m keras_byol.train --resume RUN_DIR` must pick the backend before Keras loads.
    from keras_byol import backend

    (tmp_path / "config.json").write_text(json.dumps({"backend": "jax", "devices": 2}))
    resume = ["--resume", str(tmp_path)]
    assert backend.from_command_line(resume) == "jax"
    assert backend.from_command_line(resume, "--devices") == "2"
    assert backend.from_command_line([*resume, "--backend", "torch"]) == "torch"  # the flag wins
    assert backend.from_command_line(["--resume", str(tmp_path / "missing")]) is None


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["-m", "keras_byol.train", "--backend", "bogus"], {}, "--backend 'bogus'"),
    (["-m", "keras_byol.train"], {"KERAS_BACKEND": "bogus"}, "KERAS_BACKEND 'bogus'"),
    (["-m", "keras_byol.evaluate", "RUN_DIR", "--backend", "bogus"], {}, "--backend 'bogus'"),
])
def test_an_unknown_backend_is_a_usage_error_before_keras_loads(argv, env, named):
    """The backend is chosen in the programs' first lines, before ``run_main``: a ConfigError
    there was a traceback."""
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(f"error: {named} is unknown; choose one of tensorflow, jax, torch")


def test_a_new_run_starts_its_online_encoder_from_a_pytorch_encoder(tmp_path):
    """``--init-encoder``: the online encoder is the file's; the projector, the predictor and the
    target network keep the seed's draws (BYOL draws the target independently)."""
    import numpy as np
    import torch

    from common.arch import resnet_spec
    from common.weights import load_encoder
    from keras_byol import train
    from keras_byol.model import encoder_to_portable
    from pytorch_simclr.model import build_encoder, export_encoder

    spec = resnet_spec("resnet10_small", 16)
    torch.manual_seed(5)
    foreign = tmp_path / "torch-encoder.safetensors"
    export_encoder(foreign, build_encoder(spec), spec, 16)
    tensors, _ = load_encoder(foreign)
    drawn = train.Trainer(keras_train_check.tiny(train, tmp_path / "drawn")).model
    started = train.Trainer(keras_train_check.tiny(train, tmp_path / "started", "--init-encoder",
                                                   str(foreign))).model
    online = encoder_to_portable(started.online_encoder, spec)
    assert all(np.array_equal(online[name], tensors[name]) for name in tensors)
    kept = ("online_projector", "predictor", "target_encoder", "target_projector")
    for name in kept:
        for ours, theirs in zip(getattr(started, name).weights, getattr(drawn, name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(ours.value), np.asarray(theirs.value))
