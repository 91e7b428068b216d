"""Run the book's notebooks end to end, each in a Jupyter kernel of its own, and keep their outputs.

The notebooks are Jupytext Markdown (``docs/notebooks/*.md``): text, so that their diffs read like
any page, and pages of the site as they are. This script turns one into a notebook, executes it with
``nbclient`` in a fresh kernel of this Python (so the PyTorch and TensorFlow notebooks never share a
process) and writes the executed ``.ipynb``, outputs and figures included, to ``runs/notebooks/``:

    python docs/notebooks/run.py                                       # all three
    python docs/notebooks/run.py docs/notebooks/5.2-moco-tensorflow.md
    SSL_NOTEBOOK_STEPS=2 SSL_NOTEBOOK_BATCH=16 SSL_NOTEBOOK_KNN_IMAGES=100 python docs/notebooks/run.py

The ``SSL_NOTEBOOK_*`` environment variables (steps, batch, kNN images, dataset, arch, output
folder; each notebook's introduction says what they do) set a notebook's size; unset, it runs its
chapter's ``quick`` recipe. Each notebook ends by collecting what it measured in a dict
``results``; :func:`execute` returns it (tests/test_docs.py asserts on it). Opening one
interactively works too: ``jupytext --to ipynb docs/notebooks/5.1-simclr-pytorch.md`` gives the
``.ipynb`` to open in Jupyter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parents[1]
OUTPUT = ROOT / "runs" / "notebooks"
_MARK = "NOTEBOOK RESULTS "


def notebooks() -> list[Path]:
    """The notebooks of the book, in chapter order."""
    return sorted(NOTEBOOKS.glob("[0-9]*.md"))


def execute(path: Path, env: dict[str, str] | None = None, timeout: int = 1200, setup: str = ""):
    """Run the notebook at ``path`` in a new kernel; ``(executed notebook, its results dict)``.

    ``env`` (default: this process's environment) is the kernel's environment; the kernel's working
    directory is the notebook's folder, as in Jupyter. ``timeout`` is per cell, in seconds. A cell
    that raises (a failed ``assert`` among them) raises ``nbclient.exceptions.CellExecutionError``.
    ``setup``: code run in the kernel before the notebook's first cell (not part of the result).
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    report = nbformat.v4.new_code_cell(f"import json\nprint({_MARK!r} + json.dumps(results))")
    notebook.cells.append(report)
    if setup:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(setup))
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=dict(os.environ if env is None else env))
    notebook.cells.pop()
    if setup:
        notebook.cells.pop(0)
    text = "".join(output.get("text", "") for output in report.outputs if output.output_type == "stream")
    lines = [line for line in text.splitlines() if line.startswith(_MARK)]
    if not lines:
        raise RuntimeError(f"{path.name} defined no `results` dict in its last cell")
    return notebook, json.loads(lines[-1][len(_MARK):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every docs/notebooks/*.md")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    import nbformat

    args.output.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks or notebooks():
        start = time.perf_counter()
        notebook, results = execute(path.resolve())
        target = args.output / path.with_suffix(".ipynb").name
        nbformat.write(notebook, target)
        shown = {key: value for key, value in results.items() if not isinstance(value, list)}
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, {shown} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
