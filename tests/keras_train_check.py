"""The Keras BYOL training program on one backend, for tests/test_keras_train.py.

    python -m tests.keras_train_check BACKEND OUTPUT_DIR      (prints one JSON line)

A tiny run (2 epochs of 3 steps), then the same run interrupted during step 4 (0-based: the Ctrl-C
comes as that step begins; as the first Ctrl-C does, the step finishes and a checkpoint is written)
and resumed; the JSON holds the step the interrupt came at, the global step of the checkpoint the
interrupted run left, both runs' per-step losses, whether their final weights and optimizer
variables are equal, the target's EMA position, and the calls that switch glibc's large-buffer
reuse back on after tf.data (common/allocator.py).
Runs as its own process because Keras' backend is fixed per process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = sys.argv[1] if __name__ == "__main__" else os.environ.get(
    "KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from common import allocator, runs  # noqa: E402
from common.checkpoints import CheckpointStore  # noqa: E402
from common.errors import Interrupted  # noqa: E402

INTERRUPT_AT = 4  # the global step (0-based) during which the run is interrupted: epoch 2, step 2
TINY = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "3",
        "--image-size", "16", "--log-every", "1", "--knn-every", "0", "--arch", "resnet10_small"]


def tiny(train, output: Path, *extra: str):
    # XLA compiles each new model's step anew (seconds on a CPU); the plain graph/eager step is the
    # same computation for what this check asks.
    no_jit = ["--no-jit-compile"] if os.environ["KERAS_BACKEND"] == "tensorflow" else []
    request = train.parse_request([*TINY, *no_jit, "--output-dir", str(output), *extra])
    # Both kNN splits of 32 images: one inference shape for the two (KerasEncoder.features); the
    # monitor runs 4 times over the three runs, and this check compares losses and weights only.
    request.config.update(knn_max_train=32, knn_max_test=32, knn_k=10)
    return request


def state(trainer) -> list[np.ndarray]:
    from keras import ops

    trainer._sync()
    return [ops.convert_to_numpy(v) for v in trainer.model.weights + trainer.model.optimizer.variables]


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in runs.read_run(run_dir).metrics if row["kind"] == "step"]


def run_checks(output: Path) -> dict:
    from keras_byol import train

    full = train.Trainer(tiny(train, output / "full"))
    keep_large_buffers, resets = allocator.keep_large_buffers, []
    allocator.keep_large_buffers = lambda: resets.append(keep_large_buffers())
    try:
        full.fit()
    finally:
        allocator.keep_large_buffers = keep_large_buffers
    original = train.SessionCallback.on_train_batch_begin

    def interrupt(self, batch, logs=None):
        original(self, batch, logs)
        if self.session.position.global_step == INTERRUPT_AT:
            self.session._interrupts.signal = "SIGINT"

    train.SessionCallback.on_train_batch_begin = interrupt
    interrupted = train.Trainer(tiny(train, output / "resumed"))
    try:
        interrupted.fit()
        stopped = False
    except Interrupted:
        stopped = True
    train.SessionCallback.on_train_batch_begin = original
    run_dir = interrupted.session.run_dir
    stopped_at = CheckpointStore(run_dir).position()["global_step"]  # before the resume moves it
    resumed = train.Trainer(train.parse_request(["--resume", str(run_dir)]))
    resumed.fit()
    equal = all(np.array_equal(a, b) for a, b in zip(state(full), state(resumed), strict=True))
    from keras import ops

    return {
        "backend": os.environ["KERAS_BACKEND"],
        "stopped": stopped,
        "interrupt_at": INTERRUPT_AT,
        "stopped_at": stopped_at,
        "full_losses": losses(full.session.run_dir),
        "resumed_losses": losses(run_dir),
        "equal_state": equal,
        "ema_step": int(ops.convert_to_numpy(resumed.model.ema_step)),
        "summary_steps": runs.read_run(run_dir).summary["steps"],
        "large_buffer_resets": resets,  # per fit call (epoch), on TensorFlow: common/allocator.py
        "tensorflow_loaded": "tensorflow" in sys.modules,
    }


if __name__ == "__main__":
    print(json.dumps(run_checks(Path(sys.argv[2]))))
