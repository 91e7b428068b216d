"""The MoCo training program on the chapter contract: run directory, per-step rates, exact resume
(both networks, BatchNorm statistics, the queue and the optimizer), evaluation and portable weights
across chapters. The policy itself is tested once in tests/test_session.py."""

import errno
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
import torch

import tests.tf_setup  # noqa: F401  (TF's devices, before any TF op)
from common import runs
from common.arch import resnet_spec
from common.checkpoints import CheckpointStore
from common.errors import ConfigError, Interrupted
from common.schedules import LrSchedule
from common.weights import load_encoder
from tensorflow_moco import evaluate as chapter_evaluate
from tensorflow_moco import train
from tensorflow_moco.evaluate import CHECKPOINT_PREFIX
from tensorflow_moco.model import MoCo

pytestmark = pytest.mark.xdist_group("tf-train")  # one worker builds the module's fixtures

STEPS_PER_EPOCH = 3
TINY = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32", "--queue-size", "128",
        "--max-steps-per-epoch", str(STEPS_PER_EPOCH), "--log-every", "1", "--knn-every", "1",
        "--strategy", "default", "--arch", "resnet10_small"]


def tiny_request(output_dir: Path, *extra: str):
    request = train.parse_request([*TINY, "--output-dir", str(output_dir), *extra])
    request.config.update(knn_max_train=300, knn_max_test=100, knn_k=10)
    return request


def step_rows(run_dir: Path) -> list[dict]:
    return [row for row in runs.read_run(run_dir).metrics if row["kind"] == "step"]


def checkpoint_values(run_dir: Path) -> dict[str, np.ndarray]:
    """Every variable of the latest tf.train.Checkpoint, by its checkpoint key."""
    reader = tf.train.load_checkpoint(str(CheckpointStore(run_dir).latest() / CHECKPOINT_PREFIX))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in key}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    trainer = train.Trainer(tiny_request(tmp_path_factory.mktemp("tfruns")))
    assert trainer.fit()["steps"] == 2 * STEPS_PER_EPOCH
    return trainer.session.run_dir


def test_a_run_writes_the_shared_format_with_per_step_rates(finished_run):
    run = runs.read_run(finished_run)
    assert (run.config["framework"], run.config["method"]) == ("tensorflow", "mocov2")
    losses = [row["loss"] for row in step_rows(finished_run)]
    assert len(losses) == 2 * STEPS_PER_EPOCH and all(np.isfinite(losses))
    # The first step: the key network is a copy of the query network and the queue random unit
    # vectors, so the positive logit (about 1 / T) stands out and the loss is far below log(K + 1).
    assert 0 < losses[0] < np.log(129) / 2
    schedule = LrSchedule(run.config["lr"], 2 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    np.testing.assert_allclose([row["lr"] for row in step_rows(finished_run)],
                               [schedule.rate(step) for step in range(2 * STEPS_PER_EPOCH)], rtol=1e-12)
    assert [row["epoch"] for row in run.metrics if row["kind"] == "epoch"] == [1, 2]
    assert run.summary["knn_top1"] == [r for r in run.metrics if r["kind"] == "epoch"][-1]["knn_top1"]
    values = checkpoint_values(finished_run)
    pointer = [v for k, v in values.items() if "queue_ptr" in k]
    assert [int(p) for p in pointer] == [(6 * 32) % 128]  # 6 steps of 32 keys, FIFO
    iterations = [v for k, v in values.items() if k.startswith("optimizer/_iterations")]
    assert [int(i) for i in iterations] == [2 * STEPS_PER_EPOCH]
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))


def test_ctrl_c_mid_epoch_and_resume_reproduce_the_run_exactly(finished_run, tmp_path, monkeypatch):
    original = train.Trainer.key_momentum

    def momentum_and_interrupt(self, step):
        if step == 4:  # epoch 2, second step: stop when it is done
            self.session._interrupts.signal = "SIGINT"
        return original(self, step)

    monkeypatch.setattr(train.Trainer, "key_momentum", momentum_and_interrupt)
    trainer = train.Trainer(tiny_request(tmp_path))
    with pytest.raises(Interrupted, match="python -m tensorflow_moco.train --resume"):
        trainer.fit()
    run_dir = trainer.session.run_dir
    assert CheckpointStore(run_dir).position()["global_step"] == 5
    monkeypatch.undo()
    train.Trainer(train.parse_request(["--resume", str(run_dir)])).fit()
    assert [r["loss"] for r in step_rows(run_dir)] == [r["loss"] for r in step_rows(finished_run)]
    mine, theirs = checkpoint_values(run_dir), checkpoint_values(finished_run)
    assert mine.keys() == theirs.keys() and len(mine) > 50
    for key in mine:  # both networks, BN statistics, queue, pointer, optimizer slots
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)


