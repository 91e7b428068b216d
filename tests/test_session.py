"""The run policy of common/session.py, tested once for every chapter on the NumPy toy chapter.

Resume equals the uninterrupted run (weights, "BatchNorm" statistics, losses, metrics rows) after an
interrupt at every kind of point; NaN, non-finite weights and a full disk keep the last good
checkpoint and say how to go on; the --resume --epochs rule; the lock; exit codes with real signals.
"""

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common import checkpoints, cli, errors, runs
from common.checkpoints import CheckpointError, CheckpointStore
from common.errors import ConfigError, Interrupted, TrainingError
from common.session import SUMMARY_KEYS
from tests import toy_chapter
from tests.toy_chapter import ToyTrainer, parse

REPO = Path(__file__).resolve().parents[1]
STEPS = 6  # 96 toy images at batch 16
FLAGS = ["--epochs", "3", "--batch-size", "16", "--warmup-epochs", "1", "--log-every", "1",
         "--knn-every", "1", "--optimizer", "sgd", "--lr", "0.2", "--lr-scaling", "none"]


@pytest.fixture(autouse=True)
def no_hooks():
    ToyTrainer.hooks, ToyTrainer.layout = {}, {}
    yield
    ToyTrainer.hooks, ToyTrainer.layout = {}, {}


def train(tmp_path, *extra) -> Path:
    trainer = ToyTrainer(parse([*FLAGS, "--output-dir", str(tmp_path), *extra]))
    try:
        trainer.fit()
    finally:
        ToyTrainer.hooks = {}
    return trainer.session.run_dir


def resume(run_dir, *extra) -> ToyTrainer:
    trainer = ToyTrainer(parse(["--resume", str(run_dir), *extra]))
    trainer.fit()
    return trainer


def rows(run_dir, kind):
    return [row for row in runs.read_run(run_dir).metrics if row["kind"] == kind]


def final_state(run_dir):
    folder = CheckpointStore(run_dir).latest()
    with np.load(folder / "toy.npz") as state:
        return state["weights"].copy(), state["running_mean"].copy()


def saved_position(run_dir) -> dict:
    return CheckpointStore(run_dir).position()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    ToyTrainer.hooks = {}
    return train(tmp_path_factory.mktemp("reference"))


