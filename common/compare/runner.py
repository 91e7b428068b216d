"""Running the comparison: each chapter (and the baselines) as a subprocess, with one budget.

The chapters stay independent: each entry is a command line, exactly what a reader would type. The
runner keeps ``compare.json`` in the report folder (which run directory each entry trained into and
how far it got), so a comparison that was interrupted, or that failed in one entry, is continued by
running the same command again: finished runs are skipped, unfinished ones resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from common import runs
from common.checkpoints import CheckpointStore
from common.errors import ConfigError

STATE_FILE = "compare.json"
INTERRUPTED = "interrupted (Ctrl-C): run the same command again to continue"
NATIVE_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following "
                        r"instructions)")
"""TensorFlow's and XLA's C++ log lines (cuda probes, CPU features): kept in the log file, not echoed."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of the comparison: a method trained by one chapter (or a baseline)."""

    name: str  # "simclr", "mocov2", "byol-jax", "supervised"
    title: str  # "SimCLR / PyTorch"
    package: str  # "pytorch_simclr"
    train_module: str = "train"
    extra: tuple[str, ...] = ()  # the chapter's own flags (e.g. --backend jax)

    def train_command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", f"{self.package}.{self.train_module}", *self.extra, *args]

    def evaluate_command(self, run_dir: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", f"{self.package}.evaluate", str(run_dir), *args]


KERAS_BACKENDS = ("tensorflow", "jax", "torch")
SIMCLR = Entry("simclr", "SimCLR / PyTorch", "pytorch_simclr")
MOCO = Entry("mocov2", "MoCo v2 / TensorFlow", "tensorflow_moco")
SUPERVISED = Entry("supervised", "Supervised / PyTorch", "pytorch_simclr", "supervised")


def byol(backend: str) -> Entry:
    return Entry(f"byol-{backend}", f"BYOL / Keras ({backend})", "keras_byol",
                 extra=("--backend", backend))


def entries(keras_backends: list[str], supervised: bool = True) -> list[Entry]:
    """The comparison's lines: SimCLR, MoCo v2, BYOL on each chosen Keras backend, supervised."""
    return [SIMCLR, MOCO, *(byol(b) for b in keras_backends), *([SUPERVISED] if supervised else [])]


class State:
    """``compare.json``: per entry its run directory and status, written atomically after each change."""

    def __init__(self, folder: Path):
        self.path = folder / STATE_FILE
        self.data = {"entries": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError as error:
                raise ConfigError(f"{self.path} cannot be read ({error}): mend it, or give another "
                                  "--output-dir (the runs in its runs/ folder stay; --runs reports "
                                  "them)") from error
            entries = self.data.get("entries") if isinstance(self.data, dict) else None
            if not isinstance(entries, dict):
                raise ConfigError(f"{self.path} holds no comparison (no \"entries\"): give another "
                                  "--output-dir")

    def entry(self, name: str) -> dict:
        return self.data["entries"].setdefault(name, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_json(self.path, self.data)

    def claim(self, request: list[str], code: str) -> None:
        """Record the training flags of this comparison and the :func:`code_digest` it runs, or
        refuse a folder that holds another one (continuing its runs would mix two budgets, seeds,
        data sets or versions of the code in one table)."""
        new = "request" not in self.data
        held = self.data.setdefault("request", request)
        if held != request:
            raise ConfigError(
                f"{self.path.parent} holds a comparison trained with `{' '.join(held)}`, not "
                f"`{' '.join(request)}`: rerun with its flags to continue it, or give another "
                f"--output-dir (or delete that folder to start over)")
        if self.data.setdefault("code", code if new else None) != code:
            raise ConfigError(
                f"{self.path.parent} holds a comparison trained by other code (a file in common/ "
                "or in a chapter changed since, or the folder predates this check): continuing it "
                "would put two versions in one table. Give another --output-dir, or delete that "
                "folder to start over")


def code_digest(entries: list[Entry]) -> str:
    """A SHA-256 of the Python files that train and evaluate the ``entries``: ``common/`` (but its
    ``compare/``, which only runs and reports them) and each entry's package, found where its
    subprocess will import it from (this process's folder and ``PYTHONPATH`` first)."""
    search = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
              *sys.path]
    common = Path(runs.__file__).parent
    folders = {common}
    for entry in entries:
        spec = importlib.machinery.PathFinder.find_spec(entry.package, search)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"the package {entry.package} cannot be found: run the comparison "
                              "from the repository's root")
        folders.add(Path(spec.submodule_search_locations[0]))
    digest = hashlib.sha256()
    for folder in sorted(folders):
        for path in sorted(folder.rglob("*.py")):
            if path.is_relative_to(common / "compare"):
                continue
            digest.update(f"{folder.name}/{path.relative_to(folder)}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_stage(command: list[str], log: Path) -> tuple[int, str]:
    """Run ``command``, its output shown live and kept in ``log``; (exit code, :func:`failure_line`).

    Ctrl-C reaches the child too (same process group): it saves its checkpoint and exits 130. Here
    the Ctrl-C is only noted while the child finishes, so its last words (where it saved, how to
    continue) are shown and logged like every other line; the KeyboardInterrupt is raised once the
    child has exited. (Raised at once, it could land between reading a line and logging it, and
    lose that line.) A second Ctrl-C stops waiting for the child. A SIGTERM sent to this process
    alone (``kill``, a job scheduler) is passed on to the child and then handled as that Ctrl-C, so
    the comparison records the run it was training instead of leaving it to finish unrecorded (one
    that arrives while the child is being started is passed on once it has started). The
    child runs unbuffered, so its lines arrive as it prints them, and a child killed outright has
    logged everything up to then.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    process: subprocess.Popen | None = None  # the handlers come first: no signal goes unseen
    stopping = term_pending = False

    def stop(signum, frame):
        nonlocal stopping, term_pending
        if stopping:
            raise KeyboardInterrupt
        stopping = True
        if signum == signal.SIGTERM and process is None:
            term_pending = True  # no child yet: passed on as soon as Popen has returned it
        elif signum == signal.SIGTERM:
            process.send_signal(signal.SIGTERM)  # the chapter saves its checkpoint, as on Ctrl-C

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if term_pending:
                process.send_signal(signal.SIGTERM)
            lines = []
            for line in process.stdout:
                handle.write(line)
                lines.append(line.rstrip("\n"))
                if NATIVE_LOG.match(line):
                    continue
                if not line.startswith(("  ", "epoch ")) or "kNN" in line:  # skip the config dump
                    print(f"    {line.rstrip()}", flush=True)
            code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopping:
        raise KeyboardInterrupt
    return code, failure_line(lines, code)


def failure_line(lines: list[str], code: int) -> str:
    """What the report says of a stage that failed: the program's own ``error:`` line; for a bug
    (``common.errors.run_main``'s "unexpected" line) the exception line of the traceback printed
    above it; for a program that printed no ``error:`` line, its exit code, or the signal that
    killed it (e.g. the kernel's out-of-memory SIGKILL), and its last line."""
    errors = [index for index, line in enumerate(lines)
              if line.startswith("error:") or USAGE_ERROR.match(line)]
    if errors:
        index = errors[-1]
        if "stopped on an unexpected" in lines[index] and index > 0:
            return f"error: {lines[index - 1].strip()} (a bug: its traceback is in the log)"
        usage = USAGE_ERROR.match(lines[index])
        return f"error: {usage.group(1)}" if usage else lines[index]
    try:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    except ValueError:
        how = f"exit code {code}"
    # (run_stage reads text with universal newlines: a progress bar's every "\r" state is a line)
    last = lines[-1].strip() if lines else ""
    return f"{how}; its last line: {last[:200]}" if last else how


USAGE_ERROR = re.compile(r"^python -m [\w.]+: error: (.*)$")
"""argparse's usage error (``parser.error``), e.g. a chapter's impossible configuration:
``python -m pytorch_simclr.train: error: --batch-size must be at least 2 ...``."""


def new_run_dir(before: set[Path], runs_root: Path) -> Path | None:
    """The run directory a training command created (the one that was not there before it)."""
    created = sorted(set(runs_root.glob("*")) - before) if runs_root.is_dir() else []
    return created[-1] if created else None


def train(entry: Entry, state: State, runs_root: Path, flags: list[str], logs: Path) -> dict:
    """Train (or resume, or skip) one entry; its state record.

    A run with a checkpoint is resumed; one that failed before its first checkpoint starts again in
    a new run directory, which the record then names. The record is saved on Ctrl-C too (the
    child saves its checkpoint and exits, then the KeyboardInterrupt is raised again here), so the
    next call resumes the interrupted run instead of starting another.
    """
    record = state.entry(entry.name)
    run_dir = Path(record["run_dir"]) if record.get("run_dir") else None
    if run_dir is not None and (run_dir / runs.SUMMARY_FILE).is_file():
        if record.get("status") == "failed":  # trained by an earlier call, evaluation pending
            record.update(status="trained", error=None)
        return record
    resuming = run_dir is not None and CheckpointStore(run_dir).latest_or_none() is not None
    if resuming:
        command = entry.train_command("--resume", str(run_dir))
    else:
        command = entry.train_command(*flags, "--output-dir", str(runs_root))
    before = set(runs_root.glob("*")) if runs_root.is_dir() else set()
    interrupted = False
    try:
        code, last = run_stage(command, logs / f"{entry.name}.log")
    except KeyboardInterrupt:
        interrupted, code, last = True, 130, INTERRUPTED
    if not resuming:
        run_dir = new_run_dir(before, runs_root)
    record.update(run_dir=str(run_dir) if run_dir else None)
    if code != 0 or run_dir is None or not (run_dir / runs.SUMMARY_FILE).is_file():
        record.update(status="failed", error=last)
    else:
        record.update(status="trained", error=None)
    state.save()
    if interrupted:
        raise KeyboardInterrupt
    return record


BASELINES = {  # name -> (title, the evaluate flags that make it from a run's encoder, their file,
    #                      the report's column of each encoder's lift over it)
    "random-init": ("random-init encoder", ["--random-init"], "evaluation-random-init.json",
                    "lift over random init"),
    "random-init-bn": ("random-init encoder, BN statistics of the data",
                       ["--random-init", "--recalibrate-bn"],
                       "evaluation-random-init-recalibrated-bn.json", "lift over random init, data BN"),
    "pixels": ("the pixels themselves (no encoder)", ["--pixels"], "evaluation-pixels.json",
               "lift over pixels"),
}  # the files are the ones `<chapter>.evaluate RUN_DIR` writes with those flags


def scored_last_step(evaluation: dict, summary: dict | None) -> bool:
    """Whether an ``evaluation.json`` scored its run's last step (``summary.json``'s ``steps``): a
    run trained on after it was evaluated (``train --resume RUN --epochs N`` by hand) must be
    evaluated again. True for a run that has not finished (no summary) and for an evaluation that
    does not say which checkpoint it scored."""
    checkpoint = evaluation.get("checkpoint")
    return summary is None or checkpoint is None or checkpoint.get("global_step") == summary.get("steps")


def of_final_encoder(evaluation: Path, run_dir: Path) -> bool:
    """:func:`scored_last_step` of the files."""
    summary = run_dir / runs.SUMMARY_FILE
    return scored_last_step(json.loads(evaluation.read_text()),
                            json.loads(summary.read_text()) if summary.is_file() else None)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale(record: dict, flags: list[str], baseline: bool) -> str | None:
    """Why the evaluation a state ``record`` names must be made again, or None if it can be reused
    (and reported): its file is gone, it was made with other ``flags`` (the caps on its images), its
    file was rewritten since (e.g. by ``<chapter>.evaluate RUN_DIR --max-train N`` by hand), or,
    for a trained entry (not a ``baseline``), it scored an earlier checkpoint than the run's last."""
    path = Path(record["evaluation"])
    made = record.get("evaluation_digest")  # None in a state written before digests were kept
    if not path.is_file():
        return f"its evaluation file {path} is gone"
    if record.get("eval_flags") != flags:
        return "evaluated with other --eval-max-train/--eval-max-test"
    if made not in (None, file_digest(path)):
        return f"{path} was rewritten since the comparison evaluated it (by hand?)"
    if not baseline and not of_final_encoder(path, Path(record["run_dir"])):
        return "evaluated from an earlier checkpoint than the run's last (it trained on since)"
    return None


def evaluate(entry: Entry, state: State, flags: list[str], logs: Path, baseline: str | None = None) -> dict:
    """Evaluate a trained entry, or one of the ``BASELINES`` on its run's data and protocol (its
    encoder freshly initialised, or the pixels), with common/evaluate.

    An evaluation made earlier is reused unless it is :func:`stale` (made with other ``flags``,
    rewritten since, or of an earlier checkpoint): otherwise it is made again, so one table never
    mixes two protocols.
    """
    record = state.entry(baseline or entry.name)
    source = state.entry(entry.name)
    run_dir = Path(source["run_dir"])
    output = run_dir / (BASELINES[baseline][2] if baseline else runs.EVALUATION_FILE)
    if record.get("evaluation") and stale(record, flags, baseline is not None) is None:
        return record
    args = [*flags, "--save-features", "--output", str(output), *(BASELINES[baseline][1] if baseline else [])]
    code, last = run_stage(entry.evaluate_command(run_dir, *args), logs / f"{entry.name}-evaluate.log")
    if code != 0 or not output.is_file():
        record.update(evaluation=None, status="failed", error=last)
    else:
        record.update(evaluation=str(output), eval_flags=flags, evaluation_digest=file_digest(output),
                      status="trained" if baseline else "evaluated", run_dir=str(run_dir), error=None)
    state.save()
    return record
