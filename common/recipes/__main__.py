"""``python -m common.recipes [METHOD [RECIPE]]``: each recipe's values, its source's, and why they differ."""

import argparse

from common.recipes import RECIPES, recipe
from common.recipes.provenance import format_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.recipes", description=__doc__)
    parser.add_argument("method", nargs="?", choices=sorted(RECIPES), help="default: all")
    parser.add_argument("recipe", nargs="?", help="default: all of the method's")
    args = parser.parse_args(argv)
    for method in [args.method] if args.method else sorted(RECIPES):
        for name in [args.recipe] if args.recipe else RECIPES[method]:
            print(f"== {method} ==")
            print(format_table(name, recipe(method, name)), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
