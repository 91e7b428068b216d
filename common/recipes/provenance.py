"""How a recipe says where each of its values comes from.

A :class:`Recipe` names one primary :class:`Source` (repository + path + commit, or paper + section)
and, for every value that shapes the method, a :class:`Setting`: our value, the source's value,
where the source states it, and -- whenever the two differ -- why we deviate. ``facts`` are the
same for things that are not command-line settings (the head's layout, its initialisation, the
input normalisation, ...). ``tests/test_recipes.py`` refuses a recipe whose value differs from its
source without a stated reason, or that leaves a method value to a silent default, so a recipe
cannot drift from the source it cites.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NOT_IN_SOURCE = "(not in the source)"
PER_STEP = ("the project's one schedule is per optimisation step; the source steps its cosine once "
            "per epoch, which differs from it by at most pi / (2 epochs) of the base rate")
"""The deviation note of every recipe whose source steps its cosine schedule once per epoch."""


@dataclass(frozen=True)
class Source:
    """The one primary source of a recipe, and what it reports under its own protocol."""

    title: str  # "google-research/simclr README: CIFAR-10 pre-training + linear head"
    where: str  # "github.com/google-research/simclr README.md @ <40-hex commit>" or "paper, sec. X"
    reference: str  # the figure the source reports, with its protocol; or "none published"


@dataclass(frozen=True)
class Setting:
    """One value: ours, the source's, where the source states it, and why ours differs (if it does)."""

    ours: object
    source: object
    cited: str
    deviation: str = ""

    @property
    def deviates(self) -> bool:
        return self.ours != self.source


@dataclass(frozen=True)
class Recipe:
    """A named configuration of one method, with the provenance of every value."""

    description: str
    source: Source
    settings: dict[str, Setting]
    facts: dict[str, Setting] = field(default_factory=dict)
    run: dict = field(default_factory=dict)  # how this recipe is monitored (knn_every, ...): no source

    def values(self) -> dict:
        """The configuration values of the recipe (``ours`` of every setting, then ``run``)."""
        return {**{key: s.ours for key, s in self.settings.items()}, **self.run}


def decays_every_parameter(cited: str) -> Setting:
    """The ``decayed_tensors`` fact of a recipe whose source's optimiser decays every parameter."""
    return Setting("weights only (ndim > 1)", "every parameter", cited,
                   "the project's one rule (common.optim.is_excluded): biases and BatchNorm gamma "
                   "and beta are never decayed, as in google-research/simclr, deepmind-research/"
                   "byol and solo-learn")


def format_table(name: str, recipe: Recipe) -> str:
    """The provenance table of a recipe, as printed by ``python -m common.recipes``."""
    rows = [(key, s) for key, s in recipe.settings.items()] + [(key, s) for key, s in recipe.facts.items()]
    width = max(len(key) for key, _ in rows)
    lines = [f"recipe {name!r}: {recipe.description}",
             f"source: {recipe.source.title}", f"        {recipe.source.where}",
             f"reference: {recipe.source.reference}", ""]
    for key, setting in rows:
        mark = "!=" if setting.deviates else "=="
        lines.append(f"  {key:<{width}}  {setting.ours!s:<14} {mark} source {setting.source!s:<14} "
                     f"[{setting.cited}]")
        if setting.deviation:
            lines.append(f"  {'':<{width}}  deviation: {setting.deviation}")
    if recipe.run:
        lines.append("  (monitoring, not part of the method: "
                     + ", ".join(f"{k}={v}" for k, v in recipe.run.items()) + ")")
    return "\n".join(lines)


def problems(recipe: Recipe, required: tuple[str, ...]) -> list[str]:
    """What is wrong with a recipe's provenance (empty: nothing).

    Every ``required`` key needs a setting; a setting whose value differs from its source's needs a
    stated deviation (and one that agrees must not carry one); the source must say where it is.
    """
    found = [f"no provenance for {key!r}" for key in required if key not in recipe.settings]
    for key, setting in {**recipe.settings, **recipe.facts}.items():
        if setting.deviates and not setting.deviation:
            found.append(f"{key!r} is {setting.ours!r} but the source says {setting.source!r}, "
                         "and no deviation is stated")
        if not setting.deviates and setting.deviation:
            found.append(f"{key!r} agrees with the source but states a deviation")
        if not setting.cited:
            found.append(f"{key!r} does not say where the source states it")
    if not (recipe.source.title and recipe.source.where and recipe.source.reference):
        found.append("the source needs a title, a location and the figure it reports (or 'none')")
    return found
