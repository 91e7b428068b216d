"""Bad input and faults against the real entry points (``pytorch_simclr.train`` / ``.evaluate``):
one clear line with what to do, the right exit code, no traceback, and no half-created run directory.

The policy behind it (common/errors.py, common/session.py) is shared by every chapter; the cases
that need no framework are tested on the toy chapter in tests/test_session.py.
"""

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.checkpoints import CheckpointStore
from pytorch_simclr import evaluate, train

pytestmark = pytest.mark.xdist_group("hostile-inputs")  # one worker builds the module's fixtures

TINY = ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16", "--max-steps-per-epoch", "1",
        "--knn-every", "0", "--device", "cpu", "--arch", "resnet10_small"]


def run(capsys, main, *argv):
    """(exit code, stderr) of an entry point called in this process."""
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, expected_code, *fragments):
    assert code == expected_code, err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(message) == 1, err
    for fragment in fragments:
        assert fragment in message[0], message[0]


@pytest.fixture(scope="module")
def small_knn(request):
    """kNN splits cut to a few images, for the runs that do get to train."""
    from common.evaluate import flow

    original = flow.evaluation_splits

    def capped(config, max_train=None, max_test=None):
        return original(config, max_train or 100, max_test or 50)

    flow.evaluation_splits = capped
    yield
    flow.evaluation_splits = original


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_knn) -> Path:
    output = tmp_path_factory.mktemp("runs")
    assert train.main([*TINY, "--output-dir", str(output)]) == 0
    return next(output.iterdir())


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, small_knn) -> Path:
    """A 2-epoch run stopped by SIGTERM in its second epoch (what a scheduler's time limit does)."""
    original = train.Trainer.train_step

    def stop_in_epoch_two(self, batch, view1, view2):
        if self.session.position.global_step == 1:
            self.session._interrupts.signal = "SIGTERM"
        return original(self, batch, view1, view2)

    output = tmp_path_factory.mktemp("interrupted")
    train.Trainer.train_step = stop_in_epoch_two
    try:
        assert train.main([*TINY, "--epochs", "2", "--output-dir", str(output)]) == 130
    finally:
        train.Trainer.train_step = original
    return next(output.iterdir())


def image_folder(root: Path, splits=("train",)) -> Path:
    for split in splits:
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for n in range(10):
                Image.fromarray(np.full((8, 8, 3), 25 * n, np.uint8)).save(folder / f"{n}.png")
    return root


def test_a_batch_larger_than_the_dataset(tmp_path, capsys):
    code, err = run(capsys, train.main, *TINY, "--batch-size", "4096", "--output-dir", str(tmp_path))
    assert_one_line_error(code, err, 1, "1442 images, fewer than one batch of 4096; lower --batch-size")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_device(tmp_path, capsys):
    code, err = run(capsys, train.main, *TINY, "--device", "tpu9", "--output-dir", str(tmp_path))
    assert_one_line_error(code, err, 1, "--device 'tpu9' is not a device")


def test_an_image_folder_without_a_test_split_names_the_flags_and_leaves_no_run(tmp_path, capsys,
                                                                               small_knn):
    folder = image_folder(tmp_path / "pets", splits=("train", "val"))
    output = tmp_path / "runs"
    code, err = run(capsys, train.main, *TINY, "--dataset", "imagefolder", "--data-dir", str(folder),
                    "--image-size", "8", "--output-dir", str(output))
    assert_one_line_error(code, err, 1, "has no split 'test'", "--knn-test-split")
    assert not output.exists() or list(output.iterdir()) == []
    code, _ = run(capsys, train.main, *TINY, "--dataset", "imagefolder", "--data-dir", str(folder),
                  "--image-size", "8", "--knn-test-split", "val", "--output-dir", str(output))
    assert code == 0  # the flag the message names works


def test_an_output_directory_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run(capsys, train.main, *TINY, "--output-dir", str(blocker / "runs"))
    assert_one_line_error(code, err, 1, "check the path")


