"""The command line every chapter's ``train.py`` shares.

Every chapter answers to the same core flags (``--recipe``, ``--dataset``, ``--epochs``, ...), so the
same invocation trains SimCLR in PyTorch, MoCo in TensorFlow or BYOL in Keras. A chapter adds its own
framework-only flags (``--compile``, ``--sync-bn``, ...) to the parser this module builds, then calls
:func:`parse`, which returns a :class:`RunRequest`: the resolved configuration and the explicit
decision "new run" or "resume RUN_DIR".

Resolution order for a new run: recipe (``common/recipes/``) < chapter defaults < the flags given.
Flags default to ``None`` so we can tell "given" from "not given"; ``--help`` shows each recipe's
value instead. The resolved configuration is validated once, with one clear message per impossible
setting.

Resuming (``--resume RUN_DIR``): the run's saved configuration is the base. Only the keys of
:data:`RESUMABLE` may change; every other flag must repeat the saved value or be left out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import recipes, runs
from common.chapter import Chapter
from common.errors import ConfigError
from common.optim import LARS_VARIANTS, OPTIMIZERS
from common.recipes.provenance import format_table
from common.schedules import LR_SCALINGS

__all__ = ["ConfigError", "RESUMABLE", "RunRequest", "build_parser", "parse", "resolve"]

PRECISIONS = ("fp32", "bf16", "fp16")

# flag -> (type, help); dest is the flag name with dashes as underscores, equal to the config key.
CORE_FLAGS: dict[str, tuple[type, str]] = {
    "--dataset": (str, "dataset name (python -m common.datasets lists them)"),
    "--data-dir": (str, "where the dataset lives (imagefolder: the folder or .zip itself; others: "
                        "default $DATA_DIR or ~/.cache/ssl-three-ways/data)"),
    "--arch": (str, "encoder: resnet18, resnet34, resnet50, resnet18_small or resnet10_small"),
    "--zero-init-residual": (bool, "start the last BatchNorm gamma of every residual branch at 0 "
                                   "(--no-zero-init-residual: at 1, torchvision's default and "
                                   "haiku's for basic blocks)"),
    "--image-size": (int, "side of the square views in pixels"),
    "--epochs": (int, "training epochs"),
    "--batch-size": (int, "global batch size (images; each gives two views)"),
    "--optimizer": (str, f"one of {', '.join(OPTIMIZERS)}"),
    "--lr": (float, "base learning rate (scaled by --lr-scaling)"),
    "--lr-scaling": (str, "linear (lr*B/256), sqrt (lr*sqrt(B)) or none"),
    "--weight-decay": (float, "weight decay"),
    "--warmup-epochs": (float, "linear warm-up length in epochs (default: the recipe's, as the same "
                               "fraction of the run when --epochs shortens it)"),
    "--temperature": (float, "softmax temperature of the contrastive loss"),
    "--workers": (int, "data-loading worker processes"),
    "--device": (str, "auto, cpu, cuda, cuda:1, ..."),
    "--precision": (str, f"one of {', '.join(PRECISIONS)} (bf16/fp16: mixed precision on GPU)"),
    "--seed": (int, "random seed (data order, views, initialisation)"),
    "--init-encoder": (str, "start the encoder from this portable encoder file (any chapter's "
                            "RUN_DIR/encoder.safetensors or encoder-random-init.safetensors) instead "
                            "of the seed's random draw; the heads are still drawn from the seed"),
    "--output-dir": (str, "folder that receives the run directory"),
    "--knn-every": (int, "epochs between kNN monitor evaluations (0: only before training and at the end)"),
    "--knn-train-split": (str, "labelled split the kNN monitor indexes"),
    "--knn-test-split": (str, "labelled split the kNN monitor classifies"),
    "--knn-max-train": (int, "cap the images the kNN monitor indexes, a random subset drawn once "
                             "from the seed (left out: all of them; CIFAR-10's 60,000 images take "
                             "about a minute per pass on 2 CPU cores)"),
    "--knn-max-test": (int, "cap the images the kNN monitor classifies, likewise"),
    "--max-steps-per-epoch": (int, "cap the steps of each epoch (quick experiments)"),
    "--log-every": (int, "optimisation steps between metrics.jsonl / TensorBoard rows"),
}

PROJECTION_FLAGS: dict[str, tuple[type, str]] = {
    "--projection-dim": (int, "output width of the projection head"),
    "--projection-hidden-dim": (int, "hidden width of the projection head"),
}
METHOD_FLAGS: dict[str, dict[str, tuple[type, str]]] = {
    "simclr": {**PROJECTION_FLAGS,
               "--projection-layers": (int, "linear layers of the head (2: SimCLR v1, 3: v2)")},
    "mocov2": {**PROJECTION_FLAGS,
               "--projection-layers": (int, "linear layers of the head (1: MoCo v1, 2: v2's MLP)"),
               "--queue-size": (int, "K, negative keys in the queue (a multiple of the keys enqueued "
                                     "per step)"),
               "--key-momentum": (float, "m of the key encoder's moving average"),
               "--key-momentum-schedule": (str, "constant (MoCo) or cosine (m rises to 1 as BYOL's "
                                                "tau)"),
               "--symmetric-loss": (bool, "both views as queries, the two losses summed (the MoCo "
                                          "CIFAR demo's option)"),
               "--shuffle-bn": (bool, "compute the keys on a shuffled batch (MoCo's Shuffle BN)"),
               "--bn-splits": (int, "BatchNorm in this many groups on one device (the MoCo CIFAR "
                                    "demo's split BN)")},
    "byol": {**PROJECTION_FLAGS,
             "--predictor-hidden-dim": (int, "hidden width of the predictor (0: no predictor, the "
                                             "ablation that collapses)"),
             "--target-momentum": (float, "tau0, the target network's EMA rate at the start (it "
                                          "rises to 1)")},
}
"""The flags of each method's own settings, shared by every chapter that implements the method."""

