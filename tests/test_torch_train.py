"""The SimCLR training program on the chapter contract: run directory, exact resume (BatchNorm
statistics included), the interruption points, NaN, full disk, collapse, per-image path, torchrun,
evaluation. The policy itself is tested once in tests/test_session.py; these tests check that the
PyTorch chapter keeps it."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import augment, runs, weights
from common.arch import encoder_spec, resnet_spec
from common.checkpoints import CheckpointStore
from common.errors import Interrupted, TrainingError
from common.schedules import LrSchedule
from common.stream import DataStream
from pytorch_simclr import evaluate as chapter_evaluate
from pytorch_simclr import train
from pytorch_simclr.augment_batched import BatchAugmenter
from pytorch_simclr.evaluate import STATE_FILE
from pytorch_simclr.model import build_encoder, build_model, import_encoder

pytestmark = pytest.mark.xdist_group("torch-train")  # one worker builds the module's fixtures

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3
TINY = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32", "--max-steps-per-epoch",
        str(STEPS_PER_EPOCH), "--log-every", "1", "--knn-every", "1", "--device", "cpu"]


def tiny_request(output_dir: Path, *extra: str):
    """The quick recipe cut down to seconds: 2 epochs of 3 steps of 32 images, small kNN sets."""
    request = train.parse_request([*TINY, "--output-dir", str(output_dir), *extra])
    request.config.update(knn_max_train=300, knn_max_test=100, knn_k=10)
    return request


def step_rows(run_dir: Path) -> list[dict]:
    return [row for row in runs.read_run(run_dir).metrics if row["kind"] == "step"]


def load_state(run_dir: Path) -> dict:
    return torch.load(CheckpointStore(run_dir).latest() / STATE_FILE, weights_only=True)


def position(run_dir: Path) -> tuple[int, int, int]:
    saved = CheckpointStore(run_dir).position()
    return saved["epoch"], saved["step_in_epoch"], saved["global_step"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    trainer = train.Trainer(tiny_request(tmp_path_factory.mktemp("runs")))
    summary = trainer.fit()
    assert summary["steps"] == 2 * STEPS_PER_EPOCH
    return trainer.session.run_dir


def test_a_run_writes_the_shared_run_directory_format(finished_run):
    run = runs.read_run(finished_run)
    assert not run.truncated
    assert run.config["framework"] == "pytorch" and run.config["method"] == "simclr"
    assert run.config["batch_size"] == 32 and run.config["augment"] == "simclr"
    assert "torch" in run.config["library_versions"]
    losses = [row["loss"] for row in step_rows(finished_run)]
    assert len(losses) == 2 * STEPS_PER_EPOCH
    epoch_rows = [row for row in run.metrics if row["kind"] == "epoch"]
    init = [row for row in run.metrics if row["kind"] == "init"]
    assert [row["epoch"] for row in epoch_rows] == [1, 2] and len(init) == 1
    # The epoch rows average their steps (and it learns), the summary is the last epoch's.
    assert epoch_rows[0]["loss"] == pytest.approx(np.mean(losses[:STEPS_PER_EPOCH]), rel=1e-12)
    assert epoch_rows[1]["loss"] < epoch_rows[0]["loss"]
    assert run.summary["final_loss"] == epoch_rows[-1]["loss"]
    assert run.summary["knn_top1"] == epoch_rows[-1]["knn_top1"]
    assert run.summary["knn_top1_init"] == init[0]["knn_top1"]
    for row in run.metrics:
        assert set(runs.METRIC_KEYS) <= set(row)
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    assert position(finished_run) == (2, 0, 6)


def test_learning_rate_follows_the_per_step_schedule(finished_run):
    config = runs.read_run(finished_run).config
    total, warmup = 2 * STEPS_PER_EPOCH, round(config["warmup_epochs"] * STEPS_PER_EPOCH)
    schedule = LrSchedule(config["lr"], total, warmup)  # quick recipe: lr_scaling none
    np.testing.assert_allclose([row["lr"] for row in step_rows(finished_run)],
                               [schedule.rate(step) for step in range(total)], rtol=1e-12)


def test_the_first_step_sees_the_shared_stream(finished_run):
    """Step 0's images and views are the common/stream.py ones: the loss is recomputable by hand."""
    config = runs.read_run(finished_run).config
    images, _ = train.data.load_images(config, "train")
    pair = augment.preset(config["augment"], config["image_size"])
    stream = DataStream(len(images), (32, 32), 32, pair, config["seed"], STEPS_PER_EPOCH)
    batch = stream.step(0, 0)
    torch.manual_seed(config["seed"])
    model = build_model(config)  # the same initial weights: the same seed before building
    view1, view2 = BatchAugmenter(pair, "cpu")(torch.from_numpy(images[batch.indices]), batch.view1,
                                               batch.view2)
    _, z = model(torch.cat([view1, view2]))
    loss = train.nt_xent(*z.chunk(2), config["temperature"]).item()
    assert loss == pytest.approx(step_rows(finished_run)[0]["loss"], rel=1e-6)


