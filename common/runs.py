"""The run directory: what every chapter's ``train.py`` writes and every tool reads.

A run directory holds::

    config.json       the run's configuration + "framework", "method", "created" (UTC, ISO 8601),
                      "library_versions"; after resumes also "resumes" (when, which keys changed)
    metrics.jsonl     one JSON object per line, appended and fsync'ed as training goes
    summary.json      final results (written atomically, at the end: may be missing)
    evaluation.json   what ``<chapter>.evaluate`` measured (EVALUATION_FILE)
    checkpoints/      checkpoints (CHECKPOINTS_DIR; layout in common/checkpoints.py)
    tensorboard/      TensorBoard events of the metrics rows, common/tensorboard.py (TENSORBOARD_DIR)
    .lock             held (flock) by the process training the run (LOCK_FILE)

Every metrics row has the keys of :data:`METRIC_KEYS` (None where a value does not apply) plus any
extras. JSON has no NaN or infinity: such floats are written as ``null`` (a diverged loss shows up
as a missing value, and the file stays readable by every JSON parser).

Crash safety: JSON files are replaced atomically (:func:`atomic_write_json`), so a reader sees the
old or the new file, never half of one; ``metrics.jsonl`` is append-only, so a kill can at worst cut
its last line, which :func:`read_run` drops and reports. A resumed run first drops the rows written
after its checkpoint (a kill, a full disk), so no step is ever listed twice.
"""

import dataclasses
import datetime
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
EVALUATION_FILE = "evaluation.json"
ENCODER_FILE = "encoder.safetensors"
RANDOM_INIT_ENCODER_FILE = "encoder-random-init.safetensors"  # the encoder before training
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
TRAINING_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, ENCODER_FILE, RANDOM_INIT_ENCODER_FILE,
                  CHECKPOINTS_DIR, TENSORBOARD_DIR, LOCK_FILE)
"""What training and the encoder exports own in a run directory: no evaluation output goes there."""

ROW_KINDS = ("step", "epoch", "init")
"""``step``: one optimisation step's row; ``epoch``: an epoch's summary (mean loss, kNN, ...);
``init``: the random-init encoder's kNN, before any step (epoch 0, step 0)."""

METRIC_KEYS = (
    "framework",
    "method",
    "kind",
    "epoch",
    "step",
    "loss",
    "lr",
    "images_per_sec",
    "knn_top1",
    "wall_s",
)
"""Keys of every metrics row. ``wall_s``: seconds of training so far, across resumes (the clock is
the run's position, common/session.py)."""

DEFAULT_PACKAGES = (
    "numpy",
    "torch",
    "torchvision",
    "tensorflow",
    "keras",
    "jax",
    "jaxlib",
    "scikit-learn",
    "safetensors",
)

BOOKKEEPING_KEYS = ("framework", "method", "created", "library_versions", "resumes")


class RunExistsError(FileExistsError):
    """The directory already holds a run and ``resume`` was not asked for."""


