"""Every recipe says exactly what its source says, or says why not (common/recipes/)."""

import re

import pytest

from common import cli, recipes
from common.chapter import Chapter
from common.recipes.provenance import NOT_IN_SOURCE, Recipe, Setting, Source, format_table, problems

ALL = [(method, name) for method in recipes.RECIPES for name in recipes.RECIPES[method]]


@pytest.mark.parametrize(("method", "name"), ALL)
def test_every_value_matches_its_source_or_states_why_not(method, name):
    recipe = recipes.recipe(method, name)
    required = recipes.required_keys(method, recipe.settings["optimizer"].ours)
    assert problems(recipe, required) == []
    # The configuration a chapter trains with is the table's "ours", nothing else.
    config = recipes.get_recipe(method, name)
    for key, setting in recipe.settings.items():
        assert config[key] == setting.ours, key
    cli.validate(config)


@pytest.mark.parametrize(("method", "name"), ALL)
def test_every_source_is_pinned(method, name):
    source = recipes.recipe(method, name).source
    pinned = re.search(r"@ [0-9a-f]{40}\b", source.where) or "paper" in source.where.lower()
    assert pinned or source.title.startswith("this project"), source.where


def test_the_check_catches_a_silent_deviation_and_a_missing_value():
    good = recipes.recipe("simclr", "cifar10")
    drifted = Recipe(good.description, good.source,
                     {**good.settings, "weight_decay": Setting(1e-5, 1e-6, "--weight_decay=1e-6")})
    assert problems(drifted, ("weight_decay",)) == [
        "'weight_decay' is 1e-05 but the source says 1e-06, and no deviation is stated"]
    missing = Recipe("x", Source("t", "w", "r"), {})
    assert problems(missing, ("lr",)) == ["no provenance for 'lr'"]
    assert problems(Recipe("x", Source("t", "w", "r"), {"lr": Setting(1, 1, "")}), ()) == [
        "'lr' does not say where the source states it"]


def test_the_quoted_reference_figures_are_the_sources_own():
    cifar = recipes.recipe("simclr", "cifar10").source
    assert "around 91%" in cifar.reference and "be133b38" in cifar.where
    assert "not comparable" in cifar.reference.lower()


def test_show_recipe_prints_the_table_and_exits(capsys):
    chapter = Chapter("pytorch", "simclr", "pytorch_simclr", "SimCLR / PyTorch")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(cli.build_parser(chapter, "test"), chapter, ["--recipe", "stl10", "--show-recipe"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "batch_size             256            != source 4096" in out
    assert "deviation: one GPU's batch" in out
    assert format_table("stl10", recipes.recipe("simclr", "stl10")) in out
    assert NOT_IN_SOURCE in out
