"""A few MoCo training steps on a tiny network, the same in the test process and in the
MultiWorkerMirroredStrategy worker processes of tests/test_tf_distributed.py.

As a program (``python -m tests.tf_moco_run INDEX PORTS INITIAL OUT``) it is one worker of a local
two-worker cluster: ``TF_CONFIG`` is set from the ports, the initial weights are read from the
``INITIAL`` npz file, and the state after the steps is written to ``OUT``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from common.arch import ResNetSpec
from common.augment import preset
from common.stream import DataStream

SPEC = ResNetSpec("tiny", "basic", (1, 1), (4, 8), "cifar", 1)
IMAGE_SIZE, GLOBAL_BATCH, NUM_IMAGES, QUEUE_SIZE = 16, 8, 24, 32
LR, MOMENTUM, WEIGHT_DECAY, KEY_MOMENTUM = 0.5, 0.9, 1e-4, 0.9


PAIR = preset("mocov2", IMAGE_SIZE)  # MoCo v2's CIFAR views (every op: tests/test_tf_augment.py)
STREAM = DataStream(NUM_IMAGES, (IMAGE_SIZE, IMAGE_SIZE), GLOBAL_BATCH, PAIR, seed=3)


def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


def build_moco(bn_splits: int = 1, dtype: str | None = None):
    from tensorflow_moco.model import MoCo

    return MoCo(SPEC, projection_dim=8, hidden_dim=16, queue_size=QUEUE_SIZE, bn_splits=bn_splits,
                dtype=dtype)


def _variables(moco) -> dict:
    """Every variable of a MoCo by a stable name: both networks with their BN statistics, the
    queue and its pointer."""
    variables = {f"query{i}": v for i, v in enumerate(moco.query_encoder.weights + moco.query_head.weights)}
    variables |= {f"key{i}": v for i, v in enumerate(moco.key_encoder.weights + moco.key_head.weights)}
    return variables | {"queue": moco.queue, "queue_ptr": moco.queue_ptr}


def state(moco) -> dict[str, np.ndarray]:
    return {name: v.numpy() for name, v in _variables(moco).items()}


def load_state(moco, arrays) -> None:
    for name, v in _variables(moco).items():
        v.assign(arrays[name])


def recording_sgd(variables):
    """The chapter's SGD, also keeping the (all-reduced) gradient each variable was stepped with."""
    from tensorflow_moco.optim import SGD

    class RecordingSGD(SGD):
        def build(self, variables):
            super().build(variables)
            self.seen = self.add_optimizer_variables(variables, "seen_gradient")

        def update_step(self, gradient, variable, learning_rate):
            self.assign(self.seen[self._get_variable_index(variable)], gradient)
            super().update_step(gradient, variable, learning_rate)

    optimizer = RecordingSGD(LR, MOMENTUM, WEIGHT_DECAY)
    optimizer.build(variables)
    return optimizer


def run_steps(strategy, initial: dict, steps: int, bn_splits: int, shuffle_bn: bool,
              jit_compile: bool = False) -> list[dict]:
    """``steps`` training steps from ``initial``; per step the loss, gradients and the state."""
    import tensorflow as tf

    from tensorflow_moco.data import distribute_stream
    from tensorflow_moco.step import StepConfig, make_train_step

    with strategy.scope():
        moco = build_moco(bn_splits)
        load_state(moco, initial)
        optimizer = recording_sgd(moco.query_variables)
    config = StepConfig(PAIR, GLOBAL_BATCH, temperature=0.2, shuffle_bn=shuffle_bn,
                        jit_compile=jit_compile)
    train_step = make_train_step(strategy, moco, optimizer, config)
    batches = iter(distribute_stream(strategy, images(), STREAM, epoch=0))
    results = []
    for _ in range(steps):
        loss = float(train_step(*next(batches), tf.constant(KEY_MOMENTUM))["loss"])
        gradients = {f"grad{i}": v.numpy() for i, v in enumerate(optimizer.seen)}
        results.append({"loss": np.float64(loss), **gradients, **state(moco)})
    return results


def _worker(index: int, ports: list[int], initial_path: str, out_path: str) -> None:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    })
    from tensorflow_moco.distributed import build_strategy

    strategy = build_strategy("multiworker")  # first: it sets up the collective runtime
    with np.load(initial_path) as initial:
        results = run_steps(strategy, dict(initial), steps=2, bn_splits=1, shuffle_bn=False)
    np.savez(out_path, **results[-1], workers=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], sys.argv[3], sys.argv[4])
