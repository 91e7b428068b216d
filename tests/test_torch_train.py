"""The SimCLR training program: run directory, exact resume, Ctrl-C, NaN, full disk, CLI, evaluation."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import runs, weights
from common.arch import resnet_spec
from pytorch_simclr import evaluate as chapter_evaluate
from pytorch_simclr import train
from pytorch_simclr.model import build_encoder, import_encoder

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3


def tiny_config(output_dir: Path, *extra: str) -> dict:
    """The quick recipe cut down to seconds: 2 epochs of 3 steps of 32 images, small kNN sets."""
    config = train.parse_config([
        "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32",
        "--max-steps-per-epoch", str(STEPS_PER_EPOCH), "--workers", "0", "--log-every", "1",
        "--knn-every", "1", "--device", "cpu",
        "--output-dir", str(output_dir), *extra,
    ])
    config.update(knn_max_train=300, knn_max_test=100, knn_k=10)
    return config


def step_losses(run_dir: Path) -> list[float]:
    """The per-step losses of a run (rows logged by the step loop carry images_per_sec)."""
    return [row["loss"] for row in runs.read_run(run_dir).metrics
            if row.get("images_per_sec") is not None]


def load_checkpoint(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    config = tiny_config(tmp_path_factory.mktemp("runs"))
    summary = train.Trainer(config).fit()
    assert summary["steps"] == 2 * STEPS_PER_EPOCH
    return Path(config["run_dir"])


def test_a_run_writes_the_shared_run_directory_format(finished_run):
    run = runs.read_run(finished_run)
    assert not run.truncated
    assert run.config["framework"] == "pytorch" and run.config["method"] == "simclr"
    assert run.config["batch_size"] == 32 and run.config["augment"] == "simclr"
    assert "torch" in run.config["library_versions"]
    losses = step_losses(finished_run)
    assert len(losses) == 2 * STEPS_PER_EPOCH
    assert all(np.isfinite(losses))
    # NT-Xent of 2N = 64 views lies in (0, log(2N - 1) + 2/T]; at the start it is near log(63).
    assert 0 < losses[0] < np.log(63) + 2 / run.config["temperature"]
    knn_rows = [row for row in run.metrics if row.get("knn_top1") is not None]
    assert [row["epoch"] for row in knn_rows] == [0, 1, 2]  # random init, then every epoch
    assert all(0.0 <= row["knn_top1"] <= 1.0 for row in knn_rows)
    for row in run.metrics:
        assert set(runs.METRIC_KEYS) <= set(row)
    assert run.summary["knn_top1"] == knn_rows[-1]["knn_top1"]
    assert run.summary["knn_top1_init"] == knn_rows[0]["knn_top1"]
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    state = load_checkpoint(finished_run)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 6)


def test_learning_rate_follows_the_per_step_schedule(finished_run):
    from common.schedules import warmup_cosine

    config = runs.read_run(finished_run).config
    lrs = [row["lr"] for row in runs.read_run(finished_run).metrics
           if row.get("images_per_sec") is not None]
    total, warmup = 2 * STEPS_PER_EPOCH, round(config["warmup_epochs"] * STEPS_PER_EPOCH)
    expected = [warmup_cosine(step, total, warmup, config["lr"]) for step in range(1, total + 1)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_ctrl_c_saves_a_checkpoint_and_resume_reproduces_the_losses(finished_run, tmp_path,
                                                                    monkeypatch):
    original_step = train.Trainer.train_step
    calls = {"n": 0}

    def interrupted_step(self, view1, view2):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 2: mid-epoch
            raise KeyboardInterrupt
        return original_step(self, view1, view2)

    monkeypatch.setattr(train.Trainer, "train_step", interrupted_step)
    config = tiny_config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train.Trainer(config).fit()
    run_dir = Path(config["run_dir"])
    state = load_checkpoint(run_dir)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)

    monkeypatch.setattr(train.Trainer, "train_step", original_step)
    resumed = train.parse_config(["--resume", str(run_dir)])
    train.Trainer(resumed).fit()
    assert step_losses(run_dir) == step_losses(finished_run)  # bit for bit, on CPU
    np.testing.assert_array_equal(
        load_checkpoint(run_dir)["model"]["head.0.weight"].numpy(),
        load_checkpoint(finished_run)["model"]["head.0.weight"].numpy(),
    )


def test_resuming_a_finished_run_asks_for_more_epochs(finished_run):
    config = train.parse_config(["--resume", str(finished_run)])
    with pytest.raises(train.TrainingError, match="pass a larger --epochs"):
        train.Trainer(config)


def test_resume_refuses_to_change_the_recipe_of_a_run(finished_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_config(["--resume", str(finished_run), "--lr", "0.5"])
    assert exit_info.value.code == 2
    assert "--lr 0.5 differs from the saved" in capsys.readouterr().err


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original_loss = train.nt_xent
    calls = {"n": 0}

    def loss_that_explodes(*args, **kwargs):
        calls["n"] += 1
        value = original_loss(*args, **kwargs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(train, "nt_xent", loss_that_explodes)
    config = tiny_config(tmp_path)
    with pytest.raises(train.TrainingError, match=r"loss became nan at epoch 2, step 2.*--resume"):
        train.Trainer(config).fit()
    state = load_checkpoint(config["run_dir"])  # the end-of-epoch-1 checkpoint, intact
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 3)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    original_write = runs.atomic_write_bytes
    calls = {"n": 0}

    def write_until_disk_is_full(path, data):
        calls["n"] += Path(path).name == "last.pt"
        if calls["n"] == 2:  # the end-of-epoch-2 checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_write(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", write_until_disk_is_full)
    config = tiny_config(tmp_path)
    with pytest.raises(train.TrainingError, match="No space left on device.*Free disk space"):
        train.Trainer(config).fit()
    assert load_checkpoint(config["run_dir"])["epoch"] == 1


def test_the_per_image_torchvision_path_trains_too(tmp_path):
    config = tiny_config(tmp_path, "--augment-backend", "per-image", "--epochs", "1",
                         "--warmup-epochs", "0")
    summary = train.Trainer(config).fit()
    losses = step_losses(Path(config["run_dir"]))
    assert len(losses) == STEPS_PER_EPOCH and all(np.isfinite(losses))
    assert 0.0 <= summary["knn_top1"] <= 1.0


def test_help_runs_as_a_script_and_an_impossible_config_says_what_to_do():
    script = subprocess.run([sys.executable, "pytorch_simclr/train.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr[-2000:]
    for flag in ("--recipe", "--dataset", "--batch-size", "--temperature", "--resume",
                 "--precision", "--augment-backend", "--sync-bn"):
        assert flag in script.stdout
    bad = subprocess.run([sys.executable, "-m", "pytorch_simclr.train", "--batch-size", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--batch-size must be at least 2" in bad.stderr


def test_evaluate_writes_results_and_portable_weights(finished_run, capsys):
    code = chapter_evaluate.main([str(finished_run), "--max-train", "300", "--max-test", "100",
                                  "--no-label-efficiency", "--device", "cpu"])
    assert code == 0
    results = json.loads((finished_run / "evaluation.json").read_text())
    assert 0.0 <= results["knn"]["top1"] <= results["knn"]["top5"] <= 1.0
    assert 0.0 <= results["linear_probe"]["top1"] <= 1.0
    assert results["train_images"] == 300 and results["test_images"] == 100
    assert 0.0 < results["diagnostics"]["representation"]["collapse_ratio"] < 2.0
    assert "linear probe: top-1" in capsys.readouterr().out

    config = json.loads((finished_run / "config.json").read_text())
    spec = resnet_spec(config["arch"], config["image_size"])
    _, metadata = weights.load_encoder(finished_run / "encoder.safetensors", expected_spec=spec)
    assert metadata["framework"] == "pytorch"
    trained = train.build_model(config)
    trained.load_state_dict(load_checkpoint(finished_run)["model"])
    imported = build_encoder(spec)
    import_encoder(finished_run / "encoder.safetensors", imported, spec)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(imported.eval()(x), trained.encoder.eval()(x))


def test_torchrun_trains_with_two_cpu_processes(tmp_path):
    """`torchrun --nproc-per-node 2 -m pytorch_simclr.train` (gloo): rank 0 alone writes the run."""
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "-m", "pytorch_simclr.train", "--epochs", "1",
         "--max-steps-per-epoch", "2", "--batch-size", "32", "--log-every", "1",
         "--device", "cpu", "--output-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    [run_dir] = tmp_path.iterdir()
    losses = step_losses(run_dir)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert load_checkpoint(run_dir)["global_step"] == 2


def test_collapsed_embeddings_raise_the_collapse_warning(tmp_path, monkeypatch, capsys):
    original_step = train.Trainer.train_step

    def collapsing_step(self, view1, view2):
        loss = original_step(self, view1, view2)
        self.last_embeddings = torch.ones_like(self.last_embeddings)  # every image, one point
        return loss

    monkeypatch.setattr(train.Trainer, "train_step", collapsing_step)
    train.Trainer(tiny_config(tmp_path, "--epochs", "1", "--warmup-epochs", "0")).fit()
    out = capsys.readouterr().out
    assert "warning: the embeddings are collapsing (std x sqrt(d) = 0.000" in out
    rows = [r for r in runs.read_run(next(tmp_path.iterdir())).metrics if "collapse_ratio" in r]
    assert rows and rows[-1]["collapse_ratio"] == pytest.approx(0.0, abs=1e-9)