def test_the_supervised_baseline_trains_on_the_labels_of_the_streams_images(tmp_path, monkeypatch):
    """Step 0's loss is the cross-entropy of the step's labels on the first view (recomputed by
    hand); a training split without labels is refused."""
    from common.errors import ConfigError
    from pytorch_simclr import SUPERVISED, supervised
    from pytorch_simclr.model import build_classifier
    from pytorch_simclr.supervised import SupervisedTrainer

    request = train.parse_request(["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "32",
                                   "--max-steps-per-epoch", "2", "--log-every", "1", "--device", "cpu",
                                   "--output-dir", str(tmp_path)], SUPERVISED)
    request.config.update(knn_max_train=64, knn_max_test=64, knn_k=10)
    trainer = SupervisedTrainer(request)
    trainer.fit()
    config = request.config
    images, labels = train.data.load_images(config, "train")
    pair = augment.preset(config["augment"], config["image_size"])
    assert config["augment"] == "supervised" and pair.view1.jitter is None  # crop and flip only
    batch = DataStream(len(images), (32, 32), 32, pair, config["seed"], 2).step(0, 0)
    torch.manual_seed(config["seed"])
    model = build_classifier(config, 10)
    view1, _ = BatchAugmenter(pair, "cpu")(torch.from_numpy(images[batch.indices]), batch.view1, batch.view2)
    _, scores = model(view1)
    loss = torch.nn.functional.cross_entropy(scores, torch.from_numpy(labels[batch.indices])).item()
    assert loss == pytest.approx(step_rows(trainer.session.run_dir)[0]["loss"], rel=1e-6)

    def unlabelled(name, split, root=None):
        return images, np.full(len(images), -1)

    monkeypatch.setattr(supervised.datasets, "load", unlabelled)
    with pytest.raises(ConfigError, match="has no labels; the supervised baseline needs labelled"):
        SupervisedTrainer(train.parse_request(["--output-dir", str(tmp_path)], SUPERVISED))


def interrupt_at_step(monkeypatch, global_step: int):
    """Ask for a stop (what the first Ctrl-C does) while the step ``global_step`` runs."""
    original = train.Trainer.train_step

    def step(self, batch, view1, view2):
        if self.session.position.global_step == global_step:
            self.session._interrupts.signal = "SIGINT"
        return original(self, batch, view1, view2)

    monkeypatch.setattr(train.Trainer, "train_step", step)


def assert_same_state(run_dir: Path, reference_dir: Path):
    assert [r["loss"] for r in step_rows(run_dir)] == [r["loss"] for r in step_rows(reference_dir)]
    mine, theirs = load_state(run_dir)["model"], load_state(reference_dir)["model"]
    assert mine.keys() == theirs.keys()
    for name in mine:  # every tensor, BatchNorm running statistics included, bit for bit
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=0, msg=name)


