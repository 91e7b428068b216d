"""TensorBoard scalars for every chapter, written without TensorFlow or PyTorch.

The run policy (``common/session.py``) writes every metrics row to ``RUN_DIR/tensorboard/`` as well
as to ``metrics.jsonl``, so ``tensorboard --logdir runs/`` shows every chapter's runs the same way.
The event files come from the ``tensorboard`` package's own writer. That package imports TensorFlow
whenever it is installed (slow; and TensorFlow loaded before Triton crashes a PyTorch process);
its documented switch for "no TensorFlow" is the presence of the module
``tensorboard.compat.notf``, which is how ``torch.utils.tensorboard`` writes without TensorFlow too.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.compat.proto.event_pb2 import Event  # noqa: E402
from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402


class ScalarWriter:
    """``add_scalars("epoch", {"loss": 4.1, "knn_top1": 0.9}, step=30)`` -> tags epoch/loss, ..."""

    def __init__(self, log_dir: Path):
        self._writer = EventFileWriter(str(log_dir))

    def add_scalars(self, prefix: str, values: dict, step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=f"{prefix}/{name}", simple_value=float(value))
                                 for name, value in values.items()])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self._writer.close()