RESUMABLE: dict[str, str] = {
    "epochs": "extends (or shortens) the run; the learning rate goes on without a jump: after the "
              "warm-up, a new half-cosine from the current rate to 0 at the new end",
    "lr": "scales every rate from the resume step on by new/old (to recover from a divergence)",
    "device": "where to train",
    "workers": "data-loading processes",
    "data_dir": "where the data lives; it must hold the same training images (checked)",
    "knn_every": "how often the kNN monitor runs",
    "log_every": "how often metrics rows are written",
}
"""Keys ``--resume`` may change, and what changing each one does (shown by ``--help``)."""


@dataclass(frozen=True)
class RunRequest:
    """What the command line asks for: a configuration, and a new run or the run to resume."""

    config: dict
    resume: Path | None = None  # the run directory to continue; None: a new run
    changed: dict = field(default_factory=dict)  # on resume: key -> (saved value, new value)
    given: frozenset = frozenset()  # the keys of the flags typed on the command line


def _recipe_values(method: str, key: str) -> str:
    """``quick 40, cifar10 1000, stl10 500`` (or ``all: 0.9``) for a flag's help."""
    values = {name: recipes.get_recipe(method, name).get(key) for name in recipes.recipe_names(method)}
    if len(set(map(repr, values.values()))) == 1:
        return f"all recipes: {next(iter(values.values()))}"
    return ", ".join(f"{name} {value}" for name, value in values.items())


def build_parser(chapter: Chapter, description: str) -> argparse.ArgumentParser:
    """The shared parser; a chapter adds its own flags to it, then calls :func:`parse`."""
    parser = argparse.ArgumentParser(prog=chapter.train_command, description=description)
    names = recipes.recipe_names(chapter.method)
    parser.add_argument("--recipe", default=None, choices=names,
                        help=f"named configuration that the other flags override (default {names[0]})")
    parser.add_argument("--show-recipe", action="store_true",
                        help="print the recipe's values next to its source's, with the reason for "
                             "each deviation, and exit (python -m common.recipes shows them all)")
    resumable = "; ".join(f"--{k.replace('_', '-')}: {v}" for k, v in RESUMABLE.items())
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its last checkpoint, with its saved "
                             f"configuration. Only these flags may change: {resumable}")
    core = parser.add_argument_group("core flags (the same in every chapter; in brackets: each "
                                     "recipe's value)")
    method = parser.add_argument_group(f"{chapter.method} flags (in brackets: each recipe's value)")
    for group, flags in ((core, CORE_FLAGS), (method, METHOD_FLAGS.get(chapter.method, {}))):
        for flag, (kind, help_text) in flags.items():
            key = flag[2:].replace("-", "_")
            help_text = f"{help_text} [{_recipe_values(chapter.method, key)}]"
            if kind is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                   help=help_text)
            else:
                group.add_argument(flag, type=kind, default=None, help=help_text)
    return parser


