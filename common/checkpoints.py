"""Checkpoints of a run: one folder per checkpoint, switched into place atomically.

    checkpoints/
      latest                  the name of the current checkpoint folder (replaced atomically)
      step-00001234/          one checkpoint: the chapter's own files (``torch.save``,
        ...                   ``tf.train.Checkpoint``, Keras weights) and the framework-neutral
        position.json         run position (common/session.py) written here

A chapter only writes its files into the folder it is handed; everything else is here, the same for
every framework. :meth:`CheckpointStore.save` writes into a hidden staging folder, fsyncs every
file, renames the folder to its final name and only then replaces ``latest``. A crash, a full disk or
a kill at any moment therefore leaves ``latest`` naming a complete checkpoint (the old one or the
new one); leftovers of an interrupted save are removed by the next save. The run's first save has
no old one: stopped between its rename and the pointer's write, it leaves a complete folder and no
``latest``, and :meth:`CheckpointStore.latest` then takes the newest complete folder.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError
from common.runs import CHECKPOINTS_DIR, atomic_write_bytes, atomic_write_json, fsync_dir
from common.schedules import LrSchedule

LATEST_FILE = "latest"
POSITION_FILE = "position.json"
_STAGING_PREFIX = ".staging-"
_FOLDER_NAME = re.compile(r"step-\d{8,}(-\d+)?")  # what save() names a checkpoint folder
_COUNTS = ("epoch", "step_in_epoch", "global_step")
"""What a run position must hold for a resume or an evaluation to read it, with a schedule
(``LrSchedule.to_dict()``) and its data (common/session.py's RunPosition writes these and more)."""
_OPTIONAL_COUNTS = ("steady_steps", "epoch_loss_count")
_OPTIONAL_NUMBERS = ("wall_s", "train_s", "steady_s", "peak_rss_mib", "epoch_loss_sum")
_NUMBERS_OR_NONE = ("knn_init", "knn_top1", "last_epoch_loss")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _wrong_in_position(position) -> list[str]:
    """The fields of a run position that a resume could not use as saved (missing, of the wrong
    type, out of range, or at odds with each other): a file damaged or edited by hand must be one
    message, not a crash somewhere in the resume."""
    if not isinstance(position, dict):
        return ["the whole file"]
    wrong = [key for key in _COUNTS if not _is_count(position.get(key))]
    wrong += [key for key in _OPTIONAL_COUNTS if key in position and not _is_count(position[key])]
    wrong += [key for key in _OPTIONAL_NUMBERS if key in position and not _is_number(position[key])]
    wrong += [key for key in _NUMBERS_OR_NONE
              if position.get(key) is not None and not _is_number(position[key])]
    lr = position.get("lr")
    if lr is not None and not (_is_number(lr) and lr > 0):  # a resume divides by it
        wrong.append("lr")
    try:
        LrSchedule.from_dict(position["schedule"])
    except (KeyError, TypeError, ValueError):
        wrong.append("schedule")
    data, layout = position.get("data"), position.get("layout", {})
    steps = data.get("steps_per_epoch") if isinstance(data, dict) else None
    if not isinstance(data, dict) or (steps is not None and not (_is_count(steps) and steps > 0)):
        wrong.append("data")
    elif steps and not wrong and not (position["step_in_epoch"] <= steps and position["global_step"]
                                      == position["epoch"] * steps + position["step_in_epoch"]):
        wrong.append("epoch, step_in_epoch and global_step disagree")
    if not isinstance(layout, dict) or (layout and not (
            layout.keys() == {"processes", "replicas"}
            and all(_is_count(n) and n > 0 for n in layout.values()))):
        wrong.append("layout")
    return wrong


class CheckpointError(UserError):
    """A checkpoint folder that cannot be read (damaged, or written by something else)."""


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


class CheckpointStore:
    """The ``checkpoints/`` folder of one run directory."""

    def __init__(self, run_dir):
        self.root = Path(run_dir) / CHECKPOINTS_DIR

    def latest(self) -> Path | None:
        """The current checkpoint folder, or None if the run has none yet. Without a pointer (no
        save finished, or the first one was stopped just before writing it), the newest complete
        folder: a folder gets its final name only once every file in it is written."""
        pointer = self.root / LATEST_FILE
        if not pointer.is_file():
            complete = self._complete_folders()
            return complete[-1] if complete else None
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise self._broken_pointer(f"{pointer} cannot be read ({error})") from error
        if not _FOLDER_NAME.fullmatch(name):  # "../..", an absolute path: never outside this run
            raise self._broken_pointer(f"{pointer} names {name[:80]!r}, not a checkpoint folder")
        folder = self.root / name
        if not (folder / POSITION_FILE).is_file():
            raise self._broken_pointer(f"{pointer} names {folder.name}, which is missing or "
                                       "incomplete")
        return folder

    def _complete_folders(self) -> list[Path]:
        """The checkpoint folders with a position, oldest first (by step, then the ``-n`` suffix
        that a second save at the same step gets)."""
        if not self.root.is_dir():
            return []
        folders = [path for path in self.root.iterdir()
                   if _FOLDER_NAME.fullmatch(path.name) and (path / POSITION_FILE).is_file()]
        return sorted(folders, key=lambda path: [int(n) for n in path.name.split("-")[1:]])

    def _broken_pointer(self, what: str) -> CheckpointError:
        complete = [path.name for path in self._complete_folders()]
        way_on = (f"write the name of a complete checkpoint folder ({', '.join(complete)}) into "
                  f"{self.root / LATEST_FILE}, or start a new run" if complete else "start a new run")
        return CheckpointError(f"{what}: it was edited or damaged by hand. To go on, {way_on}.")

    def position(self, folder: Path | None = None) -> dict | None:
        """The run position saved with checkpoint ``folder`` (default: the latest one)."""
        folder = folder or self.latest()
        if folder is None:
            return None
        path = folder / POSITION_FILE
        try:
            position = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
            raise CheckpointError(f"{path} cannot be read ({error}); the checkpoint is damaged. "
                                  "Start a new run.") from error
        wrong = _wrong_in_position(position)
        if wrong:
            raise CheckpointError(f"{path} is not a run position (missing or wrong: "
                                  f"{', '.join(wrong)}); the checkpoint is damaged. Start a new run.")
        return position

    def save(self, write_state: Callable[[Path], None], position: dict) -> Path:
        """Write a checkpoint (the chapter's files via ``write_state(folder)``, then ``position``)
        and make it the latest; the previous one is removed only after that."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        previous = self.latest_or_none()  # before the rename: with no pointer, the newest folder
        staging = self.root / f"{_STAGING_PREFIX}{os.getpid()}"
        try:
            staging.mkdir()
            write_state(staging)
            atomic_write_json(staging / POSITION_FILE, position)
            _fsync_tree(staging)
            final = self._free_name(f"step-{int(position['global_step']):08d}")
            os.rename(staging, final)
            fsync_dir(self.root)  # the folder's name is on disk before `latest` names it
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        atomic_write_bytes(self.root / LATEST_FILE, final.name.encode("utf-8"))
        if previous is not None and previous != final:
            shutil.rmtree(previous, ignore_errors=True)
        return final

    def latest_or_none(self) -> Path | None:
        """:meth:`latest`, or None where the pointer is missing or broken."""
        try:
            return self.latest()
        except CheckpointError:
            return None

    def _free_name(self, name: str) -> Path:
        for n in itertools.count():
            candidate = self.root / (name if n == 0 else f"{name}-{n}")
            if not candidate.exists():
                return candidate
        raise AssertionError("unreachable")

    def anything_saved(self) -> bool:
        """Whether a save ever completed here: a pointer (even a damaged one) or a checkpoint folder."""
        return self.root.is_dir() and ((self.root / LATEST_FILE).exists() or any(
            _FOLDER_NAME.fullmatch(path.name) for path in self.root.iterdir()))

    def _remove_leftovers(self) -> None:
        """Staging folders of interrupted saves, and checkpoint folders no pointer names (never
        with a damaged pointer: which folder to keep is then unknown, so that raises). Anything
        else in the folder (a copy of a checkpoint under another name) is the user's: kept."""
        keep = self.latest()
        for path in self.root.iterdir():
            ours = path.name.startswith(_STAGING_PREFIX) or _FOLDER_NAME.fullmatch(path.name)
            if ours and path.is_dir() and path != keep:
                shutil.rmtree(path, ignore_errors=True)
