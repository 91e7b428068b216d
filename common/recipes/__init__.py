"""Named training recipes, shared by every chapter under the same names, each with its provenance.

A recipe is a complete, flat configuration: every chapter resolves ``--recipe NAME`` to the same
values, then applies the command-line overrides (``common/cli.py``), prints the result and saves it
in the run directory's ``config.json``. Each method's recipes live in their own module
(``simclr.py``, ...) as :class:`~common.recipes.provenance.Recipe` values: one primary source per
recipe, and for every value that shapes the method, the source's value, where it says so, and why we
deviate where we do. ``python -m common.recipes [METHOD [RECIPE]]`` prints those tables.

- ``quick``: the default when ``train.py`` gets no arguments. A built-in dataset (no download), the
  small encoder, a few CPU minutes, offline.
- ``cifar10``: ResNet-18 (CIFAR stem) on CIFAR-10, following the source the recipe names.
- ``stl10``: ResNet-18 (ImageNet stem, 96 px) on STL-10, pre-training on ``unlabeled``.

Learning rates are *base* rates: the effective rate is ``scaled_lr(lr, batch_size, lr_scaling)``
(``common/schedules.py``), so changing ``--batch-size`` keeps a recipe's meaning.
"""

from __future__ import annotations

from common.recipes import byol, mocov2, simclr, supervised
from common.recipes.provenance import Recipe

RUN_DEFAULTS: dict = {
    # Where and how a run is computed and monitored: not part of any method, so not in the
    # provenance tables. A recipe's `run` entries override them.
    "knn_train_split": "train",  # labelled split the kNN monitor indexes ...
    "knn_test_split": "test",  # ... and the split it classifies
    "knn_max_train": None,  # cap on indexed images (None: all)
    "knn_max_test": None,
    "knn_every": 1,  # epochs between kNN monitor runs (0: only before and at the end)
    "data_dir": None,
    "workers": 2,
    "device": "auto",
    "precision": "fp32",
    "seed": 0,
    "init_encoder": None,  # a portable encoder file the encoder starts from (None: the seed's draw)
    "output_dir": "runs",
    "max_steps_per_epoch": None,  # None: one pass over the training split
    "log_every": 10,  # optimisation steps between logged rows
}

ENCODER_DEFAULTS: dict = {
    # The project's one encoder initialisation (common/arch.py), the same in every recipe; each
    # recipe's provenance table says where its source differs. --no-zero-init-residual is the ablation.
    "zero_init_residual": True,
}

COMMON_KEYS = ("dataset", "train_split", "arch", "image_size", "augment", "epochs", "batch_size",
               "optimizer", "lr", "lr_scaling", "weight_decay", "warmup_epochs", "knn_k",
               "knn_temperature")
OPTIMIZER_KEYS = {"lars": ("momentum", "trust_coefficient", "lars_variant"), "sgd": ("momentum",),
                  "adamw": ()}
OPTIMIZER_DEFAULTS = {"momentum": 0.9, "trust_coefficient": 0.001, "lars_variant": "simclr"}
"""The optimiser keys every configuration carries; a recipe whose optimiser uses one must cite it."""

RECIPES: dict[str, dict[str, Recipe]] = {
    "simclr": simclr.RECIPES, "mocov2": mocov2.RECIPES, "byol": byol.RECIPES,
    "supervised": supervised.RECIPES}
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "simclr": simclr.METHOD_KEYS, "mocov2": mocov2.METHOD_KEYS, "byol": byol.METHOD_KEYS,
    "supervised": supervised.METHOD_KEYS}


class UnknownRecipeError(ValueError):
    """Raised for a method or recipe name that is not defined here."""


def recipe_names(method: str) -> list[str]:
    """The recipe names a method offers (every chapter offers the same ones)."""
    if method not in RECIPES:
        raise UnknownRecipeError(f"unknown method {method!r}; known methods: {sorted(RECIPES)}")
    return list(RECIPES[method])


def recipe(method: str, name: str) -> Recipe:
    """The :class:`Recipe` ``name`` of ``method``, provenance included."""
    names = recipe_names(method)
    if name not in RECIPES[method]:
        raise UnknownRecipeError(f"unknown recipe {name!r} for {method}; choose one of: {', '.join(names)}")
    return RECIPES[method][name]


def required_keys(method: str, optimizer: str) -> tuple[str, ...]:
    """The keys a recipe of ``method`` using ``optimizer`` must give a provenance for."""
    return (*COMMON_KEYS, *OPTIMIZER_KEYS.get(optimizer, ()), *METHOD_KEYS[method])


def get_recipe(method: str, name: str) -> dict:
    """The flat configuration of recipe ``name``: run, optimiser and encoder defaults < the recipe."""
    chosen = recipe(method, name)
    return {**RUN_DEFAULTS, **OPTIMIZER_DEFAULTS, **ENCODER_DEFAULTS, **chosen.values(), "recipe": name,
            "description": chosen.description, "source": f"{chosen.source.title} ({chosen.source.where})"}
