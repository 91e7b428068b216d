"""The run policy every chapter's ``train.py`` follows, written once: a :class:`TrainingSession`.

A chapter supplies the framework code -- its model, its training step, the epoch loop in its own
idiom, and two functions that write and read its native checkpoint files in a folder. The session
supplies everything else, identically for every framework:

- **new run or resume**: the explicit decision of ``cli.RunRequest``; on resume, the checks (is
  there a checkpoint? has the run finished? is ``--data-dir`` still the same data?) and the rules
  for the flags that may change (``cli.RESUMABLE``), among them the learning-rate rule of
  ``--epochs`` (``LrSchedule.continued``: the rate never jumps);
- **the position**: epoch, step in epoch, global step and the one wall clock, saved with every
  checkpoint (:class:`RunPosition`);
- **the data stream**: which images and view parameters each step gets (``common/stream.py``);
- **when things happen**: the metrics rows (also as TensorBoard scalars), the progress bar, the kNN
  monitor schedule, the epoch summary line, the collapse warning, the checkpoint at the end of every
  epoch, ``summary.json``;
- **failures**: a NaN/inf loss, non-finite weights, a full disk, Ctrl-C or SIGTERM (deferred to the
  end of the step, ``common/interrupts.py``), a second process on the same run (a lock), each with
  one message that says what was kept and the exact command to go on.

The loop a chapter writes (PyTorch shown; the TensorFlow and Keras chapters read the same)::

    session = TrainingSession(CHAPTER, request, images=images, pair_spec=spec)
    ...build the optimiser with session.schedule; session.restore(load_state, import_encoder) ...
    with session.training(save_state, weights_finite, parameters=766_352, detail="device cpu"):
        session.initial_knn(knn)
        for epoch in session.epochs():
            for step, batch in session.steps(epoch):
                loss = train_step(images[batch.indices], batch.view1, batch.view2)
                session.step_done(loss, lr)
            session.end_epoch(knn, representation=features_of_some_training_images)
        return session.finish()

Guarantees (tested in tests/test_session.py with a tiny NumPy chapter): an interrupted and resumed
run takes exactly the steps, the data and the rates of the uninterrupted one; no checkpoint ever
holds a half-done step or non-finite weights; no metrics row is listed twice; a failure before the
first checkpoint leaves no run directory behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import cli, runs
from common.chapter import Chapter
from common.checkpoints import CheckpointError, CheckpointStore
from common.errors import ConfigError, Interrupted, TrainingError, brief
from common.evaluate.diagnostics import COLLAPSE_RATIO_WARNING, collapse_ratio
from common.interrupts import InterruptRequest
from common.schedules import LrSchedule, scaled_lr
from common.stream import DataStream, StepData, fingerprint
from common.tensorboard import ScalarWriter

SUMMARY_KEYS = ("framework", "method", "recipe", "epochs", "steps", "final_loss", "knn_top1_init",
                "knn_top1", "wall_s", "train_s", "images_per_sec", "peak_rss_mib",
                "trainable_parameters")
"""The keys of every ``summary.json`` (None where a value does not apply)."""

_ROW_PLACE = {"framework", "method", "kind", "epoch", "step", "wall_s"}
"""The keys of a metrics row that place it; the rest are the values ``_log`` gives TensorBoard."""

COMPILE_STEPS = 2
"""The first steps of every process, left out of ``images_per_sec``: they trace and compile the
step (``tf.function``, XLA, ``jax.jit``, cuDNN's autotuning), a one-off cost that would otherwise
count against the frameworks that compile, and more so the shorter the run."""


@dataclasses.dataclass
class RunPosition:
    """Where a run stands; saved with every checkpoint, so ``--resume`` goes on at the exact step."""

    epoch: int = 0  # epochs completed, end-of-epoch bookkeeping included
    step_in_epoch: int = 0  # steps done in epoch ``epoch`` (== steps per epoch: bookkeeping pending)
    global_step: int = 0
    wall_s: float = 0.0  # seconds of training so far, across resumes: the run's one clock
    train_s: float = 0.0  # of which inside training steps
    steady_steps: int = 0  # the steps after each process's first COMPILE_STEPS (for images/s)
    steady_s: float = 0.0  # and their seconds
    peak_rss_mib: float = 0.0  # the largest resident memory of the run's processes so far (rank 0)
    knn_init: float | None = None
    knn_top1: float | None = None  # the latest kNN monitor result
    epoch_loss_sum: float = 0.0  # over the steps of the current epoch
    epoch_loss_count: int = 0
    last_epoch_loss: float | None = None
    schedule: dict = dataclasses.field(default_factory=dict)  # LrSchedule.to_dict()
    lr: float | None = None  # the --lr that schedule is for (None: saved before this was recorded)
    data: dict = dataclasses.field(default_factory=dict)  # what the run trains on (checked on resume)
    layout: dict = dataclasses.field(default_factory=dict)  # its processes and replicas (checked too)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> RunPosition:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in names})


def _keep_rows_up_to(position: RunPosition) -> Callable[[dict], bool]:
    """Which metrics rows a run resumed at ``position`` keeps: those written before its checkpoint."""

    def keep(row: dict) -> bool:
        kind = row.get("kind")
        if kind == "step":
            return row["step"] <= position.global_step
        if kind == "epoch":
            return row["epoch"] <= position.epoch
        if kind == "init":
            return position.knn_init is not None
        return True

    return keep


def _layout_text(layout: dict) -> str:
    """``{"processes": 2, "replicas": 4}`` -> "2 processes and 4 replicas"."""
    processes, replicas = layout["processes"], layout["replicas"]
    return f"{processes} process{'es' * (processes > 1)} and {replicas} replica{'s' * (replicas > 1)}"


class TrainingSession:
    """One run of one chapter: the policy half of ``train.py`` (module docstring).

    ``images`` are the training images (uint8 NHWC) the stream indexes; the rate is the
    configuration's (``config["lr"]``, batch-scaled by its ``lr_scaling``). In a data-parallel run
    every process makes a session with its ``rank`` and ``world_size``; ``agree(flag)`` must return
    True on every rank when ``flag`` is True on any (an all-reduce of one bool; the default, for one
    process, returns ``flag``). ``replicas`` counts the model's copies over all processes (several
    devices in one process: ``tf.distribute``, Keras' data parallelism; default one per process).
    Only rank 0 writes the run directory, its metrics rows also as TensorBoard scalars
    (``common/tensorboard.py``).
    """

    def __init__(self, chapter: Chapter, request: cli.RunRequest, *, images: np.ndarray, pair_spec,
                 rank: int = 0, world_size: int = 1, replicas: int | None = None,
                 agree: Callable[[bool], bool] | None = None):
        self.chapter, self.request, self.config = chapter, request, request.config
        self.rank, self.world_size = rank, world_size
        self.layout = {"processes": world_size, "replicas": replicas or world_size}
        self.is_main = rank == 0
        self._agree = agree or (lambda flag: flag)
        config = self.config
        if config["batch_size"] % world_size:
            raise ConfigError(f"--batch-size {config['batch_size']} must be divisible by the number "
                              f"of processes ({world_size})")
        try:
            self.stream = DataStream(len(images), tuple(images.shape[1:3]), config["batch_size"],
                                     pair_spec, config["seed"], config["max_steps_per_epoch"])
            steps = self.stream.steps_per_epoch
        except ValueError as error:
            raise ConfigError(str(error)) from error
        self.steps_per_epoch = steps
        data = {"num_images": len(images), "steps_per_epoch": steps, "fingerprint": fingerprint(images)}
        total, warmup = steps * config["epochs"], round(config["warmup_epochs"] * steps)
        if request.resume is None:
            self.run_dir = cli.new_run_dir(config, chapter.framework, chapter.method)
            schedule = LrSchedule(scaled_lr(config["lr"], config["batch_size"], config["lr_scaling"]),
                                  total, warmup)
            self.position = RunPosition(schedule=schedule.to_dict(), data=data, lr=config["lr"],
                                        layout=self.layout)
        else:
            self.run_dir = request.resume
            self.position = self._resumed_position(data, total)
        self.schedule = LrSchedule.from_dict(self.position.schedule)
        self.store = CheckpointStore(self.run_dir)
        self._lock = runs.RunLock(self.run_dir) if self.is_main else None
        self._writer: runs.RunWriter | None = None
        self._tensorboard: ScalarWriter | None = None
        self._interrupts = InterruptRequest()
        self._in_step = False
        self._steps_in_process = 0
        self._bar = None
        self._created_run_dir = False
        self._save_state = self._weights_finite = None

    # -- resume ----------------------------------------------------------------------------------

    def _resumed_position(self, data: dict, total_steps: int) -> RunPosition:
        """The saved position, checked against the request, with its schedule carried on."""
        run_dir, config = self.run_dir, self.config
        busy = None
        if self.is_main:  # refuse a run another process is training before reading its files
            try:
                with runs.RunLock(run_dir):
                    pass
            except runs.RunBusyError as error:
                busy = error
        if self._agree(busy is not None):  # voted, as in __enter__: the others would wait for it
            raise busy or TrainingError(self._see_process_0("process 0 found the run busy"))
        try:
            saved = CheckpointStore(run_dir).position()
        except CheckpointError as error:
            raise TrainingError(str(error)) from error
        if saved is None:
            raise TrainingError(f"--resume {run_dir}: the run has no checkpoint yet (it was killed "
                                f"before its first one); start a new run and delete {run_dir}")
        position = RunPosition.from_dict(saved)
        if position.data.get("fingerprint") != data["fingerprint"] or position.data != data:
            raise ConfigError(
                f"--resume {run_dir}: the training images differ from the ones the run started with "
                f"({position.data.get('num_images')} images then, {data['num_images']} now; another "
                "--data-dir or dataset?). Resume with the same data, or start a new run."
            )
        if position.epoch >= config["epochs"] and "epochs" not in self.request.changed:
            if (run_dir / runs.SUMMARY_FILE).exists():
                raise ConfigError(f"the run in {run_dir} has finished its {config['epochs']} epochs; "
                                  "start a new run with a larger --epochs to train longer")
            return position  # stopped after its last checkpoint: only finish() is left to do
        if position.layout and position.layout != self.layout:
            # Each replica's share of the batch sets its BatchNorm statistics (and, in PyTorch, its
            # random views): on another layout the same steps would compute something else.
            raise ConfigError(
                f"--resume {run_dir}: the run trained with {_layout_text(position.layout)}, this "
                f"resume has {_layout_text(self.layout)}. Each batch would be split differently "
                "(BatchNorm's statistics, the random views), so it would not continue the same "
                "run. Resume it as it was launched, on as many devices: "
                f"{self.chapter.resume_command(run_dir, position.layout['processes'])}"
            )
        position.layout = self.layout  # a checkpoint from before layouts were saved gets one now
        schedule = LrSchedule.from_dict(position.schedule)
        try:
            schedule = schedule.continued(position.global_step, total_steps)
        except ValueError as error:
            raise ConfigError(f"--resume {run_dir} --epochs {config['epochs']}: {error}") from error
        # --lr X scales the rates from here by X / (the --lr of the checkpoint's schedule). That
        # old rate is the checkpoint's, not config.json's: a resume with --lr writes config.json
        # at once, and if it fails before its first checkpoint, config.json and the checkpoint
        # disagree; the next resume must still train at the rate config.json says.
        old = position.lr if position.lr is not None else self.request.changed.get(
            "lr", (config["lr"], None))[0]
        if config["lr"] != old:
            schedule = schedule.scaled(position.global_step, config["lr"] / old)
        position.schedule, position.lr = schedule.to_dict(), config["lr"]
        return position

    def restore(self, load_state: Callable[[Path], None],
                import_encoder: Callable[[Path], None] | None = None) -> None:
        """The run's starting state: on resume, the latest checkpoint's framework state, loaded by
        ``load_state(folder)``; in a new run with ``--init-encoder FILE``, the encoder's weights
        from that portable file, loaded by ``import_encoder(FILE)`` (any chapter wrote it, and
        ``cli`` checked that it fits the run's encoder). A new run without it keeps its seed's draw."""
        if self.request.resume is None:
            path = self.config.get("init_encoder")
            if path is not None:
                if import_encoder is None:
                    raise ConfigError(f"{self.chapter.train_command} cannot start from --init-encoder")
                import_encoder(Path(path))
            return
        folder = self.store.latest()
        try:
            load_state(folder)
        except (PermissionError, MemoryError) as error:  # this machine's problem, not the files'
            raise TrainingError(f"the checkpoint {folder} cannot be loaded here ({brief(error)}): "
                                "make it readable or free memory, then resume again") from error
        except Exception as error:
            raise TrainingError(
                f"the checkpoint {folder} cannot be loaded ({brief(error)}). If the error is about "
                "its files (cut, edited, or from another version of the code), it is damaged: start "
                "a new run. If it is about this machine (a device, its memory), fix that and resume "
                "again") from error

    # -- the training context ----------------------------------------------------------------------

    def training(self, save_state: Callable[[Path], None], weights_finite: Callable[[], bool],
                 parameters: int, detail: str = ""):
        """The context the loop runs in: lock, run directory, deferred interrupts, failure handling.

        ``save_state(folder)`` writes the chapter's checkpoint files into ``folder``;
        ``weights_finite()`` says whether every weight is finite (a checkpoint is only written if so);
        ``parameters`` is the number of trained parameters (encoder and heads, for the summary);
        ``detail`` (device, ...) goes into the header printed at the start.
        """
        self._save_state, self._weights_finite = save_state, weights_finite
        self._parameters = int(parameters)
        self._detail = f"{self._parameters:,} trainable parameters" + (f", {detail}" if detail else "")
        return self

    def __enter__(self) -> TrainingSession:
        self._clock_start = time.perf_counter() - self.position.wall_s
        failure = None
        if self.is_main:
            try:
                self._open_run_dir()
                self._print_header()
            except BaseException as error:  # __exit__ will not run: let go of what was opened here
                try:
                    self._discard_run_dir_without_checkpoint()
                finally:
                    self._close()
                failure = error
        # voted: the other processes would otherwise wait for process 0 in their first collective
        if self._agree(failure is not None):
            if failure is not None:
                raise failure
            raise TrainingError(self._see_process_0("process 0 could not open the run directory"))
        self._interrupts.__enter__()
        return self

    def _open_run_dir(self) -> None:
        resuming = self.request.resume is not None
        if not resuming:
            while True:
                try:
                    self.run_dir.mkdir(parents=True)
                    break
                except FileExistsError as error:  # another run, started in the same second, took the name
                    taken = self.run_dir
                    self.run_dir = cli.new_run_dir(self.config, self.chapter.framework,
                                                   self.chapter.method)
                    if self.run_dir == taken:  # the name is free: a folder above it is in the way
                        raise ConfigError(
                            f"cannot create {taken}: {error.filename} is in the way (a file, or a "
                            "symbolic link to a folder that does not exist). Fix it, or pass "
                            "another --output-dir") from error
                    self.store, self._lock = CheckpointStore(self.run_dir), runs.RunLock(self.run_dir)
            self._created_run_dir = True
        self._lock.acquire()
        config = {**self.config, "run_dir": str(self.run_dir)}
        self._writer = runs.RunWriter(self.run_dir, config, self.chapter.framework, self.chapter.method,
                                      resume=resuming, keep_row=_keep_rows_up_to(self.position))
        # A resume hides the events that metrics.jsonl dropped: after the checkpoint's step (from
        # step 0 when not even the init row was kept). TensorBoard purges by step, all tags: a
        # checkpoint taken before its epoch's bookkeeping dropped that epoch's row at its own step,
        # so the purge starts there and the kept rows of that step are written again.
        position = self.position
        pending = position.global_step > 0 and position.step_in_epoch == self.steps_per_epoch
        first_dropped = position.global_step + (position.knn_init is not None and not pending)
        self._tensorboard = ScalarWriter(self.run_dir / runs.TENSORBOARD_DIR,
                                         purge_step=first_dropped if resuming else None)
        if resuming and pending:
            for row in runs.read_run(self.run_dir).metrics:
                if row["step"] == first_dropped:
                    values = {k: v for k, v in row.items() if k not in _ROW_PLACE and v is not None}
                    self._tensorboard.add_scalars(row["kind"], values, first_dropped)

    def __exit__(self, kind, error, _traceback) -> None:
        self._interrupts.__exit__(kind, error, _traceback)
        try:
            if kind is KeyboardInterrupt:
                raise self._stop_at_once() from None
            if error is not None and not isinstance(error, Interrupted):
                self._discard_run_dir_without_checkpoint()
        except Interrupted:
            raise
        except KeyboardInterrupt:  # yet another Ctrl-C, during the stop's own save: abandoned
            self._discard_run_dir_without_checkpoint(announce=False)
            raise self._save_abandoned() from None
        except BaseException:  # the stop's own save failed: its message may say the run is removed
            self._discard_run_dir_without_checkpoint()
            raise
        finally:
            self._close()

    def _stop_at_once(self) -> Interrupted:
        """A second Ctrl-C (or an interrupt outside the deferral): save only at a step boundary."""
        if self._in_step and self._nothing_to_resume():
            self._discard_run_dir_without_checkpoint(announce=False)
            return Interrupted(f"stopped in the middle of a step, before the run's first checkpoint: "
                               f"{self._removed_text()}")
        if not self.is_main:
            return Interrupted(self._see_process_0("stopped at once"))
        if self._in_step:
            where = self.store.latest_or_none()
            kept = f"the last checkpoint ({where.name}) is intact" if where else "no checkpoint exists"
            return Interrupted(f"stopped in the middle of a step: nothing was saved, {kept}. "
                               f"Continue with: {self._resume_command()}")
        self.save_checkpoint()
        return Interrupted(self._saved_message())

    def _save_abandoned(self) -> Interrupted:
        """What a Ctrl-C during the stop's own save leaves (the save removed its half-written
        folder): the run's last checkpoint, or, before its first, nothing."""
        if not self.run_dir.exists():
            return Interrupted(f"stopped again while saving the run's first checkpoint: "
                               f"{self._removed_text()}")
        return Interrupted(f"stopped again while saving: that checkpoint was abandoned, "
                           f"{self._last_checkpoint_text()}. Continue with: {self._resume_command()}")

    def _removed_text(self) -> str:
        return (f"there is nothing to resume, so {self.run_dir} is removed. Start the run again "
                "with the same command")

    def _nothing_to_resume(self) -> bool:
        """A run directory this process created and no checkpoint ever saved in it (a damaged
        pointer still means there are checkpoints: its message says how to pick one)."""
        return self._created_run_dir and not self.store.anything_saved()

    def _discard_run_dir_without_checkpoint(self, announce: bool = True) -> None:
        if self._nothing_to_resume():
            self._close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if announce:
                print(f"(removed {self.run_dir}: the run failed before its first checkpoint)",
                      file=sys.stderr)

    def _close(self) -> None:
        """Close the writers and release the lock; a writer that cannot flush (a full disk, whose
        error is already being reported) does not keep the rest open."""
        self._close_bar()
        writers, self._writer, self._tensorboard = (self._writer, self._tensorboard), None, None
        for writer in writers:
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.close()
        if self._lock is not None:
            self._lock.release()

    def _print_header(self) -> None:
        config, position = self.config, self.position
        print(f"{self.chapter.title}, recipe {config['recipe']!r}; resolved configuration:")
        print(cli.format_config(config))
        print(f"run directory: {self.run_dir}")
        print(f"{self.position.data['num_images']} training images, {self.steps_per_epoch} "
              f"steps/epoch, {self.world_size} process(es)" + (f", {self._detail}" if self._detail else ""))
        if self.request.resume is not None and self._all_epochs_done():
            print(f"all {config['epochs']} epochs are done and checkpointed: writing the summary")
        elif self.request.resume is not None:
            changes = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in self.request.changed.items())
            print(f"resuming at epoch {position.epoch + 1}, step {position.step_in_epoch} (global "
                  f"step {position.global_step})" + (f"; changed: {changes}" if changes else ""))

    # -- the loop ----------------------------------------------------------------------------------

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._clock_start

    def initial_knn(self, knn: Callable[[], float]) -> None:
        """The random-init encoder's kNN (rank 0, once per run): the baseline the run must beat."""
        if self.is_main and self.position.knn_init is None:
            knn_init = float(knn())
            self._log("init", epoch=0, knn_top1=knn_init)  # the row first: a checkpoint with
            self.position.knn_init = knn_init  # knn_init set always has its row
            print(f"kNN top-1 of the random-init encoder: {knn_init:.4f}")
        self._stop_if_asked()

    def epochs(self) -> range:
        """The epochs still to run (0-based)."""
        return range(self.position.epoch, self.config["epochs"])

    def steps(self, epoch: int) -> Iterator[tuple[int, StepData]]:
        """``(step, this process's shard of the step's data)`` from where the run stands.

        Call :meth:`step_done` after each step; a progress bar shows loss, lr and images/s.
        """
        self.begin_epoch(epoch)
        try:
            for step, data in self.stream.epoch(epoch, self.position.step_in_epoch):
                self.begin_step()
                yield step, data.shard(self.rank, self.world_size)
                if self._in_step:
                    raise RuntimeError("call session.step_done(loss, lr) after every training step")
        finally:
            self._close_bar()

    def begin_epoch(self, epoch: int) -> None:
        """Start an epoch's progress bar (``steps`` does it; a loop driven by callbacks, as Keras'
        ``fit``, calls it, then :meth:`begin_step` and :meth:`step_done` around every step)."""
        self._close_bar()
        self._bar = tqdm(total=self.steps_per_epoch, initial=self.position.step_in_epoch, leave=False,
                         dynamic_ncols=True, desc=f"epoch {epoch + 1}/{self.config['epochs']}",
                         disable=not self.is_main)

    def begin_step(self) -> None:
        """A training step starts (an interrupt in it must not be checkpointed half-done)."""
        self._in_step, self._step_started = True, time.perf_counter()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def remaining_batches(self, epoch: int) -> list[np.ndarray]:
        """This process's image indices for the steps of ``epoch`` still to run, in order (for a
        framework loader that wants an epoch's batches up front, e.g. a DataLoader's sampler)."""
        return [data.shard(self.rank, self.world_size).indices
                for _, data in self.stream.epoch(epoch, self.position.step_in_epoch)]

    def step_done(self, loss: float, lr: float) -> None:
        """Book a finished step: the NaN check, the position, the metrics row, pending interrupts.

        Every process decides the NaN check together (``agree``): one that stopped alone would
        leave the others waiting in their next collective until its timeout.
        """
        loss, position = float(loss), self.position
        diverged = not math.isfinite(loss)
        if self._agree(diverged):
            raise TrainingError(self._divergence_message(
                f"the loss became {loss}" if diverged else "another process's loss became NaN or inf"))
        seconds = time.perf_counter() - self._step_started
        position.global_step += 1
        position.step_in_epoch += 1
        position.epoch_loss_sum += loss
        position.epoch_loss_count += 1
        position.train_s += seconds
        self._steps_in_process += 1
        if self._steps_in_process > COMPILE_STEPS:
            position.steady_steps += 1
            position.steady_s += seconds
        images_per_sec = self.config["batch_size"] / max(seconds, 1e-9)
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_sec:.0f}")
        if self.is_main and position.global_step % self.config["log_every"] == 0:
            self._log("step", epoch=position.epoch + 1, loss=loss, lr=lr,
                      images_per_sec=images_per_sec)
        self._in_step = False  # only now: a checkpoint at this step must come with its row
        self._stop_if_asked()

    def knn_due(self) -> bool:
        """Whether the kNN monitor runs at the end of the current epoch (every ``knn_every`` epochs
        and after the last one)."""
        done, every = self.position.epoch + 1, self.config["knn_every"]
        return done == self.config["epochs"] or bool(every and done % every == 0)

    def end_epoch(self, knn: Callable[[], float],
                  representation: Callable[[], np.ndarray] | None = None) -> None:
        """The end of an epoch: kNN when due, the epoch row and line, collapse warning, checkpoint.

        ``knn()`` returns the monitor's top-1 (called on rank 0 only, when due); ``representation()``
        returns a batch of the encoder's outputs h (the representation, before any head: a head
        ending in BatchNorm renormalises a collapsed h back to a healthy-looking spread), checked
        for collapse.
        """
        position = self.position
        self._close_bar()
        if position.step_in_epoch != self.steps_per_epoch:
            raise RuntimeError("end_epoch() before the epoch's steps are done")
        if not self._weights_finite():  # before the kNN and the collapse check read them
            raise TrainingError(self._divergence_message("the weights became NaN or infinite"))
        mean_loss, knn_top1 = position.epoch_loss_sum / max(position.epoch_loss_count, 1), None
        if self.is_main:
            knn_top1 = float(knn()) if self.knn_due() else None
            ratio = None if representation is None else collapse_ratio(np.asarray(representation()))
            epoch = position.epoch + 1
            last_rate = self.schedule.rate(position.global_step - 1)  # of the epoch's last step
            self._log("epoch", epoch=epoch, loss=mean_loss, lr=last_rate, knn_top1=knn_top1,
                      collapse_ratio=ratio)
            knn_text = f", kNN top-1 {knn_top1:.4f}" if knn_top1 is not None else ""
            print(f"epoch {epoch}/{self.config['epochs']}: loss {mean_loss:.4f}{knn_text}, "
                  f"{self.wall_s:.0f} s")
            if ratio is not None and ratio < COLLAPSE_RATIO_WARNING:
                temperature_advice = " or a higher --temperature" if "temperature" in self.config else ""
                print(f"warning: the representation is collapsing (std x sqrt(d) = {ratio:.3f}; 1 is "
                      f"healthy, 0 is a constant). Try a lower --lr{temperature_advice}.")
        # One assignment, so that a second Ctrl-C (raised between any two bytecodes) sees the
        # position either before this epoch's bookkeeping or after all of it, never half of it.
        self.position = dataclasses.replace(
            position, epoch=position.epoch + 1, step_in_epoch=0, last_epoch_loss=mean_loss,
            epoch_loss_sum=0.0, epoch_loss_count=0,
            knn_top1=position.knn_top1 if knn_top1 is None else knn_top1)
        self.save_checkpoint()
        if not self._all_epochs_done():  # after the last epoch only finish() is left: no stop
            self._stop_if_asked(save=False)  # the checkpoint just written holds this position

    def _all_epochs_done(self) -> bool:
        return self.position.epoch >= self.config["epochs"]

    def finish(self) -> dict:
        """Write ``summary.json`` (rank 0), print the result, and return the summary."""
        position, batch = self.position, self.config["batch_size"]
        steps, seconds = ((position.steady_steps, position.steady_s) if position.steady_steps else
                          (position.global_step, position.train_s))  # a run too short to leave any
        summary = {
            "framework": self.chapter.framework, "method": self.chapter.method,
            "recipe": self.config["recipe"], "epochs": self.config["epochs"],
            "steps": position.global_step, "final_loss": position.last_epoch_loss,
            "knn_top1_init": position.knn_init, "knn_top1": position.knn_top1,
            "wall_s": self.wall_s, "train_s": position.train_s,
            "images_per_sec": steps * batch / seconds if seconds else None,
            "peak_rss_mib": self._peak_rss_mib(),
            "trainable_parameters": self._parameters,
        }
        if self.is_main:
            try:
                self._writer.write_summary(summary)
            except OSError as error:  # the last checkpoint holds every epoch: a resume writes it
                raise self._write_failed(f"could not write {runs.SUMMARY_FILE} in {self.run_dir}",
                                         error, first="before the run's first checkpoint") from error
            if position.knn_init is not None and position.knn_top1 is not None:
                print(f"kNN top-1: random-init encoder {position.knn_init:.4f} -> trained encoder "
                      f"{position.knn_top1:.4f}")
            print(f"run directory: {self.run_dir}  (evaluate: {self.chapter.evaluate_command} "
                  f"{self.run_dir})")
        return summary

    def _peak_rss_mib(self) -> float:
        """The peak resident memory of this process (Linux reports KiB) and of the run's earlier
        processes, resumed from (DataLoader workers and other ranks are not counted)."""
        return max(self.position.peak_rss_mib,
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    # -- checkpoints, interrupts, messages ---------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Save the chapter's state and the position (rank 0), if every weight is finite."""
        if not self.is_main:
            return
        if not self._weights_finite():
            raise TrainingError(self._divergence_message("the weights became NaN or infinite"))
        self.position.wall_s = self.wall_s
        self.position.peak_rss_mib = self._peak_rss_mib()
        try:
            self.store.save(self._save_state, self.position.to_dict())
        except OSError as error:
            raise self._write_failed(f"could not write a checkpoint in {self.store.root}", error,
                                     first="the run's first") from error

    def _write_failed(self, what: str, error: OSError, first: str) -> TrainingError:
        """A write that failed (a full disk, a folder made read-only): what to fix, and how to go
        on (from the last checkpoint; or, with none, ``__exit__`` removes the run directory: start
        again)."""
        reason = f"{what} ({error.strerror or error})"
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "Make the run directory writable"
        elif error.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "Free disk space"
        else:
            fix = "Fix what the error names (the disk, free space, permissions)"
        if self._nothing_to_resume():
            return TrainingError(f"{reason}, {first}, so there is nothing to resume and {self.run_dir} "
                                 f"is removed. {fix} (or pass another --output-dir) and start the run "
                                 "again with the same command")
        return TrainingError(f"{reason}; {self._last_checkpoint_text()}. {fix} (or move the run), "
                             f"then: {self._resume_command()}")

    def _stop_if_asked(self, save: bool = True) -> None:
        if self._agree(self._interrupts.signal is not None):
            if save:
                self.save_checkpoint()
            raise Interrupted(self._saved_message())

    def _saved_message(self) -> str:
        position = self.position
        if not self.is_main:
            return self._see_process_0(f"stopped with the others at global step {position.global_step}")
        if self._all_epochs_done():
            return (f"all {self.config['epochs']} epochs are done and checkpointed; summary.json is "
                    f"not written yet. Write it with: {self._resume_command()}")
        return (f"checkpoint saved at epoch {position.epoch + 1}, step {position.step_in_epoch} "
                f"(global step {position.global_step}). Continue with: "
                f"{self._resume_command()}")

    def _see_process_0(self, what: str) -> str:
        """What a process other than rank 0 says when all stop together. The run directory, its
        checkpoints and so the way on are rank 0's: another process named its own directory from
        its own clock (it may differ by a second) and, on another host, may not see rank 0's disk."""
        return (f"process {self.rank}: {what}; process 0's message says which checkpoint is kept "
                "and how to go on")

    def _resume_command(self) -> str:
        return self.chapter.resume_command(self.run_dir, self.world_size)

    def _last_checkpoint_text(self) -> str:
        latest = self.store.latest_or_none()
        if latest is None:
            return "no earlier checkpoint exists"
        saved = RunPosition.from_dict(self.store.position(latest))
        return (f"the last good checkpoint (epoch {saved.epoch + 1}, step {saved.step_in_epoch}, "
                f"global step {saved.global_step}) is intact")

    def _divergence_message(self, what: str) -> str:
        """A loss is checked in its step (the step in progress); the weights after a finished one."""
        position, lr = self.position, self.config["lr"]
        if self._in_step:
            where = (f"{what} at epoch {position.epoch + 1}, step {position.step_in_epoch + 1} "
                     f"(learning rate {self.schedule.rate(position.global_step):.3g})")
        else:
            where = (f"{what} after global step {position.global_step} (learning rate "
                     f"{self.schedule.rate(max(position.global_step - 1, 0)):.3g})")
        if not self.is_main:
            return self._see_process_0(where)
        if self.store.latest_or_none() is None:
            return (f"{where}. No checkpoint was saved before it; start a new run with a lower "
                    f"learning rate, e.g. --lr {lr / 2:g} (now {lr:g}), or check the data.")
        return (f"{where}; {self._last_checkpoint_text()}. Go on from it with a lower learning rate: "
                f"{self._resume_command()} --lr {lr / 2:g}")

    def _log(self, kind: str, *, epoch: int, **metrics) -> None:
        step = self.position.global_step
        try:
            self._writer.log(kind=kind, epoch=epoch, step=step, wall_s=self.wall_s, **metrics)
            self._tensorboard.add_scalars(kind, {k: v for k, v in metrics.items() if v is not None}, step)
        except OSError as error:
            raise self._write_failed(f"could not write a metrics row in {self.run_dir}", error,
                                     first="before the run's first checkpoint") from error