def assert_same_run(run_dir, reference_dir):
    for kind in ("step", "epoch", "init"):
        ours, theirs = rows(run_dir, kind), rows(reference_dir, kind)
        assert [(r["epoch"], r["step"]) for r in ours] == [(r["epoch"], r["step"]) for r in theirs]
        assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]  # bit for bit
        assert [r["lr"] for r in ours] == [r["lr"] for r in theirs]
        assert [r["knn_top1"] for r in ours] == [r["knn_top1"] for r in theirs]
    for mine, theirs in zip(final_state(run_dir), final_state(reference_dir), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    summary = runs.read_run(run_dir).summary
    assert summary["steps"] == 3 * STEPS and summary["final_loss"] == runs.read_run(
        reference_dir).summary["final_loss"]


def test_an_uninterrupted_run_writes_rows_checkpoint_and_summary(reference):
    assert [r["step"] for r in rows(reference, "step")] == list(range(1, 3 * STEPS + 1))
    assert [r["epoch"] for r in rows(reference, "epoch")] == [1, 2, 3]
    assert len(rows(reference, "init")) == 1
    position = saved_position(reference)
    assert (position["epoch"], position["step_in_epoch"], position["global_step"]) == (3, 0, 18)
    summary = runs.read_run(reference).summary
    assert set(summary) == set(SUMMARY_KEYS)
    assert summary["knn_top1"] == rows(reference, "epoch")[-1]["knn_top1"]
    # the rates are the session's schedule: google-research/simclr's warm-up (0 at step 0), cosine
    lrs = [r["lr"] for r in rows(reference, "step")]
    assert lrs[0] == 0.0 and lrs[STEPS] == pytest.approx(0.2) and lrs[-1] < 0.01
    # an epoch row's rate is its last step's (not the next step's: the last epoch's would be 0)
    assert [r["lr"] for r in rows(reference, "epoch")] == [lrs[STEPS - 1], lrs[2 * STEPS - 1], lrs[-1]]
    assert lrs[-1] > 0
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["latest", "step-00000018"]


def test_images_per_sec_leaves_out_each_processs_compiling_steps(tmp_path, monkeypatch):
    """The first steps of a process (tracing, XLA, autotuning) are a one-off cost: ``train_s``
    counts them, ``images_per_sec`` does not, after a resume either. The session's clock is a fake
    one that the steps advance: 0.3 s for each process's first two, 0.01 s for the others."""
    from types import SimpleNamespace

    from common import session

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(session, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def step_takes(trainer):
        clock.now += 0.3 if trainer.session._steps_in_process < 2 else 0.01

    ToyTrainer.hooks = {"during_step": step_takes,
                        "before_step": interrupt_at(lambda t: t.session.position.global_step == 9)}
    with pytest.raises(Interrupted):
        train(tmp_path)
    (run_dir,) = tmp_path.iterdir()
    position_file = CheckpointStore(run_dir).latest() / "position.json"
    position = json.loads(position_file.read_text())
    assert position["steady_steps"] == position["global_step"] - 2 and position["peak_rss_mib"] > 10
    position["peak_rss_mib"] = 1e6  # a first process that needed more memory than this one
    position_file.write_text(json.dumps(position))
    ToyTrainer.hooks = {"during_step": step_takes}
    resume(run_dir)
    summary = runs.read_run(run_dir).summary
    steps = 3 * STEPS
    assert summary["train_s"] == pytest.approx(4 * 0.3 + (steps - 4) * 0.01, abs=1e-3)  # every step
    assert summary["images_per_sec"] == pytest.approx(16 / 0.01, rel=1e-3)  # the steady ones only
    assert summary["peak_rss_mib"] == 1e6


def test_knn_every_and_log_every_thin_the_rows(tmp_path):
    run_dir = train(tmp_path, "--knn-every", "2", "--log-every", "4")
    assert [r["step"] for r in rows(run_dir, "step")] == [4, 8, 12, 16]
    assert [r["knn_top1"] is not None for r in rows(run_dir, "epoch")] == [False, True, True]  # and last


def test_every_row_is_also_a_tensorboard_scalar(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import common.tensorboard  # noqa: F401  (TensorBoard without TensorFlow)

    events = EventAccumulator(str(reference / "tensorboard"))
    events.Reload()
    losses = events.Scalars("step/loss")
    assert [e.step for e in losses] == [r["step"] for r in rows(reference, "step")]
    np.testing.assert_allclose([e.value for e in losses], [r["loss"] for r in rows(reference, "step")],
                               rtol=1e-6)  # TensorBoard stores float32
    assert [e.step for e in events.Scalars("epoch/knn_top1")] == [6, 12, 18]


def assert_tensorboard_lists_the_metrics_rows(run_dir):
    """What TensorBoard shows is metrics.jsonl: every row once, none an earlier process wrote after
    the checkpoint it was resumed from."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import common.tensorboard  # noqa: F401  (TensorBoard without TensorFlow)

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for kind, tag in (("step", "step/loss"), ("epoch", "epoch/loss"), ("init", "init/knn_top1")):
        assert [e.step for e in events.Scalars(tag)] == [r["step"] for r in rows(run_dir, kind)], tag


def interrupt_at(trigger):
    """Request an interrupt (what the first Ctrl-C / SIGTERM does) when ``trigger(trainer)`` is true."""
    def hook(trainer):
        if trigger(trainer):
            trainer.session._interrupts.signal = "SIGINT"
    return hook


@pytest.mark.parametrize(("hook", "where"), [
    ("during_step", lambda t: t.session.position.global_step == 8),  # mid-epoch, inside a step
    ("before_step", lambda t: t.session.position.global_step == 12),  # at an epoch boundary
    ("during_step", lambda t: t.session.position.global_step == 17),  # the very last step
])
def test_a_deferred_interrupt_stops_at_the_step_boundary_and_resume_is_exact(tmp_path, reference, hook,
                                                                              where):
    ToyTrainer.hooks = {hook: interrupt_at(where)}
    with pytest.raises(Interrupted, match="Continue with: python -m tests.toy_chapter --resume"):
        train(tmp_path)
    [run_dir] = tmp_path.iterdir()
    assert runs.read_run(run_dir).summary is None
    resume(run_dir)
    assert_same_run(run_dir, reference)


def test_ctrl_c_during_the_final_knn_leaves_a_run_that_finishes(tmp_path, reference):
    """The end-of-epoch bookkeeping is part of the position: the final kNN is redone on resume."""
    calls = {"knn": 0}
    original = ToyTrainer.knn

    def knn_interrupted_once(self):
        calls["knn"] += 1
        if calls["knn"] == 4:  # init, epoch 1, epoch 2, then the final one
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        return original(self)

    ToyTrainer.knn = knn_interrupted_once
    try:
        with pytest.raises(Interrupted, match="checkpoint saved at epoch 3, step 6"):
            train(tmp_path)
    finally:
        ToyTrainer.knn = original
    [run_dir] = tmp_path.iterdir()
    assert saved_position(run_dir)["step_in_epoch"] == STEPS and saved_position(run_dir)["epoch"] == 2
    resume(run_dir)
    assert_same_run(run_dir, reference)


def test_an_interrupt_during_the_last_epochs_bookkeeping_finishes_the_run(tmp_path, reference):
    """A first Ctrl-C (or SIGTERM) during the final kNN: everything is trained, so the run writes its
    checkpoint and summary and ends; it does not stop with a checkpoint past its last epoch."""
    calls = {"knn": 0}
    original = ToyTrainer.knn

    def knn_with_a_request(self):
        calls["knn"] += 1
        if calls["knn"] == 4:  # init, epoch 1, epoch 2, then the final one
            self.session._interrupts.signal = "SIGTERM"
        return original(self)

    ToyTrainer.knn = knn_with_a_request
    try:
        run_dir = train(tmp_path)
    finally:
        ToyTrainer.knn = original
    assert_same_run(run_dir, reference)


def test_a_resume_on_another_layout_is_refused_with_the_command_that_launched_the_run(tmp_path):
    """Each replica's share of the batch sets its BatchNorm statistics (and PyTorch's views): a run
    trained by 2 processes cannot go on in 1, nor a run of 1 device on 2 (tf.distribute, Keras)."""
    def stopped_run(folder, **layout) -> Path:
        ToyTrainer.layout = layout
        ToyTrainer.hooks = {"before_step": interrupt_at(lambda t: t.session.position.global_step == 2)}
        with pytest.raises(Interrupted):
            train(folder)
        ToyTrainer.hooks = {}
        [run_dir] = folder.iterdir()
        return run_dir

    run_dir = stopped_run(tmp_path / "two", rank=0, world_size=2)  # rank 0's half, as under torchrun
    assert saved_position(run_dir)["layout"] == {"processes": 2, "replicas": 2}
    ToyTrainer.layout = {}
    with pytest.raises(ConfigError, match=r"the run trained with 2 processes and 2 replicas, this "
                                          r"resume has 1 process and 1 replica\. .* Resume it as it "
                                          r"was launched, on as many devices: python -m "
                                          r"tests\.toy_chapter --resume"):
        ToyTrainer(parse(["--resume", str(run_dir)]))
    ToyTrainer.layout = {"rank": 0, "world_size": 2}
    assert ToyTrainer(parse(["--resume", str(run_dir)])).session.position.global_step == 3  # goes on

    single = stopped_run(tmp_path / "one")
    assert saved_position(single)["layout"] == {"processes": 1, "replicas": 1}
    ToyTrainer.layout = {"replicas": 2}  # one process, two devices
    with pytest.raises(ConfigError, match="trained with 1 process and 1 replica, this resume has 1 "
                                          "process and 2 replicas"):
        ToyTrainer(parse(["--resume", str(single)]))
    # A checkpoint written before the layout was recorded is resumed as before.
    position_file = CheckpointStore(single).latest() / "position.json"
    position = json.loads(position_file.read_text())
    del position["layout"]
    position_file.write_text(json.dumps(position))
    ToyTrainer.layout = {}
    resumed = ToyTrainer(parse(["--resume", str(single)])).session.position
    assert resumed.global_step == 3 and resumed.layout == {"processes": 1, "replicas": 1}  # saved from now


def test_the_resume_command_of_a_multi_process_run_is_launched_like_it():
    from pytorch_simclr import CHAPTER, SUPERVISED

    assert CHAPTER.resume_command("RUN") == "python -m pytorch_simclr.train --resume RUN"
    assert CHAPTER.resume_command("RUN", 4) == ("torchrun --nproc-per-node 4 -m pytorch_simclr.train "
                                                "--resume RUN")
    assert SUPERVISED.resume_command("RUN", 2) == ("torchrun --nproc-per-node 2 -m pytorch_simclr.supervised "
                                                   "--resume RUN")


def test_a_run_killed_after_its_last_checkpoint_writes_its_summary_on_resume(tmp_path, reference,
                                                                              capsys):
    """SIGKILL between the last checkpoint and summary.json: resume trains nothing, writes it."""
    def killed_before_the_summary(self, summary):
        raise KeyboardInterrupt  # stands for the kill: nothing after the checkpoint happens

    original = runs.RunWriter.write_summary
    runs.RunWriter.write_summary = killed_before_the_summary
    try:
        with pytest.raises(Interrupted, match="all 3 epochs are done and checkpointed; summary.json "
                                              "is not written yet. Write it with: python -m "
                                              "tests.toy_chapter --resume"):
            train(tmp_path)
    finally:
        runs.RunWriter.write_summary = original
    [run_dir] = tmp_path.iterdir()
    assert runs.read_run(run_dir).summary is None
    ToyTrainer.hooks = {"before_step": lambda trainer: pytest.fail("a finished run trained again")}
    resume(run_dir)
    assert "all 3 epochs are done and checkpointed: writing the summary" in capsys.readouterr().out
    assert_same_run(run_dir, reference)
    with pytest.raises(ConfigError, match="has finished its 3 epochs"):
        ToyTrainer(parse(["--resume", str(run_dir)]))


def test_an_interrupt_at_an_epochs_end_writes_its_checkpoint_once(tmp_path, reference, monkeypatch):
    saves = []
    original = ToyTrainer.save_state
    monkeypatch.setattr(ToyTrainer, "save_state", lambda self, folder: (saves.append(folder.name),
                                                                         original(self, folder)))
    knn = ToyTrainer.knn

    def knn_with_a_request(self):  # the kNN of epoch 1 (the second call)
        if self.session.position.global_step == STEPS:
            self.session._interrupts.signal = "SIGINT"
        return knn(self)

    monkeypatch.setattr(ToyTrainer, "knn", knn_with_a_request)
    with pytest.raises(Interrupted, match="checkpoint saved at epoch 2, step 0 "):
        train(tmp_path)
    assert len(saves) == 1  # not once by the epoch's end and again by the stop
    monkeypatch.setattr(ToyTrainer, "knn", knn)
    [run_dir] = tmp_path.iterdir()
    resume(run_dir)
    assert_same_run(run_dir, reference)


def test_a_second_ctrl_c_as_the_init_row_is_written_leaves_a_run_that_logs_it(tmp_path, reference,
                                                                              monkeypatch):
    """The position says the random-init kNN is done only once its row is written; else the
    resumed run would neither redo it nor have its row."""
    from common.session import TrainingSession

    log = TrainingSession._log

    def interrupted_before_the_init_row(self, kind, **fields):
        if kind == "init":
            raise KeyboardInterrupt
        log(self, kind, **fields)

    monkeypatch.setattr(TrainingSession, "_log", interrupted_before_the_init_row)
    with pytest.raises(Interrupted):
        train(tmp_path)
    monkeypatch.setattr(TrainingSession, "_log", log)
    [run_dir] = tmp_path.iterdir()
    resume(run_dir)
    assert_same_run(run_dir, reference)
    assert_tensorboard_lists_the_metrics_rows(run_dir)


def test_a_resumed_writer_s_event_file_sorts_after_an_earlier_one_of_the_same_second(tmp_path):
    """TensorBoard reads event files in name order: a resumed writer's file, named in the same
    second as the last one, could sort before it (its counter "10" before that file's "9"), and its
    purge marker would come first and hide nothing."""
    from common.tensorboard import ScalarWriter

    last = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.~host.9.9"  # '~' after any host
    last.write_bytes(b"")
    writer = ScalarWriter(tmp_path, purge_step=3)
    writer.close()
    files = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 2 and files[0] == last


def test_tensorboard_shows_an_epoch_once_after_a_resume_that_failed_in_its_bookkeeping(tmp_path, reference,
                                                                                      monkeypatch):
    """Stopped after an epoch's last step, before its bookkeeping; the resume logs the epoch row,
    then its checkpoint fails; the next resume logs it again. TensorBoard purges by step (all tags),
    so the second resume must purge from that step and write the step's kept row again."""
    ToyTrainer.hooks = {"during_step": interrupt_at(lambda t: t.session.position.global_step == STEPS - 1)}
    with pytest.raises(Interrupted):
        train(tmp_path)
    ToyTrainer.hooks = {}
    [run_dir] = tmp_path.iterdir()
    assert saved_position(run_dir)["step_in_epoch"] == STEPS  # its bookkeeping is pending
    save_state = ToyTrainer.save_state

    def full_disk(self, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ToyTrainer, "save_state", full_disk)
    with pytest.raises(TrainingError, match="No space left"):
        resume(run_dir)
    monkeypatch.setattr(ToyTrainer, "save_state", save_state)
    resume(run_dir)
    assert_same_run(run_dir, reference)
    assert_tensorboard_lists_the_metrics_rows(run_dir)


def test_an_immediate_stop_in_the_middle_of_a_step_saves_nothing(tmp_path, reference):
    def second_ctrl_c(trainer):
        if trainer.session.position.global_step == 9:
            raise KeyboardInterrupt

    ToyTrainer.hooks = {"during_step": second_ctrl_c}
    with pytest.raises(Interrupted, match="nothing was saved, the last checkpoint"):
        train(tmp_path)
    [run_dir] = tmp_path.iterdir()
    assert saved_position(run_dir)["global_step"] == STEPS  # the end-of-epoch-1 checkpoint
    resume(run_dir)
    assert_same_run(run_dir, reference)


def test_an_immediate_stop_before_the_first_checkpoint_removes_the_run_and_says_so(tmp_path):
    """Nothing to resume: the advice cannot be --resume (it would be refused), and the empty run
    directory goes, as after any failure before the first checkpoint."""
    def second_ctrl_c(trainer):
        if trainer.session.position.global_step == 2:
            raise KeyboardInterrupt

    ToyTrainer.hooks = {"during_step": second_ctrl_c}
    with pytest.raises(Interrupted, match="before the run's first checkpoint: there is nothing to "
                                          "resume, so .* is removed. Start the run again"):
        train(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_stop_while_a_steps_row_is_written_leaves_no_checkpoint_without_that_row(tmp_path, reference,
                                                                                   monkeypatch):
    """The step is booked only once its row is written: a checkpoint in between would resume after
    a step whose row is lost for good."""
    from common.session import TrainingSession

    log = TrainingSession._log

    def interrupted_before_step_8s_row(self, kind, **fields):
        if kind == "step" and self.position.global_step == 8:
            raise KeyboardInterrupt
        log(self, kind, **fields)

    monkeypatch.setattr(TrainingSession, "_log", interrupted_before_step_8s_row)
    with pytest.raises(Interrupted, match="nothing was saved"):
        train(tmp_path)
    monkeypatch.setattr(TrainingSession, "_log", log)
    [run_dir] = tmp_path.iterdir()
    assert saved_position(run_dir)["global_step"] == STEPS
    resume(run_dir)
    assert_same_run(run_dir, reference)


def test_a_nan_loss_keeps_the_last_good_checkpoint_and_the_advice_can_be_followed(tmp_path):
    ToyTrainer.hooks = {"loss": _nan_at_step(9)}
    with pytest.raises(TrainingError) as failure:
        train(tmp_path)
    message = str(failure.value)
    assert "the loss became nan at epoch 2, step 3" in message
    assert "last good checkpoint (epoch 2, step 0, global step 6) is intact" in message
    [run_dir] = tmp_path.iterdir()
    command = message.split("learning rate: ")[1]
    assert command.startswith(f"python -m tests.toy_chapter --resume {run_dir} --lr 0.1")
    trainer = resume(run_dir, "--lr", "0.1")  # what the message says works
    schedule = trainer.session.schedule
    assert schedule.rate(6) == pytest.approx(0.1) and schedule.rate(5) == pytest.approx(0.2 * 5 / 6)
    assert runs.read_run(run_dir).summary["steps"] == 3 * STEPS
    assert runs.read_run(run_dir).config["resumes"][-1]["changed"]["lr"] == {"old": 0.2, "new": 0.1}


def test_a_resume_with_a_new_rate_that_fails_before_its_first_checkpoint_keeps_that_rate(tmp_path):
    """``--resume --lr 0.1`` writes config.json at once; diverging again before the next checkpoint
    leaves the checkpoint's schedule at 0.2. The next resumes must train at config.json's rate, and
    a further --lr must scale from the rate the checkpoint really has."""
    ToyTrainer.hooks = {"loss": _nan_at_step(9)}
    with pytest.raises(TrainingError):
        train(tmp_path)
    [run_dir] = tmp_path.iterdir()
    ToyTrainer.hooks = {"loss": _nan_at_step(2)}  # the second step after the resume, global step 7
    with pytest.raises(TrainingError, match="global step 6"):
        resume(run_dir, "--lr", "0.1")
    assert runs.read_run(run_dir).config["lr"] == 0.1
    ToyTrainer.hooks = {}
    plain = ToyTrainer(parse(["--resume", str(run_dir)])).session.schedule
    assert plain.rate(6) == pytest.approx(0.1)  # not the checkpoint's 0.2
    lower = ToyTrainer(parse(["--resume", str(run_dir), "--lr", "0.05"])).session.schedule
    assert lower.rate(6) == pytest.approx(0.05)  # not 0.2 x 0.05 / 0.1
    assert lower.rate(5) == pytest.approx(0.2 * 5 / 6)  # the past is what it was


def test_only_process_0_says_where_the_run_is_and_how_to_go_on(tmp_path):
    """Another rank names its run directory from its own clock (a second later, it is another
    name) and may not see rank 0's disk: its advice would point at a run that does not exist."""
    ToyTrainer.layout = {"rank": 1, "world_size": 2}
    ToyTrainer.hooks = {"loss": _nan_at_step(9)}
    with pytest.raises(TrainingError) as diverged:
        train(tmp_path)
    ToyTrainer.hooks = {"before_step": interrupt_at(lambda t: t.session.position.global_step == 8)}
    with pytest.raises(Interrupted) as stopped:
        train(tmp_path)
    for message in (str(diverged.value), str(stopped.value)):
        assert message.startswith("process 1: ") and "process 0's message says" in message
        assert "--resume" not in message and "start a new run" not in message
    assert "the loss became nan at epoch 2, step 3" in str(diverged.value)
    assert "global step 9" in str(stopped.value)  # the step in progress finished first
    assert list(tmp_path.iterdir()) == []  # rank 0 alone writes the run directory


def test_a_run_started_in_the_same_second_as_another_takes_the_next_name(tmp_path):
    trainer = ToyTrainer(parse([*FLAGS, "--epochs", "1", "--output-dir", str(tmp_path)]))
    taken = trainer.session.run_dir  # named when the session was made, created when training starts
    taken.mkdir(parents=True)
    (taken / "config.json").write_text("{}")  # the other run's
    trainer.fit()
    assert trainer.session.run_dir.parent == tmp_path and trainer.session.run_dir != taken  # "-2"
    assert runs.read_run(trainer.session.run_dir).summary["steps"] == STEPS
    assert [p.name for p in taken.iterdir()] == ["config.json"]  # the other run's, untouched


def test_an_output_dir_that_is_a_broken_link_is_one_message_not_a_spin(tmp_path, monkeypatch):
    """mkdir(parents=True) says FileExistsError for a link to a missing folder, as it does for a
    run that took the name; the name being free, the next one would be the same name again."""
    (tmp_path / "runs").symlink_to(tmp_path / "unmounted")
    trainer = ToyTrainer(parse([*FLAGS, "--output-dir", str(tmp_path / "runs")]))
    names = []
    new_run_dir = cli.new_run_dir

    def counted(*args):
        names.append(new_run_dir(*args))
        if len(names) > 5:
            raise AssertionError(f"looped over {names[-1]}")
        return names[-1]

    monkeypatch.setattr(cli, "new_run_dir", counted)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'runs'} is in the way .*another --output-dir"):
        trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing made, the link kept


@pytest.fixture
def config_json_meets_a_full_disk(monkeypatch):
    """Writing config.json fails with ENOSPC; every other file is written as usual."""
    write = runs.atomic_write_json

    def full_disk(path, data):
        if path.name == runs.CONFIG_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(runs, "atomic_write_json", full_disk)


def test_a_run_that_cannot_write_its_config_leaves_no_directory_and_no_lock(
    tmp_path, config_json_meets_a_full_disk
):
    """The run directory is opened in the session's ``__enter__``, whose failure no ``__exit__``
    follows: it must let go of the directory and the lock itself."""
    trainer = ToyTrainer(parse([*FLAGS, "--output-dir", str(tmp_path)]))
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    assert list(tmp_path.iterdir()) == []
    assert trainer.session._lock._handle is None  # released, not held until the process ends


def test_a_run_directory_process_0_cannot_open_stops_every_process(tmp_path,
                                                                     config_json_meets_a_full_disk):
    """Only process 0 opens the run directory; its failure is voted, or the others would wait for
    it in their first collective (a multi-worker TensorFlow job: until the collective times out)."""
    votes = []

    def agree(flag):
        votes.append(flag)
        return True  # process 0 failed (as rank 1 learns) / this process failed (rank 0)

    ToyTrainer.layout = {"rank": 0, "world_size": 2, "agree": agree}
    with pytest.raises(OSError, match="No space left"):
        train(tmp_path / "rank0")
    assert votes == [True]  # it voted before it raised
    ToyTrainer.layout = {"rank": 1, "world_size": 2, "agree": agree}
    with pytest.raises(TrainingError, match="process 1: process 0 could not open the run directory"):
        train(tmp_path / "rank1")
    assert votes == [True, False]


def test_a_nan_on_another_process_stops_this_one_at_the_same_step(tmp_path):
    """The NaN check is voted like the interrupts: a rank that stopped alone would leave the
    others blocked in their next all-reduce."""
    trainer = ToyTrainer(parse([*FLAGS, "--output-dir", str(tmp_path)]))
    votes = []

    def agree(flag):  # another rank's loss is NaN at global step 9 (the vote taken in the step)
        votes.append(flag)
        session = trainer.session
        return flag or (session._in_step and session.position.global_step == 8)

    trainer.session._agree = agree
    with pytest.raises(TrainingError, match="another process's loss became NaN or inf at epoch 2, "
                                            "step 3"):
        trainer.fit()
    assert False in votes  # this rank voted with its own, finite, loss
    assert saved_position(trainer.session.run_dir)["global_step"] == STEPS  # the last good checkpoint


def _nan_at_step(step):
    calls = {"n": 0}

    def loss(value):
        calls["n"] += 1
        return float("nan") if calls["n"] == step else value

    return loss


@pytest.mark.parametrize("collapsed", [False, True])
def test_the_collapse_warning_is_printed_for_a_collapsed_representation_only(tmp_path, capsys, monkeypatch,
                                                                            collapsed):
    from common.evaluate.diagnostics import COLLAPSE_RATIO_WARNING

    spread = np.random.default_rng(0).normal(size=(32, 16))
    representation = np.ones_like(spread) + 1e-6 * spread if collapsed else spread
    monkeypatch.setattr(ToyTrainer, "features", lambda self, images: representation)
    train(tmp_path, "--epochs", "1", "--warmup-epochs", "0")
    [row] = rows(next(tmp_path.iterdir()), "epoch")
    assert (row["collapse_ratio"] < COLLAPSE_RATIO_WARNING) == collapsed
    assert ("warning: the representation is collapsing" in capsys.readouterr().out) == collapsed


def test_the_collapse_advice_names_a_temperature_only_where_the_loss_has_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ToyTrainer, "features", lambda self, images: np.ones((32, 16)))
    for with_temperature in (True, False):
        request = parse([*FLAGS, "--output-dir", str(tmp_path / str(with_temperature)), "--epochs", "1",
                         "--warmup-epochs", "0"])
        if not with_temperature:
            del request.config["temperature"]  # as in BYOL's and the supervised baseline's configs
        ToyTrainer(request).fit()
        out = capsys.readouterr().out
        assert "warning: the representation is collapsing" in out and "Try a lower --lr" in out
        assert ("or a higher --temperature" in out) == with_temperature


def test_a_nan_before_any_checkpoint_removes_the_new_run_directory(tmp_path, capsys):
    ToyTrainer.hooks = {"loss": _nan_at_step(3)}
    with pytest.raises(TrainingError, match="No checkpoint was saved before it; start a new run with "
                                            "a lower learning rate, e.g. --lr 0.1"):
        train(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert "removed" in capsys.readouterr().err


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    def blow_up(trainer):
        if trainer.session.position.global_step == 10:
            trainer.weights = trainer.weights * np.inf  # the loss of this step is still finite

    ToyTrainer.hooks = {"during_step": blow_up,
                        "loss": lambda value: value if np.isfinite(value) else 1.0}
    # found at the end of epoch 2: after its last step, at that step's rate (0.2 x (1 + cos(5 pi /
    # 12)) / 2), not at a "step 7" of a 6-step epoch
    with pytest.raises(TrainingError, match=r"the weights became NaN or infinite after global step 12 "
                                            r"\(learning rate 0\.126\); .*global step 6\) is intact"):
        train(tmp_path)
    [run_dir] = tmp_path.iterdir()
    assert saved_position(run_dir)["global_step"] == STEPS
    assert all(np.isfinite(a).all() for a in final_state(run_dir))


def test_a_full_disk_keeps_the_previous_checkpoint_and_resume_is_exact(tmp_path, reference, monkeypatch):
    original = ToyTrainer.save_state
    calls = {"n": 0}

    def save_until_the_disk_is_full(self, folder):
        calls["n"] += 1
        if calls["n"] == 2:  # the end-of-epoch-2 checkpoint
            (folder / "half-written").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, folder)

    monkeypatch.setattr(ToyTrainer, "save_state", save_until_the_disk_is_full)
    with pytest.raises(TrainingError, match="No space left on device.*global step 6\\) is intact. "
                                            "Free disk space"):
        train(tmp_path)
    monkeypatch.setattr(ToyTrainer, "save_state", original)
    [run_dir] = tmp_path.iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-00000006"]
    resume(run_dir)  # the rows of steps 7-12 written before the failure are not listed twice
    assert_same_run(run_dir, reference)
    assert_tensorboard_lists_the_metrics_rows(run_dir)


def test_a_full_disk_at_the_first_checkpoint_says_to_start_again(tmp_path, monkeypatch):
    """No checkpoint: the run directory is removed, so the advice cannot be --resume."""
    def full_disk(self, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ToyTrainer, "save_state", full_disk)
    with pytest.raises(TrainingError) as failure:
        train(tmp_path)
    message = str(failure.value)
    assert "No space left on device" in message and "--resume" not in message
    assert "start the run again with the same command" in message
    assert list(tmp_path.iterdir()) == []


def test_a_first_checkpoint_whose_pointer_was_not_written_is_resumed_from(
    tmp_path, reference, monkeypatch
):
    """The first save's folder is complete once renamed; a full disk (or a kill) before ``latest``
    names it must not turn it into "no checkpoint: start again"."""
    write = checkpoints.atomic_write_bytes

    def full_disk_at_the_pointer(path, data):
        if path.name == "latest":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(checkpoints, "atomic_write_bytes", full_disk_at_the_pointer)
    with pytest.raises(TrainingError, match=r"No space left on device\); the last good checkpoint "
                                            r"\(epoch 2, step 0, global step 6\) is intact.*--resume"):
        train(tmp_path)
    monkeypatch.undo()
    [run_dir] = tmp_path.iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000006"]
    ToyTrainer.hooks = {"before_step": interrupt_at(lambda t: t.session.position.global_step == 7)}
    with pytest.raises(Interrupted):  # one save (step 8): the folder it resumed from goes with it
        resume(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-00000008"]
    ToyTrainer.hooks = {}
    resume(run_dir)
    assert_same_run(run_dir, reference)


def test_a_failed_save_after_an_immediate_stop_removes_the_run_it_says_it_removes(
    tmp_path, monkeypatch
):
    """Ctrl-C outside a step before the first checkpoint saves one; when that save meets a full
    disk, the message says the run directory is removed, so it must be."""
    def interrupted(self):
        raise KeyboardInterrupt

    def full_disk(self, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ToyTrainer, "knn", interrupted)  # the initial kNN, before any step
    monkeypatch.setattr(ToyTrainer, "save_state", full_disk)
    with pytest.raises(TrainingError, match="nothing to resume and .* is removed"):
        train(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_at_the_summary_says_to_resume_not_to_start_over(tmp_path, reference,
                                                                     monkeypatch):
    def full_disk(self, summary):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.RunWriter, "write_summary", full_disk)
    with pytest.raises(TrainingError, match=r"could not write summary.json .*global step 18\) is "
                                            r"intact\. Free disk space .* then: .*--resume"):
        train(tmp_path)
    monkeypatch.undo()
    [run_dir] = tmp_path.iterdir()
    resume(run_dir)  # writes only the summary
    assert_same_run(run_dir, reference)


def test_a_ctrl_c_during_the_stops_own_save_says_what_is_kept(tmp_path):
    """A third Ctrl-C, during the save the second one asked for: that save is abandoned (its
    half-written folder removed), and the message says what is left, not a bare "interrupted"."""
    calls = {"knn": 0, "save": 0}
    knn, save_state = ToyTrainer.knn, ToyTrainer.save_state

    def interrupted_knn(self, at_call):
        calls["knn"] += 1
        if calls["knn"] == at_call:
            raise KeyboardInterrupt  # the second Ctrl-C, outside a step: the stop saves
        return knn(self)

    def interrupted_save(self, folder, at_call):
        calls["save"] += 1
        (folder / "half-written").write_bytes(b"x")
        if calls["save"] == at_call:
            raise KeyboardInterrupt  # the third
        save_state(self, folder)

    try:  # before the first checkpoint: the initial kNN, then its stop's save
        ToyTrainer.knn = lambda self: interrupted_knn(self, 1)
        ToyTrainer.save_state = lambda self, folder: interrupted_save(self, folder, 1)
        with pytest.raises(Interrupted, match="stopped again while saving the run's first checkpoint: "
                                              "there is nothing to resume, so .* is removed"):
            train(tmp_path / "first")
        assert list((tmp_path / "first").iterdir()) == []
        calls.update(knn=0, save=0)  # after one: the kNN at epoch 2's end, then its stop's save
        ToyTrainer.knn = lambda self: interrupted_knn(self, 3)
        ToyTrainer.save_state = lambda self, folder: interrupted_save(self, folder, 2)
        with pytest.raises(Interrupted, match=r"stopped again while saving: that checkpoint was "
                                              r"abandoned, the last good checkpoint \(epoch 2, step 0, "
                                              r"global step 6\) is intact\. Continue with: .*--resume"):
            train(tmp_path / "later")
    finally:
        ToyTrainer.knn, ToyTrainer.save_state = knn, save_state
    [run_dir] = (tmp_path / "later").iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-00000006"]


def test_a_full_disk_under_the_metrics_rows_says_how_to_go_on(tmp_path, reference, monkeypatch):
    """ENOSPC from a real device (/dev/full), so that a buffered writer would meet it twice: once
    in the write, again in close()."""
    monkeypatch.setattr(runs, "METRICS_FILE", "/dev/full")  # run_dir / "/dev/full" is /dev/full
    with pytest.raises(TrainingError, match="could not write a metrics row .*No space left on device.*"
                                            "before the run's first checkpoint, .* is removed"):
        train(tmp_path / "first")  # the init row already fails
    assert list((tmp_path / "first").iterdir()) == []
    monkeypatch.undo()

    def disk_full_from_step_8(trainer):
        writer = trainer.session._writer
        if trainer.session.position.global_step == 7 and writer._metrics.name != "/dev/full":
            writer._metrics.close()
            writer._metrics = open("/dev/full", "ab", buffering=0)  # noqa: SIM115 (the writer closes it)

    ToyTrainer.hooks = {"before_step": disk_full_from_step_8}
    with pytest.raises(TrainingError, match=r"No space left on device\); the last good checkpoint .*"
                                            r"global step 6\) is intact\. Free disk space .* then: "
                                            r"python -m tests\.toy_chapter --resume"):
        train(tmp_path / "later")
    ToyTrainer.hooks = {}
    [run_dir] = (tmp_path / "later").iterdir()
    resume(run_dir)
    assert_same_run(run_dir, reference)


def test_extending_a_run_keeps_the_rate_continuous_and_a_finished_run_says_what_to_do(tmp_path):
    ToyTrainer.hooks = {"before_step": interrupt_at(lambda t: t.session.position.global_step == 14)}
    with pytest.raises(Interrupted):
        train(tmp_path)
    [run_dir] = tmp_path.iterdir()
    trainer = resume(run_dir, "--epochs", "5")
    lrs = [r["lr"] for r in rows(run_dir, "step")]
    assert len(lrs) == 5 * STEPS and lrs[-1] < 0.01
    jumps = np.abs(np.diff(lrs[STEPS:]))
    assert jumps.max() <= 0.2 * np.pi / (2 * STEPS) + 1e-9  # no leap at step 14
    assert trainer.session.schedule.rate(14) == pytest.approx(lrs[14])
    with pytest.raises(ConfigError, match="has finished its 5 epochs"):
        ToyTrainer(parse(["--resume", str(run_dir)]))
    with pytest.raises(ConfigError, match="decayed to 0.*Start a new run with the larger --epochs"):
        ToyTrainer(parse(["--resume", str(run_dir), "--epochs", "8"]))


def test_shortening_a_run_into_its_warm_up_says_which_epochs_are_possible(tmp_path, capsys):
    ToyTrainer.hooks = {"before_step": interrupt_at(lambda t: t.session.position.global_step == 3)}
    with pytest.raises(Interrupted):
        train(tmp_path, "--warmup-epochs", "2")
    [run_dir] = tmp_path.iterdir()
    with pytest.raises(SystemExit):
        parse(["--resume", str(run_dir), "--epochs", "1"])
    assert ("warm-up lasts 2 epochs and a resumed run keeps it; pass --epochs 2 or more, or start a "
            "new run") in capsys.readouterr().err
    assert ToyTrainer(parse(["--resume", str(run_dir), "--epochs", "2"])).session.schedule.end_step \
        == 2 * STEPS


def test_resume_refuses_other_data_and_a_missing_checkpoint(tmp_path, reference):
    with pytest.raises(ConfigError, match="training images differ"):
        ToyTrainer(parse(["--resume", str(reference)]), images=toy_chapter.toy_images(seed=1))
    empty = tmp_path / "killed-early"
    with runs.RunWriter(empty, parse(FLAGS).config, "numpy", "simclr"):
        pass
    with pytest.raises(TrainingError, match="has no checkpoint yet"):
        ToyTrainer(parse(["--resume", str(empty)]))


def test_a_second_process_cannot_train_the_same_run(tmp_path, reference):
    with runs.RunLock(reference), pytest.raises(runs.RunBusyError, match="another process"):
        ToyTrainer(parse(["--resume", str(reference), "--epochs", "4"]))


def test_a_busy_run_found_by_process_0_stops_every_process_of_the_resume(reference):
    votes = []

    def agree(flag):  # process 0's vote reaches every process
        votes.append(flag)
        return True

    ToyTrainer.layout = {"rank": 0, "world_size": 2, "agree": agree}
    with runs.RunLock(reference), pytest.raises(runs.RunBusyError, match="another process"):
        ToyTrainer(parse(["--resume", str(reference), "--epochs", "4"]))
    assert votes == [True]  # voted before it raised
    ToyTrainer.layout = {"rank": 1, "world_size": 2, "agree": agree}
    with pytest.raises(TrainingError, match="process 1: process 0 found the run busy"):
        ToyTrainer(parse(["--resume", str(reference), "--epochs", "4"]))
    assert votes == [True, False]


def test_a_file_system_without_locks_is_one_message_and_no_open_file(tmp_path, monkeypatch):
    import fcntl

    def no_lock_service(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_lock_service)
    opened = len(os.listdir("/proc/self/fd"))
    with pytest.raises(runs.RunBusyError, match="No locks available.*put the runs on a local disk"):
        runs.RunLock(tmp_path).acquire()
    assert len(os.listdir("/proc/self/fd")) == opened  # the lock file's handle is closed


# ------------------------------------------------------------------------------------------------
# Real processes, real signals, exit codes


def start(tmp_path, *extra):
    return subprocess.Popen(
        [sys.executable, "tests/toy_chapter.py", *FLAGS, "--output-dir", str(tmp_path), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TOY_STEP_SECONDS": "0.05"},
    )


def wait_for_steps(tmp_path, steps, process):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for metrics in tmp_path.glob("*/metrics.jsonl"):
            if sum('"kind": "step"' in line for line in metrics.read_text().splitlines()) >= steps:
                return next(tmp_path.iterdir())
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("the toy run did not get going")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signals_end_the_process_with_a_resumable_run(tmp_path, signum):
    process = start(tmp_path, "--epochs", "4")
    run_dir = wait_for_steps(tmp_path, 8, process)  # in epoch 2, after the first checkpoint
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, err
        assert f"Continue with: python -m tests.toy_chapter --resume {run_dir}" in err
        assert "Traceback" not in err
    stopped_at = saved_position(run_dir)["global_step"]
    assert stopped_at >= STEPS
    resumed = subprocess.run([sys.executable, "tests/toy_chapter.py", "--resume", str(run_dir)],
                             cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    # Every step once, in order, whatever the signal (SIGKILL wrote rows after the checkpoint).
    assert [r["step"] for r in rows(run_dir, "step")] == list(range(1, 4 * STEPS + 1))
    assert [r["epoch"] for r in rows(run_dir, "epoch")] == [1, 2, 3, 4]
    assert_tensorboard_lists_the_metrics_rows(run_dir)


def test_exit_codes_and_one_line_errors(tmp_path):
    bad = subprocess.run([sys.executable, "tests/toy_chapter.py", "--batch-size", "1"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--batch-size must be at least 2" in bad.stderr
    missing = subprocess.run([sys.executable, "tests/toy_chapter.py", "--resume", str(tmp_path / "nope")],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "no config.json there" in missing.stderr
    done = subprocess.run([sys.executable, "tests/toy_chapter.py", *FLAGS, "--epochs", "1",
                           "--warmup-epochs", "0", "--output-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "kNN top-1: random-init encoder" in done.stdout


# ---------------------------------------------------------------------------------------------
# Damaged or tampered run files: one message each, and nothing deleted
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def interrupted_copy(tmp_path):
    """A run stopped after step 8 (resumable), to damage."""
    ToyTrainer.hooks = {"before_step": interrupt_at(lambda t: t.session.position.global_step == 8)}
    with pytest.raises(Interrupted):
        train(tmp_path / "runs")
    [run_dir] = (tmp_path / "runs").iterdir()
    return run_dir


def test_a_checkpoint_pointer_that_leaves_the_run_is_refused_and_deletes_nothing(tmp_path,
                                                                                 interrupted_copy):
    run_dir = interrupted_copy
    [folder] = [p for p in (run_dir / "checkpoints").iterdir() if p.is_dir()]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "position.json").write_text((folder / "position.json").read_text())
    (run_dir / "checkpoints" / "latest").write_text("../../precious")
    with pytest.raises(TrainingError, match=rf"names '../../precious', not a checkpoint folder.*write "
                                            rf"the name of a complete checkpoint folder \({folder.name}\)"):
        ToyTrainer(parse(["--resume", str(run_dir)]))
    with pytest.raises(CheckpointError):  # a save cannot tell which folder to keep: it deletes none
        CheckpointStore(run_dir).save(lambda target: None, {"global_step": 9})
    assert (precious / "position.json").is_file() and (folder / "position.json").is_file()
    (run_dir / "checkpoints" / "latest").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="cannot be read"):
        CheckpointStore(run_dir).latest()
    (run_dir / "checkpoints" / "latest").write_text(folder.name)  # what the message says to do
    resume(run_dir)
    assert runs.read_run(run_dir).summary["steps"] == 3 * STEPS


def test_a_pointer_damaged_during_the_run_keeps_the_run_and_its_checkpoints(tmp_path):
    """The next save refuses to guess which folder to keep; the run directory of a process that
    has saved checkpoints must not be removed as one that failed before its first."""
    def damage_the_pointer(trainer):
        if trainer.session.position.global_step == 8:
            (trainer.session.run_dir / "checkpoints" / "latest").write_text("garbage")

    ToyTrainer.hooks = {"before_step": damage_the_pointer}
    with pytest.raises(CheckpointError, match=r"names 'garbage'.* \(step-00000006\)"):
        train(tmp_path)
    [run_dir] = tmp_path.iterdir()
    assert (run_dir / "checkpoints" / "step-00000006" / "position.json").is_file()
    (run_dir / "checkpoints" / "latest").write_text("step-00000006")  # what the message says to do
    resume(run_dir)
    assert runs.read_run(run_dir).summary["steps"] == 3 * STEPS


def test_a_save_removes_only_its_own_leftovers(tmp_path, interrupted_copy):
    checkpoints = interrupted_copy / "checkpoints"
    latest = CheckpointStore(interrupted_copy).latest()
    shutil.copytree(latest, checkpoints / "keep-epoch-1")  # the user's copy
    shutil.copytree(latest, checkpoints / "step-00000003")  # one no pointer names: a leftover
    (checkpoints / ".staging-12345").mkdir()  # an interrupted save's
    resume(interrupted_copy)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["keep-epoch-1", "latest", "step-00000018"]


EDITED_FIELDS = {  # each crashed a resume as "a bug" while only the fields' types were checked
    "no schedule keys": {"schedule": {}},
    "total_steps 0": {"schedule.total_steps": 0},
    "base_lr text": {"schedule.base_lr": "x"},
    "continuations of text": {"schedule.continuations": [["a", 1, 2]]},
    "lr text": {"lr": "0.2"},
    "lr 0": {"lr": 0},
    "layout a list": {"layout": [1, 1]},
    "layout without replicas": {"layout": {"processes": 1}},
    "wall_s text": {"wall_s": "3"},
    "negative epoch": {"epoch": -1},
    "step_in_epoch past the epoch": {"step_in_epoch": 99},
    "global_step off its epoch": {"global_step": 7},
    "steps_per_epoch 0": {"data.steps_per_epoch": 0},
    "knn_top1 text": {"knn_top1": "0.5"},
}


@pytest.mark.parametrize("damage", [[], None, {"global_step": "8"}, *EDITED_FIELDS],
                         ids=["a list", "null", "global_step text", *EDITED_FIELDS])
def test_a_position_that_is_json_but_not_a_position_is_a_damaged_checkpoint(interrupted_copy, damage):
    path = CheckpointStore(interrupted_copy).latest() / "position.json"
    if isinstance(damage, str):
        damage, edits = json.loads(path.read_text()), EDITED_FIELDS[damage]
        for dotted, value in edits.items():
            *parents, key = dotted.split(".")
            target = damage
            for parent in parents:
                target = target[parent]
            target[key] = value
    path.write_text(json.dumps(damage))
    with pytest.raises(TrainingError, match="position.json is not a run position .*Start a new run"):
        ToyTrainer(parse(["--resume", str(interrupted_copy)]))


def test_a_checkpoint_this_machine_cannot_read_is_not_called_damaged(interrupted_copy, monkeypatch):
    """A permission (or memory) problem is the machine's: "start a new run" would throw away a good
    run. Any other load failure names both readings of the error."""
    def unreadable(self, folder):
        raise PermissionError(13, "Permission denied", str(folder / "toy.npz"))

    monkeypatch.setattr(ToyTrainer, "load_state", unreadable)
    with pytest.raises(TrainingError, match="cannot be loaded here .*Permission denied.*make it "
                                            "readable or free memory, then resume again$"):
        ToyTrainer(parse(["--resume", str(interrupted_copy)]))

    def cut(self, folder):
        raise ValueError("the file is cut")

    monkeypatch.setattr(ToyTrainer, "load_state", cut)
    with pytest.raises(TrainingError, match=r"cannot be loaded \(ValueError: the file is cut\)\. If "
                                            "the error is about its files .*start a new run"):
        ToyTrainer(parse(["--resume", str(interrupted_copy)]))


@pytest.mark.parametrize("damage", [b"[]", b"\xff\xfe{}", b"drop seed", b"epochs as text"])
def test_a_damaged_config_is_one_message_on_resume_and_on_reading(interrupted_copy, capsys, damage):
    path = interrupted_copy / runs.CONFIG_FILE
    if damage in (b"drop seed", b"epochs as text"):
        config = json.loads(path.read_text())
        if damage == b"drop seed":
            del config["seed"]
        else:
            config["epochs"] = "3"
        damage = json.dumps(config).encode()
    path.write_bytes(damage)
    with pytest.raises(SystemExit):
        parse(["--resume", str(interrupted_copy)])
    assert "config.json" in capsys.readouterr().err
    if damage != b"drop seed" and not damage.startswith(b"{"):
        with pytest.raises(runs.DamagedRunError):
            runs.read_run(interrupted_copy)


def test_a_metrics_row_without_its_step_is_skipped_not_a_crash(interrupted_copy, reference):
    damaged = '{"kind": "step", "step": null, "epoch": 2}'
    with open(interrupted_copy / runs.METRICS_FILE, "a") as metrics:
        metrics.write(f'{damaged}\n{{"kind": "epoch"}}\n')
    assert any("not a metrics row" in w for w in runs.read_run(interrupted_copy).warnings)
    resume(interrupted_copy)
    assert_same_run(interrupted_copy, reference)
    # the resume dropped the last line (what a crash cuts) but kept the damaged one, to restore
    lines = (interrupted_copy / runs.METRICS_FILE).read_text().splitlines()
    assert damaged in lines and '{"kind": "epoch"}' not in lines


def test_a_checkpoint_is_durable_before_latest_names_it(tmp_path, monkeypatch):
    """fsync order of a save: the folder's files, the checkpoints directory (the folder's rename),
    then the pointer's file and the directory again (the pointer's rename)."""
    synced = []
    fsync = os.fsync

    def recording_fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = CheckpointStore(tmp_path)
    store.save(lambda folder: (folder / "state.bin").write_bytes(b"x"), {"global_step": 3})
    root = str(store.root)
    pointer = next(i for i, path in enumerate(synced) if os.path.basename(path).startswith(".latest."))
    assert root in synced[:pointer] and synced[pointer + 1:] == [root]
    # the chapter's own file (written without an fsync) is synced before the folder is renamed
    state = next(i for i, path in enumerate(synced) if path.endswith("/state.bin"))
    assert state < synced.index(root)


@pytest.mark.parametrize(("error", "advice"), [
    (PermissionError(errno.EACCES, "Permission denied", "/data/cifar.zip"),
     "permission denied (/data/cifar.zip): give this user access to it (read access to an input"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"),
     "read-only file system (/mnt/ro/run): pick a folder you can write to"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device: free some space"),
])
def test_os_errors_get_advice_that_fits_a_read_as_well_as_a_write(error, advice):
    """A file this user may not read is not fixed by "pick a folder you can write to"."""
    assert errors.known_message(error).startswith(advice)


def test_the_resume_command_pastes_into_a_shell_whatever_the_path(tmp_path):
    run_dir = tmp_path / "my runs" / "it's here"
    command = toy_chapter.CHAPTER.resume_command(run_dir)
    assert shlex.split(command)[-2:] == ["--resume", str(run_dir)]


def test_a_checkpoint_folder_made_read_only_is_not_called_a_full_disk(tmp_path, monkeypatch):
    original = ToyTrainer.save_state
    calls = {"n": 0}

    def read_only_from_the_second(self, folder):
        calls["n"] += 1
        if calls["n"] == 2:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        original(self, folder)

    monkeypatch.setattr(ToyTrainer, "save_state", read_only_from_the_second)
    with pytest.raises(TrainingError, match=r"Permission denied\); the last good checkpoint .* is "
                                            r"intact\. Make the run directory writable \(or move the "
                                            r"run\), then: .*--resume"):
        train(tmp_path)