def test_ctrl_c_mid_epoch_stops_at_a_step_boundary_and_resume_is_exact(finished_run, tmp_path,
                                                                      monkeypatch):
    interrupt_at_step(monkeypatch, 4)  # epoch 2, second step
    trainer = train.Trainer(tiny_request(tmp_path))
    with pytest.raises(Interrupted, match="Continue with: python -m pytorch_simclr.train --resume"):
        trainer.fit()
    run_dir = trainer.session.run_dir
    assert position(run_dir) == (1, 2, 5)  # the interrupted step finished, then it stopped
    monkeypatch.undo()
    train.Trainer(train.parse_request(["--resume", str(run_dir)])).fit()
    assert_same_state(run_dir, finished_run)


def test_ctrl_c_between_an_epochs_last_step_and_its_bookkeeping(finished_run, tmp_path, monkeypatch):
    """A second Ctrl-C in the end-of-epoch kNN: the epoch's steps are saved, its bookkeeping redone."""
    calls = {"n": 0}
    original = train.Trainer.knn

    def knn(self):
        calls["n"] += 1
        if calls["n"] == 2:  # init, then the end of epoch 1
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(train.Trainer, "knn", knn)
    trainer = train.Trainer(tiny_request(tmp_path))
    with pytest.raises(Interrupted, match="checkpoint saved at epoch 1, step 3"):
        trainer.fit()
    run_dir = trainer.session.run_dir
    assert position(run_dir) == (0, 3, 3)
    monkeypatch.undo()
    train.Trainer(train.parse_request(["--resume", str(run_dir)])).fit()
    assert_same_state(run_dir, finished_run)
    assert [r["epoch"] for r in runs.read_run(run_dir).metrics if r["kind"] == "epoch"] == [1, 2]


