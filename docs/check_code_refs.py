"""Check that every reference from the docs into the code points at code that exists.

The book links each equation and convention to "the one function that implements it". MkDocs cannot
check those links (the code lives outside ``docs/``), so they are written as inline code in one of
these forms, and this script checks every one of them in ``docs/**/*.md``:

=======================================  ==========================================================
written in the docs (between backticks)  checked
=======================================  ==========================================================
``path/to/file.py::name``                the file exists and defines ``name`` (a function, class or
                                         assignment at module level: a definition, not an import)
``path/to/file.py::Class.method``        ... and ``Class`` defines ``method`` (any depth of nesting)
``common.module.name``                   the module is a file of the repository and defines ``name``
                                         (dotted names that start with a project package)
``path/under/a/project/folder``          the file or folder exists (a ``*`` must match something);
                                         also every such token inside a longer code span
``python -m package.module ...``         the module is a file of the repository (``module.py``, or
                                         ``package/module/__main__.py``), for project packages
=======================================  ==========================================================

Fenced code blocks and HTML comments are not checked, except that the ``python -m`` modules named
by a figure placeholder (``<!-- figure: TODO ... -->``, for a figure still to be measured) must
exist; ``--placeholders`` lists the placeholders.

    python docs/check_code_refs.py                 # exit status 1 if any reference is broken
    python docs/check_code_refs.py -v              # also print every reference checked
    python docs/check_code_refs.py --placeholders  # list the figure placeholders left in the docs

Usable from a test: ``problems(root)`` returns the list of broken references (empty when all hold).
Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "pytorch_simclr", "tensorflow_moco", "keras_byol", "bench", "tests", "docs")
"""Top-level folders whose paths and modules the docs may name."""

_FENCE = re.compile(r"^\s*(```|~~~)")
_COMMENT = re.compile(r"(?<!`)<!--.*?-->", re.DOTALL)  # not one quoted in inline code
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_SYMBOL_REF = re.compile(r"^([\w./-]+\.py)::([A-Za-z_][\w.]*)$")
_DOTTED_REF = re.compile(rf"^((?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")
_PATH_TOKEN = re.compile(rf"^(?:{'|'.join(PACKAGES)})/[\w./*-]*$")
_MODULE_RUN = re.compile(rf"python(?:3(?:\.\d+)?)? -m ((?:{'|'.join(PACKAGES)})(?:\.\w+)*)")
_PLACEHOLDER = re.compile(r"(?<!`)<!--\s*(figure: TODO.*?)-->", re.DOTALL)


@dataclass(frozen=True)
class Reference:
    page: Path
    line: int
    text: str
    kind: str  # "symbol", "dotted", "path", "module"


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the page outside fenced code blocks, HTML comments blanked."""
    text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def references(page: Path) -> list[Reference]:
    """Every checkable reference on one Markdown page, in order."""
    found = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        for match in _SPAN.finditer(line):
            span = match.group(1).strip()
            if _SYMBOL_REF.match(span):
                found.append(Reference(page, number, span, "symbol"))
                continue
            if _DOTTED_REF.match(span):
                found.append(Reference(page, number, span, "dotted"))
                continue
            for module in _MODULE_RUN.findall(span):
                found.append(Reference(page, number, module, "module"))
            for token in span.split():
                token = token.strip(",;:()[]'\"")
                if _PATH_TOKEN.match(token):
                    found.append(Reference(page, number, token, "path"))
    return found


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names a module, class or function body defines (definitions and assignments, not imports)."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.If | ast.Try | ast.With):  # definitions under a guard count too
            inner = list(getattr(node, "body", [])) + list(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                inner += handler.body
            names.update({k: v for k, v in _defined_names(inner).items() if k not in names})
    return names


def defines(path: Path, dotted: str) -> str | None:
    """None if the Python file ``path`` defines ``dotted`` (``name`` or ``Class.method``), else why not."""
    try:
        scope: list[ast.stmt] = _tree(path).body
    except SyntaxError as error:
        return f"{path.name} does not parse: {error}"
    where = path.name
    for part in dotted.split("."):
        node = _defined_names(scope).get(part)
        if node is None:
            return f"{where} defines no {part!r}"
        scope = getattr(node, "body", [])
        where = f"{where}::{part}"
    return None


def _module_file(root: Path, module: str) -> Path | None:
    """The file that ``python -m module`` / ``import module`` would run or read, if in the repo."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _check_symbol(root: Path, text: str) -> str | None:
    file, name = _SYMBOL_REF.match(text).groups()
    path = root / file
    if not path.is_file():
        return f"no file {file}"
    return defines(path, name)


def _check_dotted(root: Path, text: str) -> str | None:
    dotted = _DOTTED_REF.match(text).group(1)
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):  # the longest prefix that is a module of the repo
        module = ".".join(parts[:split])
        path = _module_file(root, module)
        if path is None and not (root.joinpath(*parts[:split])).is_dir():
            continue
        rest = ".".join(parts[split:])
        if not rest:
            return None
        if path is None:  # a namespace folder: the rest must be a module below it
            return f"{module} has no module {parts[split]!r}"
        return defines(path, rest)
    return f"no module {parts[0]}"


def _check_path(root: Path, text: str) -> str | None:
    if "*" in text:
        return None if any(root.glob(text)) else f"nothing matches {text}"
    return None if (root / text).exists() else f"no file or folder {text}"


def _check_module(root: Path, module: str) -> str | None:
    base = root.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file() or (base / "__main__.py").is_file():
        return None
    return f"python -m {module}: no {base.relative_to(root)}.py or {base.relative_to(root)}/__main__.py"


CHECKS = {"symbol": _check_symbol, "dotted": _check_dotted, "path": _check_path, "module": _check_module}


def pages(root: Path) -> list[Path]:
    return sorted((root / "docs").rglob("*.md"))


def problems(root: Path = ROOT, verbose: bool = False) -> list[str]:
    """One line per broken reference, ``page:line: `reference`: why``; empty when all hold."""
    found = []
    for page in pages(root):
        for ref in references(page):
            why = CHECKS[ref.kind](root, ref.text)
            where = f"{page.relative_to(root)}:{ref.line}: `{ref.text}`"
            if why is not None:
                found.append(f"{where}: {why}")
            elif verbose:
                print(f"ok  {where} ({ref.kind})")
        text = page.read_text(encoding="utf-8")
        for match in _PLACEHOLDER.finditer(text):  # the commands a placeholder names must exist too
            line = text.count("\n", 0, match.start()) + 1
            for module in _MODULE_RUN.findall(match.group(1)):
                why = _check_module(root, module)
                if why is not None:
                    found.append(f"{page.relative_to(root)}:{line}: placeholder names `{module}`: {why}")
    return found


def placeholders(root: Path = ROOT) -> list[str]:
    """Every ``<!-- figure: TODO ... -->`` placeholder, ``page:line: text``."""
    found = []
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        for match in _PLACEHOLDER.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{page.relative_to(root)}:{line}: {' '.join(match.group(1).split())}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every reference checked")
    parser.add_argument("--placeholders", action="store_true",
                        help="list the figure placeholders left in the docs and exit")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.placeholders:
        for line in placeholders(root):
            print(line)
        return 0
    broken = problems(root, args.verbose)
    checked = sum(len(references(page)) for page in pages(root))
    for line in broken:
        print(line)
    print(f"{checked} code references in {len(pages(root))} pages: "
          f"{'all resolve' if not broken else f'{len(broken)} broken'}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
