"""The shared command line and the named recipes (common/cli.py, common/recipes.py)."""


from pathlib import Path

import pytest

from common import cli, recipes, runs
from common.chapter import Chapter

CHAPTER = Chapter("pytorch", "simclr", "pytorch_simclr", "SimCLR / PyTorch")


def request(*argv: str, chapter: Chapter = CHAPTER) -> cli.RunRequest:
    return cli.resolve(chapter, cli.build_parser(chapter, "test").parse_args(list(argv)))


def resolve(*argv: str) -> dict:
    return request(*argv).config


@pytest.mark.parametrize("name", ["quick", "cifar10", "stl10"])
def test_every_recipe_resolves_to_a_valid_complete_configuration(name):
    config = resolve("--recipe", name)
    assert config["recipe"] == name
    assert set(recipes.RUN_DEFAULTS) | set(recipes.OPTIMIZER_DEFAULTS) <= set(config)
    assert config["source"]  # every recipe names where its numbers come from


def test_recipes_carry_their_published_settings():
    cifar = recipes.get_recipe("simclr", "cifar10")  # google-research/simclr's CIFAR-10 command
    assert (cifar["arch"], cifar["batch_size"], cifar["optimizer"], cifar["lr"]) == (
        "resnet18", 512, "lars", 1.0)
    assert (cifar["temperature"], cifar["weight_decay"], cifar["epochs"]) == (0.5, 1e-6, 1000)
    stl = recipes.get_recipe("simclr", "stl10")
    assert (stl["train_split"], stl["image_size"], stl["temperature"], stl["lr_scaling"]) == (
        "unlabeled", 96, 0.1, "sqrt")
    quick = recipes.get_recipe("simclr", "quick")
    assert quick["dataset"] in ("digits", "shapes") and quick["arch"] == "resnet18_small"


def test_flags_override_the_recipe_and_a_dataset_brings_its_image_size():
    config = resolve("--recipe", "cifar10", "--epochs", "30", "--lr", "0.1", "--dataset", "stl10")
    assert (config["epochs"], config["lr"], config["image_size"]) == (30, 0.1, 96)
    assert resolve("--dataset", "stl10", "--image-size", "64")["image_size"] == 64


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "1"], "--batch-size must be at least 2"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--temperature", "0"], "--temperature must be a positive number"),
        (["--temperature", "inf"], "--temperature must be a positive number"),
        (["--weight-decay", "nan"], "--weight-decay must be a number >= 0"),
        (["--dataset", "imagefolder"], "--dataset imagefolder needs --data-dir PATH"),
        (["--dataset", "stl10", "--knn-test-split", "unlabeled", "--knn-train-split", "nope"],
         "--knn-train-split 'nope': stl10 has no such split"),
        (["--knn-train-split", "test"], "--knn-train-split and --knn-test-split are both 'test'"),
        (["--knn-max-train", "0"], "--knn-max-train must be at least 1 .got 0."),
        (["--knn-max-test", "-5"], "--knn-max-test must be at least 1 .got -5."),
        (["--arch", "vgg16"], "--arch 'vgg16' is unknown"),
        (["--dataset", "mnist"], "--dataset 'mnist' is unknown"),
        (["--precision", "fp8"], "--precision 'fp8' is unknown"),
        (["--seed", "-1"], "--seed must be 0 or more"),
        (["--epochs", "2", "--warmup-epochs", "5"], "--warmup-epochs 5.0 must lie between 0"),
    ],
)
def test_impossible_configurations_say_what_is_wrong(argv, message):
    with pytest.raises(cli.ConfigError, match=message.replace("(", r"\(")):
        resolve(*argv)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(recipes.UnknownRecipeError, match="quick, cifar10, stl10"):
        recipes.get_recipe("simclr", "imagenet")


def test_resume_is_an_explicit_request_that_keeps_the_saved_configuration(tmp_path):
    saved = resolve("--epochs", "3")
    assert request("--epochs", "3").resume is None
    with runs.RunWriter(tmp_path, saved, framework="pytorch", method="simclr"):
        pass
    resumed = request("--resume", str(tmp_path), "--epochs", "5", "--workers", "0", "--lr", str(saved["lr"]))
    assert resumed.resume == tmp_path
    assert resumed.changed == {"epochs": (3, 5), "workers": (2, 0)}  # repeating a value is no change
    assert resumed.config["epochs"] == 5 and resumed.config["lr"] == saved["lr"]
    assert "library_versions" not in resumed.config  # bookkeeping stays in config.json
    with pytest.raises(cli.ConfigError, match="--temperature 0.9 differs from the saved"):
        resolve("--resume", str(tmp_path), "--temperature", "0.9")
    with pytest.raises(cli.ConfigError, match="keeps the run's recipe 'quick'; --recipe cifar10"):
        resolve("--resume", str(tmp_path), "--recipe", "cifar10")
    with pytest.raises(cli.ConfigError, match="no config.json there"):
        resolve("--resume", str(tmp_path / "missing"))
    byol = Chapter("keras", "byol", "keras_byol", "BYOL / Keras")  # another chapter's program
    with pytest.raises(cli.ConfigError, match="it is a pytorch/simclr run, not a keras/byol one; "
                                              "resume it with the training program that started it"):
        request("--resume", str(tmp_path), chapter=byol)
    (tmp_path / "config.json").write_text('{"epochs": 3, "lr"')  # cut by a crash or an editor
    with pytest.raises(cli.ConfigError, match="cannot be read.*damaged"):
        resolve("--resume", str(tmp_path))