def test_a_damaged_checkpoint_file_is_named_on_resume_and_on_evaluation(interrupted_run, capsys):
    state = CheckpointStore(interrupted_run).latest() / evaluate.STATE_FILE
    original = state.read_bytes()
    try:
        state.write_bytes(original[: len(original) // 2])  # truncated
        code, err = run(capsys, train.main, "--resume", str(interrupted_run))
        assert_one_line_error(code, err, 1, "cannot be loaded", "damaged")
        state.write_bytes(os.urandom(4096))  # random bytes
        code, err = run(capsys, evaluate.main, str(interrupted_run), "--device", "cpu")
        assert_one_line_error(code, err, 1, "cannot be loaded", "damaged")
    finally:
        state.write_bytes(original)


def test_a_truncated_config_and_a_wrong_run_directory(trained_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"recipe": "quick", "epo')
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", str(broken)])
    assert exit_info.value.code == 2 and "damaged" in capsys.readouterr().err
    code, err = run(capsys, evaluate.main, str(tmp_path))
    assert_one_line_error(code, err, 1, "is not a run directory")
    code, err = run(capsys, evaluate.main, str(trained_run), "--encoder", str(tmp_path / "none.safetensors"))
    assert_one_line_error(code, err, 1, "none.safetensors: no such file")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text('{"recipe": "quick", "epo')
    code, err = run(capsys, evaluate.main, str(damaged))
    assert_one_line_error(code, err, 1, "config.json is not valid JSON", "damaged")


def test_evaluate_refuses_what_would_overwrite_or_misread_a_run(trained_run, tmp_path, capsys):
    config = (trained_run / "config.json").read_text()
    code, err = run(capsys, evaluate.main, str(trained_run), "--output", str(trained_run / "config.json"))
    assert_one_line_error(code, err, 1, "one of the run's own files")
    assert (trained_run / "config.json").read_text() == config  # untouched
    other = tmp_path / "tf-run"  # a run of another chapter, which this chapter's network cannot load
    other.mkdir()
    (other / "config.json").write_text(config.replace('"framework": "pytorch"', '"framework": "tensorflow"'))
    for flags in ([], ["--random-init"]):
        code, err = run(capsys, evaluate.main, str(other), *flags)
        assert_one_line_error(code, err, 1, "trained by the tensorflow chapter")
    assert [p.name for p in other.iterdir()] == ["config.json"]  # no foreign encoder written there
    with pytest.raises(SystemExit) as exit_info:  # a cap of no images
        evaluate.main([str(trained_run), "--max-test", "0"])
    assert exit_info.value.code == 2 and "--max-test must be at least 2" in capsys.readouterr().err
    unstarted = tmp_path / "unstarted"  # stopped before its first checkpoint
    unstarted.mkdir()
    (unstarted / "config.json").write_text(config)
    code, err = run(capsys, evaluate.main, str(unstarted))
    assert_one_line_error(code, err, 1, "has no checkpoint", "Start a new run")


def test_saved_features_cut_mid_write_keep_the_previous_file(trained_run, tmp_path, capsys,
                                                             monkeypatch):
    from common.evaluate import flow

    output = tmp_path / "evaluation.json"
    flags = [str(trained_run), "--no-label-efficiency", "--save-features", "--output", str(output)]
    assert evaluate.main(flags) == 0
    features = output.with_suffix(".features.npz")
    good = features.read_bytes()

    def cut_by_ctrl_c(file, **arrays):
        with open(file, "wb") if isinstance(file, (str, Path)) else file as handle:
            handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(flow.np, "savez_compressed", cut_by_ctrl_c)
    assert evaluate.main(flags) == 130
    assert features.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation.features.npz", "evaluation.json"]


def test_a_full_disk_before_the_first_checkpoint_leaves_no_run_directory(tmp_path, capsys, monkeypatch,
                                                                          small_knn):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    code, err = run(capsys, train.main, *TINY, "--output-dir", str(tmp_path))
    assert_one_line_error(code, err, 1, "No space left on device", "start the run again with the same")
    assert "--resume" not in err  # the directory is gone: nothing to resume
    assert list(tmp_path.iterdir()) == []


def test_evaluating_an_unfinished_run_says_so(interrupted_run, capsys):
    run_dir = interrupted_run
    code = evaluate.main([str(run_dir), "--device", "cpu", "--no-label-efficiency"])
    assert code == 0
    assert "note: the run is unfinished (epoch 1 of 2)" in capsys.readouterr().out
    import json

    assert json.loads((run_dir / "evaluation.json").read_text())["checkpoint"]["finished"] is False


def test_a_checkpoint_replaced_while_evaluate_reads_it_says_to_run_again(interrupted_run, tmp_path,
                                                                          capsys, monkeypatch):
    """The run is still training: its next save removes the folder evaluate is loading."""
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted_run, run_dir)

    def replaced_while_read(config, device, checkpoint, portable):
        shutil.rmtree(checkpoint)
        raise FileNotFoundError(checkpoint / evaluate.STATE_FILE)

    monkeypatch.setattr(evaluate, "load_encoder", replaced_while_read)
    code, err = run(capsys, evaluate.main, str(run_dir), "--device", "cpu")
    assert_one_line_error(code, err, 1, "was replaced by a newer checkpoint while it was being read",
                          "run the evaluation again")


def test_a_bug_keeps_its_traceback_and_says_how_to_report_it(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(train, "build_model", broken)
    code, err = run(capsys, train.main, *TINY, "--output-dir", str(tmp_path))
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "stopped on an unexpected ZeroDivisionError (a bug, not your input). Please report it" in err