def test_a_full_disk_is_an_oserror_for_the_run_policy(tmp_path, monkeypatch):
    """TensorFlow reports a full disk as ResourceExhaustedError (seen on a 64 KiB tmpfs), not as an
    OSError: ``save_state`` turns it into one, which the run policy stops on with its message and
    the last checkpoint kept (tests/test_session.py, a full disk)."""
    trainer = train.Trainer(tiny_request(tmp_path))

    def full_disk(prefix):
        raise tf.errors.ResourceExhaustedError(None, None, f"{prefix}; No space left on device")

    def read_only(prefix):
        raise tf.errors.PermissionDeniedError(None, None, f"{prefix}; Permission denied")

    monkeypatch.setattr(trainer.checkpoint, "write", full_disk)
    with pytest.raises(OSError, match="No space left on device") as failure:
        trainer.save_state(tmp_path)
    assert failure.value.errno == errno.ENOSPC  # the session's message says to free space
    monkeypatch.setattr(trainer.checkpoint, "write", read_only)
    with pytest.raises(OSError, match="Permission denied") as failure:
        trainer.save_state(tmp_path)
    assert failure.value.errno == errno.EACCES  # and here to make the folder writable


def test_a_queue_as_large_as_the_data_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="not smaller than the 1442 training images"):
        train.Trainer(tiny_request(tmp_path, "--queue-size", "2048"))
    with pytest.raises(SystemExit):  # not a multiple of the batch: the command line refuses it
        train.parse_request([*TINY, "--queue-size", "100"])
    assert "--queue-size 100 must be a multiple of the 32 keys enqueued per step" in capsys.readouterr().err


def test_evaluate_exports_and_evaluates_a_pytorch_encoder_too(finished_run, tmp_path, capsys):
    args = ["--max-train", "300", "--max-test", "100", "--no-label-efficiency"]
    assert chapter_evaluate.main([str(finished_run), *args]) == 0
    results = json.loads((finished_run / "evaluation.json").read_text())
    epoch_rows = [r for r in runs.read_run(finished_run).metrics if r["kind"] == "epoch"]
    assert results["knn"]["top1"] == pytest.approx(epoch_rows[-1]["knn_top1"], abs=1e-12)
    assert results["checkpoint"]["finished"] is True
    # The exported encoder is the trained query encoder (not the key encoder, its moving average).
    config = runs.read_run(finished_run).config
    trained = chapter_evaluate.load_encoder(config, "cpu", CheckpointStore(finished_run).latest(), None)
    exported = chapter_evaluate.load_encoder(config, "cpu", None, finished_run / "encoder.safetensors")
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(exported.features(x), trained.features(x))
    key = trained.moco.key_encoder(tf.constant(x), training=False).numpy()
    assert np.abs(key - trained.features(x)).max() > 1e-6
    # An encoder trained in another chapter, evaluated on this run's data and protocol.
    from pytorch_simclr.model import build_encoder, export_encoder

    spec = resnet_spec(config["arch"], config["image_size"])
    torch.manual_seed(5)
    foreign = tmp_path / "torch-encoder.safetensors"
    export_encoder(foreign, build_encoder(spec), spec, config["image_size"])
    assert chapter_evaluate.main([str(finished_run), "--encoder", str(foreign), *args]) == 0
    evaluated = json.loads((finished_run / f"evaluation-encoder-{tmp_path.name}-torch-encoder.json")
                           .read_text())  # with the run that measured it, not beside the file
    assert evaluated["encoder"] == str(foreign) and evaluated["checkpoint"] is None
    assert evaluated["knn"]["top1"] != results["knn"]["top1"]
    assert "linear probe" in capsys.readouterr().out


def test_a_new_run_starts_from_a_pytorch_encoder_in_both_networks(tmp_path):
    """``--init-encoder``: the query encoder is the file's encoder, and the key network its copy."""
    from pytorch_simclr.model import build_encoder, export_encoder
    from tensorflow_moco.model import encoder_to_portable

    spec = resnet_spec("resnet10_small", 32)
    torch.manual_seed(5)
    foreign = tmp_path / "torch-encoder.safetensors"
    export_encoder(foreign, build_encoder(spec), spec, 32)
    tensors, _ = load_encoder(foreign)
    drawn = train.Trainer(tiny_request(tmp_path / "drawn")).moco
    started = train.Trainer(tiny_request(tmp_path / "started", "--init-encoder", str(foreign))).moco
    for encoder in (started.query_encoder, started.key_encoder):
        portable = encoder_to_portable(encoder, spec)
        assert all(np.array_equal(portable[name], tensors[name]) for name in tensors)
    assert not np.array_equal(encoder_to_portable(drawn.query_encoder, spec)["stem.conv.kernel"],
                              tensors["stem.conv.kernel"])
    # The heads and the queue are still the seed's draw.
    for ours, theirs in zip(started.query_head.weights + [started.queue],
                            drawn.query_head.weights + [drawn.queue], strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_weights_finite_sees_every_network_not_only_the_queue():
    """The session writes no checkpoint of non-finite weights (tests/test_session.py); here the
    chapter's check must see a NaN in any of the four networks, BN statistics included."""
    moco = MoCo(resnet_spec("resnet10_small", 16), projection_dim=4, hidden_dim=8, queue_size=8)
    trainer = SimpleNamespace(moco=moco)  # all the check reads
    assert train.Trainer.weights_finite(trainer)
    for network in (moco.query_encoder, moco.query_head, moco.key_encoder, moco.key_head):
        for weight in (network.weights[0], network.weights[-1]):  # a kernel, a statistic or bias
            saved = np.asarray(weight).copy()
            weight.assign(np.full_like(saved, np.nan))
            assert not train.Trainer.weights_finite(trainer), weight.path
            weight.assign(saved)
    assert train.Trainer.weights_finite(trainer)
