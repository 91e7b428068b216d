"""TensorBoard scalars for every chapter, written without TensorFlow or PyTorch.

The run policy (``common/session.py``) writes every metrics row to ``RUN_DIR/tensorboard/`` as well
as to ``metrics.jsonl``, so ``tensorboard --logdir runs/`` shows every chapter's runs the same way.
The event files come from the ``tensorboard`` package's own writer. That package imports TensorFlow
whenever it is installed (slow; and TensorFlow loaded before Triton crashes a PyTorch process);
its documented switch for "no TensorFlow" is the presence of the module
``tensorboard.compat.notf``, which is how ``torch.utils.tensorboard`` writes without TensorFlow too.

A resumed run writes its steps after the checkpoint again, and an earlier process may have logged
some of them before it stopped (a NaN, a full disk, SIGKILL). ``metrics.jsonl`` drops those rows
on resume. TensorBoard's Rust data server (the default loader) drops them too, when a step comes
again; its Python loader (``--load_fast=false``, and ``EventAccumulator``) needs a restart marker:
a ``SessionLog.START`` event at the first step the resumed writer writes, from which on it hides
the earlier events. The resumed writer writes that marker, as
``torch.utils.tensorboard.SummaryWriter(purge_step=...)`` does.

The loaders read a folder's event files in name order, and a name is
``events.out.tfevents.<second>.<host>.<pid>.<n>``: two files of the same second compare by their
pid and counter *as text* ("10" before "9"), so a resumed writer opened in the second of the last
file could be read before it, and its marker would hide nothing. A resumed writer whose file does
not sort last is therefore opened again in the next second (only a run stopped and resumed within
a second, as the tests' toy runs are, can meet this).
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.compat.proto.event_pb2 import Event, SessionLog  # noqa: E402
from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402


class ScalarWriter:
    """``add_scalars("epoch", {"loss": 4.1, "knn_top1": 0.9}, step=30)`` -> tags epoch/loss, ..."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        """``purge_step``: hide the events of earlier writers at this step and after (a resume)."""
        self._writer = _last_event_file_writer(Path(log_dir)) if purge_step is not None else \
            EventFileWriter(str(log_dir))
        if purge_step is not None:
            self._writer.add_event(Event(wall_time=time.time(), step=int(purge_step),
                                         session_log=SessionLog(status=SessionLog.START)))

    def add_scalars(self, prefix: str, values: dict, step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=f"{prefix}/{name}", simple_value=float(value))
                                 for name, value in values.items()])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self._writer.close()


def _last_event_file_writer(log_dir: Path) -> EventFileWriter:
    """A writer whose event file sorts after every earlier one in ``log_dir`` (module docstring)."""
    before = set(log_dir.glob("events.out.tfevents.*"))
    writer = EventFileWriter(str(log_dir))
    [created] = set(log_dir.glob("events.out.tfevents.*")) - before
    if before and max(before) > created:  # the same second as the last file, and sorted first
        writer.close()
        created.unlink()
        time.sleep(max(0.0, int(time.time()) + 1 - time.time()))
        writer = EventFileWriter(str(log_dir))
    return writer