def parse(parser: argparse.ArgumentParser, chapter: Chapter, argv: list[str] | None = None,
          chapter_defaults: dict | None = None) -> RunRequest:
    """Parse ``argv`` and resolve it; an impossible request exits with argparse's usage error (2)."""
    args = parser.parse_args(argv)
    if args.show_recipe:
        name = args.recipe or recipes.recipe_names(chapter.method)[0]
        print(format_table(name, recipes.recipe(chapter.method, name)))
        parser.exit(0)
    try:
        request = resolve(chapter, args, chapter_defaults)
        refuse_unused(chapter, request.config)
        return request
    except ConfigError as error:
        parser.error(str(error))


def refuse_unused(chapter: Chapter, config: dict) -> None:
    """A shared flag this chapter does not use, set to anything but its default, is refused (a
    flag that silently does nothing would also be recorded in config.json as if it had)."""
    for key, why in chapter.unused_flags:  # (a flag no recipe sets is unused when absent)
        if config.get(key) != recipes.RUN_DEFAULTS.get(key):
            raise ConfigError(f"--{key.replace('_', '-')} {config[key]} has no effect in "
                              f"{chapter.train_command}: {why}")


def fitted_warmup(warmup_epochs: float, recipe_epochs: int, epochs: int) -> float:
    """The warm-up of a run of ``epochs`` cut from (or stretched beyond) a recipe of ``recipe_epochs``.

    A shorter run keeps the recipe's schedule shape: the warm-up is the same fraction of the run
    (SimCLR's `quick`, 2 of 40 epochs, warms up for 0.15 epochs of a 3-epoch run: 5 %, as the
    recipe does). Keeping it in epochs instead would leave ``--recipe cifar10 --epochs 4`` (10
    warm-up epochs) still warming up at its last step, at 40 % of the peak rate, with no cosine. A
    longer run keeps the recipe's warm-up in epochs, as the sources do (SimCLR, BYOL and solo-learn
    warm up for 10 epochs whatever the run's length).
    """
    return warmup_epochs * min(1.0, epochs / recipe_epochs)


def resolve(chapter: Chapter, args: argparse.Namespace, chapter_defaults: dict | None = None) -> RunRequest:
    """Merge the chapter's recipe, its defaults and the given flags into one validated request (a
    resumed run must have been trained by this chapter)."""
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("recipe", "resume", "show_recipe")}
    if args.resume:
        return _resume_request(Path(args.resume), given, args.recipe, chapter)
    config = new_run_config(chapter.method, args.recipe, given, chapter_defaults)
    if config["init_encoder"] is not None:
        # absolute: a later `evaluate --random-init` may run from another directory
        config["init_encoder"] = str(Path(config["init_encoder"]).expanduser().resolve())
        check_init_encoder(config)
    return RunRequest(config, given=frozenset(given))


def new_run_config(method: str, recipe: str | None, given: dict,
                   chapter_defaults: dict | None = None) -> dict:
    """The validated configuration of a new run of ``method``: its ``recipe`` (default: the
    first), the chapter's defaults, then the ``given`` flags (a dataset brings its native image
    size, a cut ``--epochs`` a fitted warm-up). ``common.compare`` checks its shared flags with it
    for every method before anything trains."""
    config = recipes.get_recipe(method, recipe or recipes.recipe_names(method)[0])
    recipe_epochs = config["epochs"]
    for key, value in (chapter_defaults or {}).items():
        config.setdefault(key, value)
    if "dataset" in given and "image_size" not in given:
        config["image_size"] = _native_image_size(given["dataset"], config["image_size"])
    config.update(given)
    if "epochs" in given and "warmup_epochs" not in given:
        config["warmup_epochs"] = fitted_warmup(config["warmup_epochs"], recipe_epochs, config["epochs"])
    validate(config)
    return config


def check_init_encoder(config: dict) -> None:
    """``--init-encoder FILE`` must be a portable encoder file of the run's encoder (arch and stem):
    checked before any framework builds a network, so a wrong file costs no start-up."""
    from common import arch, weights

    path = config["init_encoder"]
    if not Path(path).is_file():
        raise ConfigError(f"--init-encoder {path}: no such file. Every chapter's `evaluate RUN_DIR` "
                          f"writes RUN_DIR/{runs.ENCODER_FILE}, and with --random-init "
                          f"RUN_DIR/{runs.RANDOM_INIT_ENCODER_FILE} (the encoder before training)")
    try:
        weights.load_encoder(path, expected_spec=arch.encoder_spec(config))
    except weights.EncoderWeightsError as error:
        raise ConfigError(f"--init-encoder {path}: {error}") from error