def test_resuming_a_finished_run_says_how_to_train_longer(finished_run, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a resume's flags are validated too
        train.parse_request(["--resume", str(finished_run), "--lr", "-1"])
    assert exit_info.value.code == 2 and "--lr must be a positive number" in capsys.readouterr().err
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="has finished its 2 epochs; start a new run"):
        train.Trainer(train.parse_request(["--resume", str(finished_run)]))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = train.nt_xent
    calls = {"n": 0}

    def loss_that_explodes(*args, **kwargs):
        calls["n"] += 1
        value = original(*args, **kwargs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(train, "nt_xent", loss_that_explodes)
    trainer = train.Trainer(tiny_request(tmp_path))
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 2.*--resume .* --lr 0.001"):
        trainer.fit()
    run_dir = trainer.session.run_dir
    assert position(run_dir) == (1, 0, 3)  # the end-of-epoch-1 checkpoint, intact
    assert all(torch.isfinite(t).all() for t in load_state(run_dir)["model"].values()
               if t.is_floating_point())


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    original = Path.write_bytes
    calls = {"n": 0}

    def write_until_the_disk_is_full(self, data):
        calls["n"] += self.name == STATE_FILE
        if calls["n"] == 2:  # the end-of-epoch-2 checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_until_the_disk_is_full)
    trainer = train.Trainer(tiny_request(tmp_path))
    with pytest.raises(TrainingError, match="No space left on device.*Free disk space"):
        trainer.fit()
    assert position(trainer.session.run_dir) == (1, 0, 3)


def test_a_collapsed_encoder_raises_the_collapse_warning(tmp_path, capsys):
    """An encoder whose every BatchNorm has gamma = beta = 0 (frozen) outputs h = 0 for every image."""
    trainer = train.Trainer(tiny_request(tmp_path, "--epochs", "1", "--warmup-epochs", "0"))
    for module in trainer.model.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.zeros_(module.weight)
            module.weight.requires_grad_(False)
            module.bias.requires_grad_(False)
    trainer.fit()
    out = capsys.readouterr().out
    assert "warning: the representation is collapsing (std x sqrt(d) = 0.000" in out
    [row] = [r for r in runs.read_run(trainer.session.run_dir).metrics if r["kind"] == "epoch"]
    assert row["collapse_ratio"] == pytest.approx(0.0, abs=1e-9)


def test_a_healthy_run_raises_no_collapse_warning(finished_run):
    rows = [r for r in runs.read_run(finished_run).metrics if r["kind"] == "epoch"]
    assert all(r["collapse_ratio"] > 0.03 for r in rows)  # (the session's side: test_session.py)


def test_the_per_image_path_feeds_the_streams_images(tmp_path, monkeypatch):
    seen = []
    original = train.data.TwoViewDataset.__getitem__

    def record(self, index):
        seen.append(index)
        return original(self, index)

    monkeypatch.setattr(train.data.TwoViewDataset, "__getitem__", record)
    trainer = train.Trainer(tiny_request(tmp_path, "--augment-backend", "per-image", "--workers", "0",
                                         "--epochs", "1", "--warmup-epochs", "0"))
    trainer.fit()
    stream = trainer.session.stream
    expected = np.concatenate([stream.indices(0, step) for step in range(STEPS_PER_EPOCH)])
    np.testing.assert_array_equal(seen, expected)
    assert len(step_rows(trainer.session.run_dir)) == STEPS_PER_EPOCH


def test_help_shows_each_recipes_values_and_an_impossible_config_says_what_to_do(capsys):
    # As a script (not -m): the chapter's files work both ways.
    script = subprocess.run([sys.executable, "pytorch_simclr/train.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr[-2000:]
    for flag in ("--recipe", "--dataset", "--batch-size", "--temperature", "--resume",
                 "--precision", "--augment-backend", "--sync-bn"):
        assert flag in script.stdout
    assert "(default: None)" not in script.stdout
    assert "quick 40, cifar10" in " ".join(script.stdout.split())  # --epochs per recipe
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error: exit status 2
        train.main(["--batch-size", "1"])
    assert exit_.value.code == 2
    assert "--batch-size must be at least 2" in capsys.readouterr().err


def test_evaluate_writes_results_and_portable_weights(finished_run, capsys):
    code = chapter_evaluate.main([str(finished_run), "--max-train", "300", "--max-test", "100",
                                  "--no-label-efficiency", "--device", "cpu"])
    assert code == 0
    results = json.loads((finished_run / "evaluation.json").read_text())
    assert results["train_images"] == 300 and results["test_images"] == 100
    assert results["checkpoint"] == {"epoch": 2, "global_step": 6, "finished": True}
    # The kNN of the evaluation equals the training's kNN monitor on the same capped splits.
    epoch_rows = [r for r in runs.read_run(finished_run).metrics if r["kind"] == "epoch"]
    assert results["knn"]["top1"] == pytest.approx(epoch_rows[-1]["knn_top1"], abs=1e-12)
    assert "linear probe (standardized features): top-1" in capsys.readouterr().out

    config = json.loads((finished_run / "config.json").read_text())
    spec = resnet_spec(config["arch"], config["image_size"])
    _, metadata = weights.load_encoder(finished_run / "encoder.safetensors", expected_spec=spec)
    assert metadata["framework"] == "pytorch"
    trained = build_model(config)
    trained.load_state_dict(load_state(finished_run)["model"])
    imported = build_encoder(spec)
    import_encoder(finished_run / "encoder.safetensors", imported, spec)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(imported.eval()(x), trained.encoder.eval()(x))


def test_recalibrated_bn_evaluation_leaves_the_runs_portable_encoder_as_trained(finished_run):
    arguments = [str(finished_run), "--max-train", "300", "--max-test", "100", "--no-label-efficiency"]
    assert chapter_evaluate.main(arguments) == 0
    portable = finished_run / "encoder.safetensors"
    as_trained = portable.read_bytes()
    assert chapter_evaluate.main(arguments + ["--recalibrate-bn"]) == 0
    results = json.loads((finished_run / "evaluation-recalibrated-bn.json").read_text())
    assert results["bn_statistics"] == "training images"
    assert portable.read_bytes() == as_trained  # not overwritten by statistics it did not train with
    plain = json.loads((finished_run / "evaluation.json").read_text())
    assert results["knn"]["top1"] != plain["knn"]["top1"]  # the statistics were re-estimated


def test_the_pixels_baseline_is_the_knn_of_the_normalised_images_themselves(finished_run, capsys):
    from common.evaluate.flow import evaluation_splits
    from common.evaluate.knn import knn_accuracy

    portable = finished_run / "encoder.safetensors"
    exported = portable.stat().st_mtime_ns if portable.exists() else None
    code = chapter_evaluate.main([str(finished_run), "--pixels", "--max-train", "300", "--max-test",
                                  "100", "--no-label-efficiency"])
    assert code == 0
    results = json.loads((finished_run / "evaluation-pixels.json").read_text())
    assert results["encoder"] == "pixels" and results["checkpoint"] is None
    config = json.loads((finished_run / "config.json").read_text())
    train_x, train_y, test_x, test_y = evaluation_splits(config, 300, 100)
    normalize = augment.preset(config["augment"], config["image_size"]).view1.normalize

    def pixels(images):  # the whole 32 px image, normalised, flattened: no encoder
        return ((images / 255.0 - normalize.mean) / normalize.std).reshape(len(images), -1)

    expected = knn_accuracy(pixels(train_x), train_y, pixels(test_x), test_y, k=config["knn_k"],
                            temperature=config["knn_temperature"])
    assert results["knn"]["top1"] == pytest.approx(expected["top1"], abs=1e-12)
    # h = z = the flattened view: the two spaces' diagnostics are one
    assert results["diagnostics"]["representation"] == results["diagnostics"]["projection"]
    assert results["diagnostics"]["representation"]["effective_rank"] > 10
    assert (portable.stat().st_mtime_ns if portable.exists() else None) == exported  # nothing exported
    with pytest.raises(SystemExit) as exit_:
        chapter_evaluate.main([str(finished_run), "--pixels", "--recalibrate-bn"])
    assert exit_.value.code == 2
    assert "the pixels (--pixels) have no BatchNorm statistics" in capsys.readouterr().err


def test_torchrun_two_processes_train_on_shards_of_the_same_global_batch(tmp_path):
    """`torchrun --nproc-per-node 2 -m pytorch_simclr.train` (gloo): the logged loss of step 0, the
    global batch's (the mean of both ranks' losses, as the other chapters log it), is recomputed
    here from the stream's shards, each rank's BatchNorm over its own 2n views."""
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "-m", "pytorch_simclr.train", "--epochs", "1",
         "--max-steps-per-epoch", "2", "--batch-size", "32", "--log-every", "1", "--knn-every", "0",
         "--knn-max-train", "300", "--knn-max-test", "100", "--device", "cpu", "--output-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    [run_dir] = tmp_path.iterdir()
    config = runs.read_run(run_dir).config
    images, _ = train.data.load_images(config, "train")
    pair = augment.preset(config["augment"], config["image_size"])
    step = DataStream(len(images), (32, 32), 32, pair, config["seed"], 2).step(0, 0)
    torch.manual_seed(config["seed"])
    model = build_model(config)
    projections = []
    for rank in range(2):
        shard = step.shard(rank, 2)
        view1, view2 = BatchAugmenter(pair, "cpu")(torch.from_numpy(images[shard.indices]), shard.view1,
                                                   shard.view2)
        projections.append(model(torch.cat([view1, view2]))[1])
    rank_losses = []
    with torch.no_grad():
        candidates = torch.nn.functional.normalize(torch.cat(projections), dim=1)
        for rank in range(2):  # rank r's 32 views are rows 32 r ... 32 r + 31 of the candidates
            local = torch.nn.functional.normalize(projections[rank], dim=1)
            logits = local @ candidates.T / config["temperature"]
            rows, offset = torch.arange(32), 32 * rank
            logits[rows, rows + offset] = float("-inf")
            rank_losses.append(torch.nn.functional.cross_entropy(logits, (rows + 16) % 32 + offset))
    assert abs(rank_losses[0] - rank_losses[1]) > 1e-3  # so rank 0's alone would not pass
    expected = ((rank_losses[0] + rank_losses[1]) / 2).item()
    assert step_rows(run_dir)[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert len(step_rows(run_dir)) == 2 and position(run_dir) == (1, 0, 2)


def test_random_init_evaluation_exports_the_encoder_a_new_run_can_start_from(finished_run, tmp_path):
    """``evaluate --random-init`` writes the run's starting encoder; ``train --init-encoder FILE``
    starts a new run's encoder (not its head) from such a file, and the random-init baseline of
    such a run is then the file, not the seed's draw."""
    from pytorch_simclr.model import encoder_to_portable

    def evaluate_random_init(run_dir: Path) -> dict[str, np.ndarray]:
        assert chapter_evaluate.main([str(run_dir), "--random-init", "--max-train", "300",
                                      "--max-test", "100", "--no-label-efficiency", "--device",
                                      "cpu", "--output", str(run_dir / "random-init.json")]) == 0
        return weights.load_encoder(run_dir / runs.RANDOM_INIT_ENCODER_FILE)[0]

    def portable(model) -> dict[str, np.ndarray]:
        return encoder_to_portable(model.encoder, spec)

    config = runs.read_run(finished_run).config
    spec = encoder_spec(config)
    drawn = train.Trainer(tiny_request(tmp_path / "drawn")).model  # the same seed: the same draw
    drawn_tensors = evaluate_random_init(finished_run)
    assert all(np.array_equal(value, drawn_tensors[name]) for name, value in portable(drawn).items())

    rng = np.random.default_rng(1)
    other = {name: (np.abs(rng.normal(size=t.shape)) + 0.5 if name.endswith("moving_variance") else
                    rng.normal(size=t.shape)).astype(np.float32) for name, t in drawn_tensors.items()}
    other_file = tmp_path / "other.safetensors"
    weights.save_encoder(other_file, other, spec, config["image_size"], framework="numpy")
    started = train.Trainer(tiny_request(tmp_path / "started", "--init-encoder", str(other_file))).model
    assert all(np.array_equal(value, other[name]) for name, value in portable(started).items())
    for ours, theirs in zip(started.head.state_dict().values(), drawn.head.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    started_run = tmp_path / "started-run"  # what its run directory says is all the baseline reads
    started_run.mkdir()
    (started_run / runs.CONFIG_FILE).write_text(json.dumps({**config, "init_encoder": str(other_file)}))
    baseline = evaluate_random_init(started_run)
    assert all(np.array_equal(baseline[name], other[name]) for name in other)


def test_workers_on_the_resume_of_a_batched_run_are_refused_with_advice_that_works(finished_run, capsys):
    with pytest.raises(SystemExit):
        train.parse_request(["--resume", str(finished_run), "--workers", "3"])
    err = capsys.readouterr().err
    assert "--workers 3 has no effect" in err and "leave --workers out" in err
    assert "add --augment-backend" not in err  # a resume refuses that flag


def test_flags_that_would_do_nothing_or_crash_are_refused(tmp_path, monkeypatch, capsys):
    from common.errors import ConfigError
    from pytorch_simclr import SUPERVISED

    for workers in ("4", "2"):  # the batched views run no DataLoader (2 is the default: said, too)
        with pytest.raises(SystemExit):
            train.parse_request(["--workers", workers])
        assert f"--workers {workers} has no effect with --augment-backend batched" in capsys.readouterr().err
    assert train.parse_request(["--workers", "4", "--augment-backend", "per-image"]).config["workers"] == 4
    with pytest.raises(SystemExit):  # cross-entropy has no temperature
        train.parse_request(["--temperature", "0.3"], SUPERVISED)
    assert "--temperature 0.3 has no effect in python -m pytorch_simclr.supervised" in capsys.readouterr().err
    # torchrun on the CPU: PyTorch's SyncBatchNorm would raise in the first training step
    monkeypatch.setattr(train.distributed, "setup_process", lambda device: (torch.device("cpu"), 0, 2))
    with pytest.raises(ConfigError, match="--sync-bn needs GPUs"):
        train.Trainer(tiny_request(tmp_path, "--sync-bn"))
