"""Every recipe says exactly what its source says, or says why not (common/recipes/)."""

import re
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[1]
RECIPE_TABLES = {  # the hand-written recipe tables: each chapter's README and its page of the book
    "simclr": ("pytorch_simclr/README.md", "docs/book/05-1-simclr-pytorch.md"),
    "mocov2": ("tensorflow_moco/README.md", "docs/book/05-2-moco-tensorflow.md"),
    "byol": ("keras_byol/README.md", "docs/book/05-3-byol-keras.md"),
}
TABLES = [(method, page) for method, pages in RECIPE_TABLES.items() for page in pages]
ROW_VALUES = {  # what a recipe row may say, as a pattern, and the configuration key it states
    r"\bbatch (\d+)": ("batch_size", int),
    r"\b(AdamW|SGD|LARS)\b": ("optimizer", str.lower),
    r"\b(?:AdamW|SGD|LARS)(?: \([^)]*\))? ([\d.]+(?:e-\d+)?)\b": ("lr", float),  # the base rate
    r"\bwd ([\d.e-]+)": ("weight_decay", float),
    r"\bT ([\d.]+)": ("temperature", float),
    r"\bqueue (\d+)": ("queue_size", int),
    r"(?:\bm|\$m\$) ([\d.]+)": ("key_momentum", float),
    r"(?:τ₀|\$\\tau_0\$) ([\d.]+)": ("target_momentum", float),
    r"([\d.]+) warm-up epochs?": ("warmup_epochs", float),
    r"(?<!warm-up )\b(\d+) epochs": ("epochs", int),
}


def recipe_rows(method: str, page: str) -> dict[str, str]:
    """The recipe table of a page: recipe name -> its schedule cell."""
    text = (REPO / page).read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)`(?: \(default\))? \|[^|]*\|[^|]*\| ([^|]*) \|", text, re.MULTILINE)
    return {name: cell for name, cell in rows if name in recipes.RECIPES[method]}


def stated_values(cell: str) -> list[tuple[str, object]]:
    """Every (configuration key, value) a row's schedule cell states; a key stated twice appears twice."""
    return [(key, convert(found)) for pattern, (key, convert) in ROW_VALUES.items()
            for found in re.findall(pattern, cell)]


@pytest.mark.parametrize(("method", "page"), TABLES)
def test_the_chapters_and_the_book_state_each_recipe_as_it_is(method, page):
    """The recipe tables are written by hand: every value they state must be the recipe's."""
    rows = recipe_rows(method, page)
    assert sorted(rows) == sorted(recipes.RECIPES[method])
    for name, cell in rows.items():
        config = recipes.get_recipe(method, name)
        stated = stated_values(cell)
        assert stated, f"{page}: `{name}` states no value this test can read"
        assert [(key, config[key]) for key, _ in stated] == stated, f"{page}: `{name}`"


def test_a_stale_readme_row_is_caught():
    cell = "batch 128, SGD 0.06, wd 5e-4, cosine, T 0.2, queue 512, m 0.99, split BN 8, 40 epochs"
    config = recipes.get_recipe("mocov2", "quick")
    wrong = {key for key, value in stated_values(cell) if config[key] != value}
    assert wrong == {"optimizer", "lr", "weight_decay", "epochs"}
    # the book's notation, and a warm-up that is not the run's length
    assert dict(stated_values(r"AdamW 0.002, 0.5 warm-up epochs, 40 epochs, $\tau_0$ 0.97, $m$ 0.99")) == {
        "optimizer": "adamw", "lr": 0.002, "warmup_epochs": 0.5, "epochs": 40, "target_momentum": 0.97,
        "key_momentum": 0.99}
    assert stated_values("LARS (solo-learn variant, η 0.02) 1.0 × B/256") == [
        ("optimizer", "lars"), ("lr", 1.0)]
    # a value stated twice is checked twice, not only the last time
    assert stated_values("40 epochs (8 epochs in the demo)") == [("epochs", 40), ("epochs", 8)]