def _resume_request(run_dir: Path, given: dict, recipe: str | None, chapter: Chapter) -> RunRequest:
    config_path = run_dir / runs.CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(
            f"--resume {run_dir}: no {runs.CONFIG_FILE} there. Pass the run directory that train.py "
            "printed at start (it holds config.json, metrics.jsonl and checkpoints/)."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ConfigError(f"--resume {run_dir}: {config_path} cannot be read ({error}); the run "
                          "directory is damaged. Start a new run.") from error
    if not isinstance(config, dict):
        raise ConfigError(f"--resume {run_dir}: {config_path} holds no configuration (a JSON "
                          f"{type(config).__name__}); the run directory is damaged. Start a new run.")
    trained_by = (config.get("framework"), config.get("method"))
    if trained_by != (chapter.framework, chapter.method):
        raise ConfigError(f"--resume {run_dir}: it is a {'/'.join(map(str, trained_by))} run, not a "
                          f"{chapter.framework}/{chapter.method} one; resume it with the training "
                          "program that started it")
    for key in runs.BOOKKEEPING_KEYS:  # written by the RunWriter, not part of the configuration
        config.pop(key, None)
    if recipe is not None and recipe != config.get("recipe"):
        raise ConfigError(f"--resume keeps the run's recipe {config.get('recipe')!r}; --recipe "
                          f"{recipe} asks for another. Start a new run to use it.")
    changed = {}
    for key, value in given.items():
        if config.get(key) == value:
            continue
        if key not in RESUMABLE:
            raise ConfigError(
                f"--resume keeps the run's saved configuration, but --{key.replace('_', '-')} "
                f"{value} differs from the saved {config.get(key)!r}; only "
                f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change. "
                "Start a new run to change anything else."
            )
        changed[key] = (config.get(key), value)
        config[key] = value
    try:
        if "epochs" in changed and 1 <= config["epochs"] < config["warmup_epochs"]:
            raise ConfigError(f"--resume {run_dir} --epochs {config['epochs']}: the run's warm-up "
                              f"lasts {config['warmup_epochs']:g} epochs and a resumed run keeps it; "
                              f"pass --epochs {math.ceil(config['warmup_epochs'])} or more, or start "
                              "a new run with a shorter --warmup-epochs")
        validate(config)
    except KeyError as error:
        raise ConfigError(f"--resume {run_dir}: {config_path} has no {error.args[0]!r}; it was "
                          "edited or damaged by hand. Restore it, or start a new run.") from error
    except TypeError as error:  # e.g. "epochs": "3", a string where a number belongs
        raise ConfigError(f"--resume {run_dir}: {config_path} holds a value of the wrong type "
                          f"({error}); it was edited or damaged by hand. Restore it, or start a "
                          "new run.") from error
    return RunRequest(config, resume=run_dir, changed=changed, given=frozenset(given))


def _native_image_size(dataset: str, fallback: int) -> int:
    from common import datasets

    try:
        height, _ = datasets.info(dataset).image_size
    except (KeyError, ValueError, TypeError):
        return fallback
    return height or fallback


def validate(config: dict) -> None:
    """Raise ConfigError with a clear message for the first impossible setting."""
    from common import arch, datasets

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

    require(config["epochs"] >= 1, f"--epochs must be at least 1 (got {config['epochs']})")
    require(config["seed"] >= 0, f"--seed must be 0 or more (got {config['seed']}): NumPy's "
                                 "generators, which draw the data order and the views, take no "
                                 "negative seed")
    require(
        config["batch_size"] >= 2,
        f"--batch-size must be at least 2: BatchNorm needs two images for its batch statistics, "
        f"and a contrastive batch its negatives (got {config['batch_size']})",
    )
    require(
        math.isfinite(config["lr"]) and config["lr"] > 0,
        f"--lr must be a positive number (got {config['lr']})",
    )
    require(math.isfinite(config["weight_decay"]) and config["weight_decay"] >= 0,
            f"--weight-decay must be a number >= 0 (got {config['weight_decay']})")
    require(
        0 <= config["warmup_epochs"] <= config["epochs"],
        f"--warmup-epochs {config['warmup_epochs']} must lie between 0 and --epochs "
        f"{config['epochs']}",
    )
    if "temperature" in config:
        require(
            math.isfinite(config["temperature"]) and config["temperature"] > 0,
            f"--temperature must be a positive number (got {config['temperature']}); typical: 0.1-0.5",
        )
    require(config["workers"] >= 0, "--workers must be >= 0")
    require(config["image_size"] >= 8, f"--image-size {config['image_size']} is too small (>= 8)")
    require(config["knn_every"] >= 0, "--knn-every must be >= 0")
    for key in ("knn_max_train", "knn_max_test"):
        problem = cap_problem(f"--{key.replace('_', '-')}", config[key])
        require(problem is None, problem)
    require(config["log_every"] >= 1, "--log-every must be at least 1")
    require(
        config["optimizer"] in OPTIMIZERS,
        f"--optimizer {config['optimizer']!r} is unknown; choose one of {', '.join(OPTIMIZERS)}",
    )
    require(
        config.get("lars_variant", "simclr") in LARS_VARIANTS,
        f"the recipe's lars_variant {config.get('lars_variant')!r} is unknown; choose one of "
        f"{', '.join(LARS_VARIANTS)}",
    )
    require(
        config["lr_scaling"] in LR_SCALINGS,
        f"--lr-scaling {config['lr_scaling']!r} is unknown; choose one of {', '.join(LR_SCALINGS)}",
    )
    require(
        config["precision"] in PRECISIONS,
        f"--precision {config['precision']!r} is unknown; choose one of {', '.join(PRECISIONS)}",
    )
    require(
        config["arch"] in arch.ARCHS,
        f"--arch {config['arch']!r} is unknown; choose one of {', '.join(arch.ARCHS)}",
    )
    require(
        config["dataset"] in datasets.names(),
        f"--dataset {config['dataset']!r} is unknown; choose one of {', '.join(datasets.names())} "
        "(python -m common.datasets lists them)",
    )
    if config.get("max_steps_per_epoch") is not None:
        require(config["max_steps_per_epoch"] >= 1, "--max-steps-per-epoch must be at least 1")
    if "queue_size" in config:  # MoCo
        keys_per_step = config["batch_size"] * (2 if config["symmetric_loss"] else 1)
        require(config["queue_size"] >= 1 and config["queue_size"] % keys_per_step == 0,
                f"--queue-size {config['queue_size']} must be a multiple of the {keys_per_step} keys "
                f"enqueued per step (--batch-size{', x2 with --symmetric-loss' * config['symmetric_loss']}): "
                f"e.g. {max(1, config['queue_size'] // keys_per_step) * keys_per_step}")
        require(0 <= config["key_momentum"] < 1, f"--key-momentum must lie in [0, 1) (got "
                                                  f"{config['key_momentum']}); MoCo uses 0.99-0.999")
        require(config["key_momentum_schedule"] in ("constant", "cosine"),
                "--key-momentum-schedule must be constant or cosine")
        require(config["bn_splits"] >= 1 and config["batch_size"] % config["bn_splits"] == 0,
                f"--bn-splits {config['bn_splits']} must divide --batch-size {config['batch_size']}")
    if "target_momentum" in config:  # BYOL
        require(0 <= config["target_momentum"] <= 1,
                f"--target-momentum must lie in [0, 1] (got {config['target_momentum']})")
    require(
        config["dataset"] != "imagefolder" or bool(config.get("data_dir")),
        "--dataset imagefolder needs --data-dir PATH: a folder or .zip laid out as "
        "PATH/<split>/<class>/*.jpg",
    )
    require(config["knn_train_split"] != config["knn_test_split"],
            f"--knn-train-split and --knn-test-split are both {config['knn_test_split']!r}: every "
            "test image would find itself among the neighbours, and the probes would train on the "
            "test labels; name two different splits")
    splits = datasets.info(config["dataset"]).splits
    if splits:  # image folders tell their splits only when they are read
        for key in ("train_split", "knn_train_split", "knn_test_split"):
            require(
                config[key] in splits,
                f"--{key.replace('_', '-')} {config[key]!r}: {config['dataset']} has no such split; "
                f"choose one of {', '.join(splits)}",
            )


def cap_problem(flag: str, cap: int | None, least: int = 1, why: str = "") -> str | None:
    """Why ``flag``'s cap on a number of images is impossible (below ``least``, the fewest images
    the capped step can use, for the reason ``why``), or None. The same words for the kNN monitor's
    caps here, an evaluation's and the comparison's (which passes its caps on to every evaluation)."""
    if cap is None or cap >= least:
        return None
    because = f": {why}" if why else ""
    return f"{flag} must be at least {least} (got {cap}){because}; leave it out to use every image"


def new_run_dir(config: dict, framework: str, method: str) -> Path:
    """``<output_dir>/<framework>-<method>-<recipe>-<YYYYmmdd-HHMMSS>``, never an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config["output_dir"]) / f"{framework}-{method}-{config['recipe']}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def format_config(config: dict) -> str:
    """The resolved configuration as aligned ``key: value`` lines, for printing at start."""
    width = max(len(k) for k in config)
    return "\n".join(f"  {key:<{width}} : {config[key]}" for key in sorted(config))