def test_the_zero_init_residual_ablation_is_a_flag_a_resume_keeps(tmp_path):
    # The project's one initialisation (common/arch.py) in every recipe; --no- turns it off.
    assert resolve()["zero_init_residual"] is True
    assert resolve("--recipe", "cifar10")["zero_init_residual"] is True
    saved = resolve("--no-zero-init-residual")
    assert saved["zero_init_residual"] is False
    with runs.RunWriter(tmp_path, saved, framework="pytorch", method="simclr"):
        pass
    assert request("--resume", str(tmp_path)).config["zero_init_residual"] is False
    with pytest.raises(cli.ConfigError, match="--zero-init-residual True differs from the saved False"):
        resolve("--resume", str(tmp_path), "--zero-init-residual")


def test_new_run_directories_never_collide(tmp_path):
    config = resolve("--output-dir", str(tmp_path))
    first = cli.new_run_dir(config, "pytorch", "simclr")
    first.mkdir(parents=True)
    second = cli.new_run_dir(config, "pytorch", "simclr")
    assert second != first and second.parent == tmp_path
    assert first.name.startswith("pytorch-simclr-quick-")


def test_a_shortened_run_keeps_the_recipe_warm_up_as_a_fraction_of_the_run():
    # SimCLR's cifar10 recipe: 10 warm-up epochs of 1000. Cut to 4 epochs, the run warms up for 1%
    # of its length (0.04 epochs), not for all 4 epochs (a rate that never decays).
    assert resolve("--recipe", "cifar10", "--epochs", "4")["warmup_epochs"] == pytest.approx(0.04)
    assert resolve("--recipe", "cifar10", "--epochs", "400")["warmup_epochs"] == pytest.approx(4)
    assert resolve("--epochs", "3")["warmup_epochs"] == pytest.approx(0.15)  # quick: 2 of 40
    # A longer run keeps the recipe's warm-up in epochs, as the sources do; a given one is kept.
    assert resolve("--epochs", "80")["warmup_epochs"] == 2
    assert resolve("--epochs", "3", "--warmup-epochs", "1")["warmup_epochs"] == 1


def test_init_encoder_must_fit_the_run_and_a_resume_no_longer_needs_it(tmp_path):
    import numpy as np

    from common import weights
    from common.arch import resnet_spec, tensor_shapes

    def portable_file(arch: str) -> str:
        spec = resnet_spec(arch, 32)
        path = tmp_path / f"{arch}.safetensors"
        weights.save_encoder(path, {name: np.ones(shape, np.float32)
                                    for name, shape in tensor_shapes(spec).items()}, spec, 32,
                             framework="numpy")
        return str(path)

    with pytest.raises(cli.ConfigError, match="--init-encoder .*missing.safetensors: no such file"
                                              ".*evaluate RUN_DIR"):
        resolve("--init-encoder", str(tmp_path / "missing.safetensors"))
    with pytest.raises(cli.ConfigError, match="holds resnet10_small .* fits --arch resnet10_small "
                                              "--image-size 32: train --init-encoder with"):
        resolve("--init-encoder", portable_file("resnet10_small"))  # the quick recipe: resnet18_small
    assert resolve()["init_encoder"] is None
    fitting = portable_file("resnet18_small")
    saved = resolve("--init-encoder", fitting)
    assert saved["init_encoder"] == fitting
    with runs.RunWriter(tmp_path / "run", saved, framework="pytorch", method="simclr"):
        pass
    Path(fitting).unlink()  # the checkpoint holds the weights now: the file is history
    assert request("--resume", str(tmp_path / "run")).config["init_encoder"] == fitting


def test_a_shared_flag_a_chapter_does_not_use_is_refused_not_ignored(capsys):
    from keras_byol import CHAPTER as KERAS
    from tensorflow_moco import CHAPTER as TENSORFLOW

    for chapter, argv, why in ((KERAS, ["--precision", "bf16"], "trains in float32"),
                               (KERAS, ["--workers", "0"], "made in the training step"),
                               (KERAS, ["--temperature", "0.5"], "has no temperature"),
                               (TENSORFLOW, ["--device", "cuda:1"], "--strategy chooses the devices")):
        with pytest.raises(SystemExit):
            cli.parse(cli.build_parser(chapter, "test"), chapter, argv)
        message = capsys.readouterr().err
        assert f"{argv[0]} {argv[1]} has no effect in {chapter.train_command}: " in message and why in message
    assert cli.parse(cli.build_parser(KERAS, "test"), KERAS, ["--device", "auto"]).config["device"] == "auto"