def library_versions(packages=DEFAULT_PACKAGES) -> dict:
    """``{"python": ..., package: version or None}`` from installed metadata.

    Uses :mod:`importlib.metadata`, which reads the installed distributions' metadata files and
    never imports the packages themselves (so asking for torch's version does not load torch).
    """
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def to_json_safe(value):
    """``value`` with NaN/inf floats as None, NumPy scalars/arrays as Python ones, paths as str."""
    if isinstance(value, dict):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):
        return to_json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(
        f"cannot write {type(value).__name__} {value!r} to JSON; convert it to a number, string, "
        "list or dict first."
    )


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory, are flushed and fsync'ed, and the
    temporary file is renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows).
    If anything fails, the temporary file is removed and the old ``path`` is left untouched.
    The file gets the permissions ``open()`` would give it (0666 less the umask), or keeps those
    of the file it replaces: ``tempfile``'s private 0600 would hide a shared run from its group.
    The directory is fsync'ed after the rename, so that the rename itself survives a power loss.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    keep_mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else None
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
            if keep_mode is not None:
                os.fchmod(handle.fileno(), keep_mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder) -> None:
    """Make the renames into ``folder`` durable (POSIX: a rename lives in the directory's data)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_json(path, obj) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON (NaN/inf written as null)."""
    text = json.dumps(to_json_safe(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8 (UnicodeDecodeError)
        raise DamagedRunError(f"{path} is not valid JSON ({error}): the file is damaged (cut by a "
                              "crash, or edited by hand); restore it, or start a new run") from error
    if not isinstance(data, dict):
        raise DamagedRunError(f"{path} holds a JSON {type(data).__name__}, not an object: the file "
                              "is damaged (edited by hand); restore it, or start a new run")
    return data


class DamagedRunError(UserError, ValueError):
    """A run directory's JSON file cannot be read."""


class NotARunError(UserError, FileNotFoundError):
    """A path that is not a run directory (or a folder of them): its message says what to pass."""


class RunBusyError(UserError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock`` for as long as a process trains the run.

    The kernel releases the lock when its process dies (even by SIGKILL), so a killed run never
    leaves a stale lock behind; the pid written into the file only serves the message.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunBusyError(
                f"{self.path.parent} is being trained by another process (pid {holder}); wait for "
                "it to finish or stop it (Ctrl-C saves a checkpoint), then --resume"
            ) from None
        except OSError as error:  # ENOLCK: a network file system without a lock service
            handle.close()
            raise RunBusyError(
                f"cannot lock {self.path} ({error.strerror or error}): its file system does not "
                "support locks (an NFS mount without a lock service?); put the runs on a local "
                "disk (--output-dir)") from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()


class RunWriter:
    """Creates a run directory and appends to it; use as a context manager.

    ``RunWriter(run_dir, config, framework, method)`` makes the directory and writes
    ``config.json``. ``config`` may already hold the bookkeeping keys (say, read back from a
    ``config.json`` to resume): "framework" and "method" must then agree with the arguments, the
    others are replaced by the writer's own.

    A directory that already holds a run is refused (:class:`RunExistsError`) unless
    ``resume=True``: then framework and method must match, ``config`` replaces the stored one (the
    keys whose values changed, e.g. a longer ``epochs``, are recorded under "resumes"), the rows
    for which ``keep_row`` is False (rows written after the checkpoint the run resumes from) and a
    last line cut by a crash are removed from ``metrics.jsonl`` (a line damaged by hand is kept for
    its owner to restore), and new rows are appended after them.
    """

    def __init__(self, run_dir, config: dict, framework: str, method: str, *, resume=False,
                 keep_row: Callable[[dict], bool] | None = None):
        self.run_dir = Path(run_dir)
        self.framework, self.method = framework, method
        for key, value in (("framework", framework), ("method", method)):
            if config.get(key, value) != value:
                raise ValueError(f"config[{key!r}] = {config[key]!r} contradicts {key}={value!r}.")
        # The writer owns the bookkeeping keys; a config read back from a config.json has them.
        config = {key: value for key, value in config.items() if key not in BOOKKEEPING_KEYS}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / CONFIG_FILE
        metrics_path = self.run_dir / METRICS_FILE
        if config_path.exists():
            if not resume:
                raise RunExistsError(
                    f"{self.run_dir} already holds a run ({CONFIG_FILE}); pass resume=True to "
                    "continue it, or choose a new run directory."
                )
            self._record_resume(config_path, _read_json(config_path), config)
            _rewrite_metrics(metrics_path, keep_row or (lambda row: True))
        else:
            bookkeeping = {
                "framework": framework,
                "method": method,
                "created": _now(),
                "library_versions": library_versions(),
            }
            atomic_write_json(config_path, {**config, **bookkeeping})
        # Unbuffered: a row that fails to go out (a full disk) is not left in a buffer that every
        # later write, and close(), would fail on again.
        self._metrics = open(metrics_path, "ab", buffering=0)

    def _record_resume(self, config_path: Path, stored: dict, config: dict) -> None:
        if (stored.get("framework"), stored.get("method")) != (self.framework, self.method):
            raise ValueError(
                f"cannot resume {self.run_dir}: it is a {stored.get('framework')}/"
                f"{stored.get('method')} run, not {self.framework}/{self.method}."
            )
        keys = (set(stored) | set(config)) - set(BOOKKEEPING_KEYS)
        new = to_json_safe(config)
        changed = {
            key: {"old": stored.get(key), "new": new.get(key)}
            for key in sorted(keys)
            if stored.get(key) != new.get(key)
        }
        resumes = [*stored.get("resumes", []), {"at": _now(), "changed": changed}]
        bookkeeping = {key: value for key, value in stored.items() if key in BOOKKEEPING_KEYS}
        atomic_write_json(config_path, {**new, **bookkeeping, "resumes": resumes})

    def log(self, *, kind: str, epoch: int, step: int, wall_s: float, **metrics) -> None:
        """Append one metrics row of ``kind`` (one of :data:`ROW_KINDS`), flushed and fsync'ed."""
        clashes = {"framework", "method"} & set(metrics)
        if clashes:
            raise ValueError(f"{sorted(clashes)} are filled in by the RunWriter; do not pass them.")
        if kind not in ROW_KINDS:
            raise ValueError(f"kind must be one of {ROW_KINDS}, got {kind!r}")
        row = dict.fromkeys(METRIC_KEYS)
        row.update(framework=self.framework, method=self.method, kind=kind, epoch=epoch, step=step,
                   wall_s=round(float(wall_s), 3), **metrics)
        line = memoryview((json.dumps(to_json_safe(row), allow_nan=False) + "\n").encode("utf-8"))
        while line:  # a raw write may take part of it
            line = line[self._metrics.write(line):]
        os.fsync(self._metrics.fileno())

    def write_summary(self, summary: dict) -> None:
        """Write ``summary.json`` atomically (NaN/inf as null)."""
        atomic_write_json(self.run_dir / SUMMARY_FILE, summary)

    def close(self) -> None:
        self._metrics.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _parse_row(line: str) -> dict | None:
    """A metrics row, or None for a line that is not one (cut, or damaged by hand): every row the
    RunWriter writes is a JSON object with an integer ``epoch`` and ``step``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    whole = isinstance(row, dict) and all(
        isinstance(row.get(key), int) and not isinstance(row.get(key), bool) for key in ("epoch", "step"))
    return row if whole else None


def _rewrite_metrics(metrics_path: Path, keep_row: Callable[[dict], bool]) -> None:
    """Keep the rows of ``metrics.jsonl`` that ``keep_row`` accepts (atomically).

    A last line that is not a row (a fragment: a crash mid-write) is dropped; a trailing row that is
    whole but lost its newline is kept. A line before it that is not a row (damaged by hand) is kept
    as it is, for its owner to restore (:func:`read_run` skips it with a warning). Appended rows
    then start on a line of their own.
    """
    if not metrics_path.exists():
        return
    lines = metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = [line for number, line in enumerate(lines, start=1)
            if ((row := _parse_row(line)) is None and number < len(lines))
            or (row is not None and keep_row(row))]
    text = "".join(line + "\n" for line in kept)
    if text != metrics_path.read_text(encoding="utf-8", errors="replace"):
        atomic_write_bytes(metrics_path, text.encode("utf-8"))


@dataclasses.dataclass
class Run:
    """One run directory as read back: ``truncated`` says a cut last metrics line was dropped."""

    path: Path
    config: dict
    metrics: list[dict]
    summary: dict | None
    truncated: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)


def read_run(run_dir) -> Run:
    """Read a run directory, tolerating a run that was killed.

    A cut (unparseable) last line of ``metrics.jsonl`` is dropped and reported in ``warnings``
    with ``truncated=True``; an unparseable line elsewhere is skipped with a warning. A missing
    ``metrics.jsonl`` or ``summary.json`` is fine (a run that logged nothing / has not finished).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise NotARunError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass the directory a chapter's "
            "train.py wrote, e.g. runs/<name>"
        )
    run = Run(path=run_dir, config=_read_json(config_path), metrics=[], summary=None)
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        lines = metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            row = _parse_row(line)
            if row is not None:
                run.metrics.append(row)
            elif number == len(lines):
                run.truncated = True
                run.warnings.append(
                    f"{METRICS_FILE}: last line {number} is cut (run killed mid-write); dropped"
                )
            else:
                run.warnings.append(f"{METRICS_FILE}: line {number} is not a metrics row (a JSON "
                                    "object with an integer epoch and step); skipped")
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file():
        try:
            run.summary = _read_json(summary_path)
        except ValueError as error:
            run.warnings.append(str(error))
    return run


def list_runs(root) -> list[Run]:
    """Every run directory at or below ``root`` (a directory with a ``config.json``), by path."""
    root = Path(root)
    if not root.is_dir():
        raise NotARunError(f"{root} is not a directory; pass the folder that holds the runs")
    return [read_run(path.parent) for path in sorted(root.rglob(CONFIG_FILE))]
