"""Named training recipes, shared by every chapter under the same names.

A recipe is a complete, flat configuration: every chapter resolves ``--recipe NAME`` to the same
values, then applies the command-line overrides (``common/cli.py``), prints the result and saves it
in the run directory's ``config.json``.

- ``quick``: the default when ``train.py`` gets no arguments. A built-in dataset (no download), the
  small encoder, a few CPU minutes, offline. It is a smoke test that *learns*: the trained encoder's kNN
  accuracy is clearly above the random-init encoder's.
- ``cifar10``: ResNet-18 (CIFAR stem) on CIFAR-10 with the best published CIFAR settings for the
  method; the source is named in ``source``.
- ``stl10``: ResNet-18 (ImageNet stem, 96 px) on STL-10, pre-training on ``unlabeled``.

Learning rates are *base* rates: the effective rate is ``scaled_lr(lr, batch_size, lr_scaling)``
(``common/schedules.py``), so changing ``--batch-size`` keeps a recipe's meaning.
"""

from __future__ import annotations

import copy

# Keys every recipe has, whatever the method. Chapters may add framework-only keys of their own
# (e.g. PyTorch's ``compile``), but never change the meaning of these.
SHARED_DEFAULTS: dict = {
    "dataset": "digits",
    "train_split": "train",  # split used for self-supervised pre-training
    "knn_train_split": "train",  # labelled split the kNN monitor indexes ...
    "knn_test_split": "test",  # ... and the split it classifies
    "knn_max_train": None,  # cap on indexed images (None: all)
    "knn_max_test": None,
    "data_dir": None,
    "arch": "resnet18_small",
    "image_size": 32,
    "augment": "simclr",  # preset name in common/augment/presets.py
    "epochs": 10,
    "batch_size": 256,
    "optimizer": "lars",
    "lr": 0.3,
    "lr_scaling": "linear",  # linear: lr * B / 256; sqrt: lr * sqrt(B); none
    "weight_decay": 1e-6,
    "momentum": 0.9,
    "trust_coefficient": 0.001,  # LARS eta
    "lars_variant": "simclr",  # common/optim.py LARS_VARIANTS
    "warmup_epochs": 1,
    "projection_dim": 128,
    "projection_hidden_dim": 512,
    "projection_layers": 2,
    "knn_every": 1,  # epochs between kNN monitor runs (0: only at the end)
    "knn_k": 200,
    "knn_temperature": 0.1,
    "workers": 2,
    "device": "auto",
    "precision": "fp32",
    "seed": 0,
    "output_dir": "runs",
    "max_steps_per_epoch": None,  # None: one pass over the training split
    "log_every": 10,  # optimisation steps between logged rows
}

METHOD_DEFAULTS: dict[str, dict] = {
    "simclr": {"temperature": 0.5},
}

RECIPES: dict[str, dict[str, dict]] = {
    "simclr": {
        "quick": {
            "description": "built-in `digits` (real handwriting), small ResNet-18, 2-3 CPU minutes",
            "source": "this project: chosen to learn visibly on 2 CPU cores in about 2-3 minutes",
            "dataset": "digits",
            "arch": "resnet18_small",
            "image_size": 32,
            "epochs": 40,
            "batch_size": 128,
            "optimizer": "adamw",
            "lr": 2e-3,
            "lr_scaling": "none",
            "weight_decay": 1e-4,
            "warmup_epochs": 2,
            "temperature": 0.2,
            "projection_hidden_dim": 256,
            "knn_every": 10,
            "knn_k": 20,
        },
        "cifar10": {
            "description": "ResNet-18 (CIFAR stem) on CIFAR-10, 1000 epochs",
            "source": (
                "solo-learn scripts/pretrain/cifar/simclr.yaml (ResNet-18, batch 256, LARS lr 0.4, "
                "wd 1e-5, T 0.2, projector 2048-256, warm-up 10 epochs; 90.74% linear top-1 after "
                "1000 epochs); augmentation: SimCLR's CIFAR setting (strength 0.5, no blur)"
            ),
            "dataset": "cifar10",
            "arch": "resnet18",
            "image_size": 32,
            "epochs": 1000,
            "batch_size": 256,
            "optimizer": "lars",
            "lr": 0.4,
            "lr_scaling": "linear",
            "weight_decay": 1e-5,
            "warmup_epochs": 10,
            "temperature": 0.2,
            "projection_dim": 256,
            "projection_hidden_dim": 2048,
            "knn_every": 10,
        },
        "stl10": {
            "description": "ResNet-18 (ImageNet stem, 96 px) on STL-10 unlabeled, 500 epochs",
            "source": (
                "SimCLR (Chen et al. 2020) appendix B.1 ImageNet settings (LARS, lr 0.3 x B/256, "
                "wd 1e-6, T 0.5, 10 warm-up epochs) at STL-10's 96 px with the blur kernel scaled to "
                "10% of the side"
            ),
            "dataset": "stl10",
            "train_split": "unlabeled",
            "knn_train_split": "train",
            "knn_test_split": "test",
            "arch": "resnet18",
            "image_size": 96,
            "epochs": 500,
            "batch_size": 256,
            "optimizer": "lars",
            "lr": 0.3,
            "lr_scaling": "linear",
            "weight_decay": 1e-6,
            "warmup_epochs": 10,
            "temperature": 0.5,
            "projection_hidden_dim": 2048,
            "knn_every": 10,
        },
    },
}


class UnknownRecipeError(ValueError):
    """Raised for a method or recipe name that is not defined here."""


def recipe_names(method: str) -> list[str]:
    """The recipe names a method offers (every chapter offers the same ones)."""
    if method not in RECIPES:
        raise UnknownRecipeError(f"unknown method {method!r}; known methods: {sorted(RECIPES)}")
    return list(RECIPES[method])


def get_recipe(method: str, name: str) -> dict:
    """The fully resolved recipe ``name`` for ``method``: shared defaults < method defaults < recipe."""
    names = recipe_names(method)
    if name not in RECIPES[method]:
        raise UnknownRecipeError(
            f"unknown recipe {name!r} for {method}; choose one of: {', '.join(names)}"
        )
    config = copy.deepcopy(SHARED_DEFAULTS)
    config.update(METHOD_DEFAULTS.get(method, {}))
    config.update(copy.deepcopy(RECIPES[method][name]))
    config["recipe"] = name
    return config
