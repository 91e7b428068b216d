"""The command line every chapter's ``train.py`` shares.

Every chapter answers to the same core flags (``--recipe``, ``--dataset``, ``--epochs``, ...), so the
same invocation trains SimCLR in PyTorch, MoCo in TensorFlow or BYOL in Keras. A chapter adds its own
framework-only flags (``--compile``, ``--sync-bn``, ...) to the parser this module builds.

Resolution order: recipe (``common/recipes.py``) < the flags given on the command line. Flags default
to ``None`` so we can tell "given" from "not given"; the resolved configuration is validated here once,
with one clear message per impossible setting.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from common import recipes, runs

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")

# flag -> (type, help); dest is the flag name with dashes as underscores, equal to the config key.
CORE_FLAGS: dict[str, tuple[type, str]] = {
    "--dataset": (str, "dataset name (python -m common.datasets lists them)"),
    "--data-dir": (str, "where datasets live (default: $DATA_DIR or ~/.cache/ssl-three-ways/data)"),
    "--arch": (str, "encoder: resnet18, resnet34, resnet50 or resnet18_small"),
    "--image-size": (int, "side of the square views in pixels"),
    "--epochs": (int, "training epochs"),
    "--batch-size": (int, "global batch size (images; each gives two views)"),
    "--optimizer": (str, f"one of {', '.join(OPTIMIZERS)}"),
    "--lr": (float, "base learning rate (scaled by --lr-scaling)"),
    "--lr-scaling": (str, "linear (lr*B/256), sqrt (lr*sqrt(B)) or none"),
    "--weight-decay": (float, "weight decay"),
    "--warmup-epochs": (float, "linear warm-up length in epochs"),
    "--temperature": (float, "softmax temperature of the contrastive loss"),
    "--workers": (int, "data-loading worker processes"),
    "--device": (str, "auto, cpu, cuda, cuda:1, ..."),
    "--precision": (str, f"one of {', '.join(PRECISIONS)} (bf16/fp16: autocast on GPU)"),
    "--seed": (int, "random seed"),
    "--output-dir": (str, "folder that receives the run directory (default: runs/)"),
    "--knn-every": (int, "epochs between kNN monitor evaluations (0: only at the end)"),
    "--max-steps-per-epoch": (int, "cap the steps of each epoch (quick experiments)"),
    "--log-every": (int, "optimisation steps between metrics.jsonl / TensorBoard rows"),
}


class ConfigError(ValueError):
    """An impossible configuration; the message says which setting and what to do."""


def build_parser(method: str, prog: str, description: str) -> argparse.ArgumentParser:
    """The shared parser; a chapter adds its own flags to the returned parser before parsing.

    ``prog`` is how the chapter is run (e.g. ``python -m pytorch_simclr.train``), for ``--help``.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        default="quick",
        choices=recipes.recipe_names(method),
        help="named configuration that the other flags override",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run in RUN_DIR from its last checkpoint (with its saved config)",
    )
    core = parser.add_argument_group("core flags (the same in every chapter)")
    for flag, (kind, help_text) in CORE_FLAGS.items():
        core.add_argument(flag, type=kind, default=None, help=help_text)
    return parser


def resolve_config(
    method: str, args: argparse.Namespace, chapter_defaults: dict | None = None
) -> dict:
    """Merge recipe, chapter defaults and the given flags into one validated configuration.

    With ``--resume``, the run's saved configuration is the base and only ``--epochs`` (to extend
    a run) and machine settings (device, workers) may change.
    """
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("recipe", "resume")}
    if args.resume:
        config = _load_resumed_config(Path(args.resume), given)
    else:
        config = recipes.get_recipe(method, args.recipe)
        for key, value in (chapter_defaults or {}).items():
            config.setdefault(key, value)
        if "dataset" in given and "image_size" not in given:
            config["image_size"] = _native_image_size(given["dataset"], config["image_size"])
        config.update(given)
        if "epochs" in given and "warmup_epochs" not in given:
            # A shortened run keeps a recipe's warm-up only as far as it fits.
            config["warmup_epochs"] = min(config["warmup_epochs"], config["epochs"])
    validate(config)
    return config


RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "data_dir")


def _load_resumed_config(run_dir: Path, given: dict) -> dict:
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(
            f"--resume {run_dir}: no config.json there. Pass the run directory that train.py "
            "printed at start (it holds config.json, metrics.jsonl and checkpoints/)."
        )
    config = json.loads(config_path.read_text())
    for key in runs.BOOKKEEPING_KEYS:  # written by the RunWriter, not part of the configuration
        config.pop(key, None)
    for key, value in given.items():
        if key in RESUMABLE_OVERRIDES:
            config[key] = value
        elif config.get(key) != value:
            raise ConfigError(
                f"--resume keeps the run's saved configuration, but --{key.replace('_', '-')} "
                f"{value} differs from the saved {config.get(key)!r}; only "
                f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE_OVERRIDES)} may change. "
                "Start a new run to change anything else."
            )
    config["run_dir"] = str(run_dir)
    return config


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
    require(
        config["batch_size"] >= 2,
        f"--batch-size must be at least 2: a contrastive batch needs negatives "
        f"(got {config['batch_size']})",
    )
    require(
        math.isfinite(config["lr"]) and config["lr"] > 0,
        f"--lr must be a positive number (got {config['lr']})",
    )
    require(config["weight_decay"] >= 0, "--weight-decay must be >= 0")
    require(
        0 <= config["warmup_epochs"] <= config["epochs"],
        f"--warmup-epochs {config['warmup_epochs']} must lie between 0 and --epochs "
        f"{config['epochs']}",
    )
    if "temperature" in config:
        require(
            config["temperature"] > 0,
            f"--temperature must be positive (got {config['temperature']}); typical: 0.1-0.5",
        )
    require(config["workers"] >= 0, "--workers must be >= 0")
    require(config["image_size"] >= 8, f"--image-size {config['image_size']} is too small (>= 8)")
    require(config["knn_every"] >= 0, "--knn-every must be >= 0")
    require(config["log_every"] >= 1, "--log-every must be at least 1")
    require(
        config["optimizer"] in OPTIMIZERS,
        f"--optimizer {config['optimizer']!r} is unknown; choose one of {', '.join(OPTIMIZERS)}",
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
