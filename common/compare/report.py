"""The comparison's report: tables and figures from the run directories, as Markdown and as one
self-contained HTML page (figures embedded), plus the PNG files.

Everything here reads what the chapters wrote (``config.json``, ``metrics.jsonl``, ``summary.json``,
``evaluation.json``, the saved test features): the report can be rebuilt at any time, and from any
set of run directories (``python -m common.compare --runs DIR ...``).
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import augment, datasets, runs  # noqa: E402
from common.augment import gallery  # noqa: E402
from common.compare.runner import BASELINES  # noqa: E402
from common.errors import brief  # noqa: E402

METHOD_FILES = ("model.py", "losses.py", "augment.py", "augment_batched.py", "torch_views.py",
                "optim.py", "distributed.py", "step.py", "byol.py", "target.py", "jax_step.py")
LOOP_FILES = ("train.py", "data.py", "evaluate.py", "backend.py")
REPO = Path(__file__).resolve().parents[2]
VIEWS_NOTE = ("The representation diagnostics (alignment, uniformity, effective rank, collapse ratio) "
              "are measured on two augmented views of the test images drawn with each run's own "
              "augmentation (the supervised encoder's: crops and flips only), a baseline's with that "
              "of the run it was evaluated on: they compare the encoders under different pairs of "
              "views, not under one protocol as the accuracies do.")
"""The report's note on ``common/evaluate/flow.py::diagnostics_of_views``, which uses the run's
``augment`` preset."""


@dataclasses.dataclass
class Line:
    """One encoder in the report: a trained run, or a baseline evaluated on a run's protocol."""

    name: str
    title: str
    run: runs.Run | None
    evaluation: dict | None
    features: dict | None  # {"features", "labels"} of the test split
    error: str | None = None  # why there is no evaluation, shown in its place ("failed: ...")
    source: str | None = None  # a baseline's: the run directory it was evaluated on


def package_of(config: dict) -> str | None:
    """The chapter's package that made a run of ``config`` (e.g. ``pytorch_simclr``), or None."""
    return {"pytorch": "pytorch_simclr", "tensorflow": "tensorflow_moco",
            "keras": "keras_byol"}.get(config.get("framework"))


def load_line(name: str, title: str, run_dir: str | None, evaluation: str | None,
              error: str | None = None, source: str | None = None) -> Line:
    run = runs.read_run(run_dir) if run_dir and Path(run_dir, runs.CONFIG_FILE).is_file() else None
    result = json.loads(Path(evaluation).read_text()) if evaluation and Path(evaluation).is_file() else None
    features_path = Path(evaluation).with_suffix(".features.npz") if evaluation else None
    features = dict(np.load(features_path)) if features_path and features_path.is_file() else None
    return Line(name, title, run, result, features, error, source)


def started_from(run: runs.Run | None, source: str | None) -> bool:
    """Whether ``run`` is the run ``source`` or started from its initial encoder (``--init-encoder
    SOURCE/encoder-random-init.safetensors``). Only then is its kNN minus the random-init lines of
    ``source`` what its training did; another draw's lift would mix in the difference between two
    random encoders (docs/evaluation.md)."""
    if run is None or source is None:
        return False
    source_dir = Path(source).resolve()
    start = run.config.get("init_encoder")
    return run.path.resolve() == source_dir or (
        start is not None and Path(start).resolve() == source_dir / runs.RANDOM_INIT_ENCODER_FILE)


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------
def lines_of_code(path: Path) -> int:
    """Lines of a Python file that are code: not blank, not comments, not docstrings."""
    source = path.read_text(encoding="utf-8")
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), start=1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)


def chapter_size(config: dict) -> str:
    """"method / loop": the lines of code of the method that trained a run and of its training loop
    and evaluation. The supervised baseline is ``pytorch_simclr/supervised.py`` on top of SimCLR's
    encoder, optimiser and loop, which it shares."""
    package = package_of(config)
    if package is None:
        return "–"
    folder = REPO / package

    def lines(names) -> int:
        return sum(lines_of_code(folder / name) for name in names if (folder / name).is_file())

    if config.get("method") == "supervised":
        return f"{lines(['supervised.py'])} + SimCLR's / {lines(LOOP_FILES)}"
    return f"{lines(METHOD_FILES)} / {lines(LOOP_FILES)}"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def accuracy_table(lines: list[Line]) -> list[list[str]]:
    baselines = [next((line for line in lines if line.name == name and line.evaluation), None)
                 for name in BASELINES]  # the lift columns, in BASELINES' order
    rows = [["encoder", "kNN top-1", *(column for *_, column in BASELINES.values()),
             "linear probe top-1", "1% labels", "10% labels", "100% labels"]]
    for line in lines:
        result = line.evaluation
        if result is None:
            rows.append([line.title, line.error or "not evaluated",
                         *["–"] * (len(rows[0]) - 2)])
            continue
        efficiency = result.get("label_efficiency", {})
        knn = result["knn"]["top1"]
        lifts = [f"{knn - base.evaluation['knn']['top1']:+.3f}" if measures_lift(line, base) else "–"
                 for base in baselines]
        rows.append([line.title, _fmt(knn), *lifts,
                     _fmt(result["linear_probe"]["top1"]),
                     *(_fmt(efficiency.get(f, {}).get("top1")) for f in ("0.01", "0.1", "1.0"))])
    return rows


def measures_lift(line: Line, baseline: Line | None) -> bool:
    """Whether the report shows ``line``'s kNN lift over ``baseline``: not for a baseline itself,
    and over a random-init line only where ``line`` started from that very encoder
    (:func:`started_from`); the pixels are the same for every encoder of the data."""
    if baseline is None or line.name in BASELINES:
        return False
    return "--random-init" not in BASELINES[baseline.name][1] or started_from(line.run, baseline.source)


def cost_table(lines: list[Line]) -> list[list[str]]:
    """What each run cost (``summary.json``; see docs/runs.md): the whole run's wall time and the
    part in training steps, images/s after each process's compiling steps, the peak memory."""
    rows = [["run", "epochs", "wall time (all)", "in training steps", "images/s (after compiling)",
             "peak memory (RSS, MiB)", "trainable parameters (encoder + heads)",
             "lines: method / loop"]]
    for line in lines:
        if line.run is None or line.run.summary is None:
            continue
        summary = line.run.summary
        parameters, steps_s = summary.get("trainable_parameters"), summary.get("train_s")
        rows.append([line.title, str(summary["epochs"]), f"{summary['wall_s']:.0f} s",
                     "–" if steps_s is None else f"{steps_s:.0f} s",
                     _fmt(summary.get("images_per_sec"), 0), _fmt(summary.get("peak_rss_mib"), 0),
                     "–" if parameters is None else f"{parameters:,}", chapter_size(line.run.config)])
    return rows


def diagnostics_table(lines: list[Line]) -> list[list[str]]:
    rows = [["encoder", "alignment", "uniformity", "effective rank", "collapse ratio"]]
    for line in lines:
        if line.evaluation is None:
            continue
        d = line.evaluation["diagnostics"]["representation"]
        rows.append([line.title, _fmt(d.get("alignment")), _fmt(d["uniformity"]),
                     _fmt(d["effective_rank"], 1), _fmt(d["collapse_ratio"])])
    return rows


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def _rows(run: runs.Run, kind: str) -> list[dict]:
    return [row for row in run.metrics if row.get("kind") == kind]


def colours(lines: list[Line]) -> dict[str, str]:
    """One colour per encoder, the same in every figure (an encoder missing from one figure, e.g.
    one not evaluated yet, does not shift the others' colours)."""
    return {line.name: f"C{number % 10}" for number, line in enumerate(lines)}


def curves_figure(lines: list[Line]) -> plt.Figure:
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colour = colours(lines)
    for line in lines:
        if line.run is None:
            continue
        c = colour[line.name]
        epochs = _rows(line.run, "epoch")
        init = _rows(line.run, "init")
        knn = [(r["epoch"], r["wall_s"], r["knn_top1"]) for r in init + epochs
               if r.get("knn_top1") is not None]
        axes[0, 0].plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], marker=".",
                        label=line.title, color=c)
        axes[1, 0].plot([r["wall_s"] for r in epochs], [r["loss"] for r in epochs], marker=".",
                        color=c)
        if knn:
            e, w, k = zip(*knn, strict=True)
            axes[0, 1].plot(e, k, marker=".", label=line.title, color=c)
            axes[1, 1].plot(w, k, marker=".", color=c)
    for axis, (x, y) in zip(axes.flat, [("epoch", "training loss (own objective)"),
                                        ("epoch", "kNN top-1"), ("wall-clock seconds", "training loss"),
                                        ("wall-clock seconds", "kNN top-1")], strict=True):
        axis.set_xlabel(x)
        axis.set_ylabel(y)
        axis.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=8)
    figure.suptitle("Training: loss and kNN monitor against epochs and against wall-clock time")
    figure.tight_layout()
    return figure


def label_efficiency_figure(lines: list[Line]) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    colour = colours(lines)
    for line in lines:
        efficiency = (line.evaluation or {}).get("label_efficiency")
        if not efficiency:
            continue
        fractions = sorted(efficiency, key=float)
        axis.plot([100 * float(f) for f in fractions], [efficiency[f]["top1"] for f in fractions],
                  marker="o", label=line.title, color=colour[line.name])
    axis.set_xscale("log")
    axis.set_xlabel("% of the training labels")
    axis.set_ylabel("logistic-regression probe top-1")
    axis.set_title("Label efficiency")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def throughput_figure(lines: list[Line]) -> plt.Figure:
    trained = [line for line in lines if line.run is not None and line.run.summary]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    titles = [line.title for line in trained]
    colour = [colours(lines)[line.name] for line in trained]
    left.barh(titles, [line.run.summary.get("images_per_sec") or 0 for line in trained], color=colour)
    left.set_xlabel("images/s in training steps (after the compiling steps)")
    right.barh(titles, [line.run.summary["wall_s"] for line in trained], color=colour)
    right.set_xlabel("wall-clock seconds of the whole run")
    for axis in (left, right):
        axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    return figure


def embedding_figure(lines: list[Line], seed: int = 0, max_points: int = 600) -> plt.Figure:
    """t-SNE (van der Maaten & Hinton 2008) of each encoder's test features, coloured by class.

    At most ``max_points`` test images per encoder (the same ones for every encoder), on one thread:
    scikit-learn's Barnes-Hut t-SNE spins its OpenMP threads, which costs ten times the work itself on
    a machine whose cores are busy (the comparison's other processes). Each class has its own colour
    up to 20 classes (tab10, tab20); beyond, a gradient (turbo) shares similar ones between
    neighbouring class indices."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    shown = [line for line in lines if line.features is not None]
    classes = max((int(line.features["labels"].max()) + 1 for line in shown), default=1)
    colormap = "tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo"
    columns = min(3, max(1, len(shown)))
    rows_ = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows_, columns, figsize=(4.2 * columns, 4 * rows_), squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, line in zip(axes.flat, shown, strict=False):
        features, labels = line.features["features"], line.features["labels"]
        keep = np.random.default_rng(seed).permutation(len(features))[:max_points]
        if len(keep) < 4:
            axis.set_title(f"{line.title}: too few test images for t-SNE", fontsize=9)
            continue
        perplexity = min(30.0, (len(keep) - 1) / 3)  # scikit-learn needs fewer than the points
        with threadpool_limits(1):
            points = TSNE(n_components=2, init="pca", random_state=seed,
                          perplexity=perplexity).fit_transform(features[keep].astype(np.float64))
        axis.scatter(points[:, 0], points[:, 1], c=labels[keep], cmap=colormap, vmin=0,
                     vmax=classes - 1, s=4)
        axis.set_title(line.title, fontsize=9)
    figure.suptitle("t-SNE of the test features, coloured by class")
    figure.tight_layout()
    return figure


def views_figure(config: dict, methods: list[str]) -> plt.Figure | None:
    """A grid of the augmented views each method trains on, drawn by the NumPy reference ops."""
    try:
        images, labels = datasets.load(config["dataset"], config["knn_test_split"],
                                       root=config.get("data_dir"))
    except datasets.DatasetError:  # a figure is optional: the report still has everything else
        return None
    rng = np.random.default_rng(0)
    examples = gallery.pick_examples(images, labels, min(4, len(np.unique(labels))), seed=0)
    size = config["image_size"]
    figure, axes = plt.subplots(len(methods), 1, figsize=(10, 1.6 * len(methods)), squeeze=False)
    for axis, method in zip(axes[:, 0], methods, strict=True):
        pair = augment.without_normalize(augment.preset(method, size))
        views = gallery.pair_views(examples, pair, 4, rng)  # (N, V, S, S, 3)
        strip = np.concatenate([np.concatenate(list(views[i]), axis=1) for i in range(len(examples))],
                               axis=1)
        axis.imshow(np.clip(strip, 0, 1))
        axis.set_axis_off()
        axis.set_title(f"{method}: 4 views of each of {len(examples)} test images", fontsize=9,
                       loc="left")
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------------------
# Markdown and HTML
# --------------------------------------------------------------------------------------------------
def markdown_table(rows: list[list[str]]) -> str:
    """The rows as a Markdown table; a ``|`` or ``<`` in a cell (an error message) is escaped, so
    that it neither splits the cell nor reads as HTML."""
    def row_text(row: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|").replace("<", "&lt;") for cell in row) + " |"

    header, *body = rows
    return "\n".join([row_text(header), "|" + "---|" * len(header), *map(row_text, body)])


def html_table(rows: list[list[str]]) -> str:
    header, *body = rows
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                    for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"


def write(folder: Path, lines: list[Line], title: str, notes: list[str]) -> dict[str, Path]:
    """Write report.md, report.html and the PNGs into ``folder``; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    config = next((line.run.config for line in lines if line.run is not None), None)
    methods = sorted({line.run.config["augment"] for line in lines if line.run is not None})
    captions = {"curves": "Loss and kNN monitor", "label_efficiency": "Label efficiency",
                "throughput": "Throughput and wall time", "embeddings": "2-D embeddings (t-SNE)",
                "views": "The views each method trains on"}
    builders = {"curves": lambda: curves_figure(lines),
                "label_efficiency": lambda: label_efficiency_figure(lines),
                "throughput": lambda: throughput_figure(lines),
                "embeddings": lambda: embedding_figure(lines),
                "views": lambda: None if config is None else views_figure(config, methods)}
    figures, notes = {}, list(notes)
    for name, build in builders.items():
        try:
            figure = build()
        except Exception as error:  # one figure that cannot be drawn must not cost the whole report
            notes.append(f"The figure \"{captions[name]}\" could not be drawn: {brief(error)}.")
            continue
        if figure is not None:
            figures[name] = figure
    paths, encoded = {}, {}
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        plt.close(figure)
        paths[name] = folder / f"{name}.png"
        runs.atomic_write_bytes(paths[name], buffer.getvalue())
        encoded[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
    tables = {"Accuracy (common/evaluate, the same protocol for every encoder)": accuracy_table(lines),
              "Cost": cost_table(lines),
              "Representation diagnostics (test split, two views of each run's own augmentation)":
                  diagnostics_table(lines)}
    md = [f"# {title}", "", *notes, ""]
    for heading, rows in tables.items():
        md += [f"## {heading}", "", markdown_table(rows), ""]
    for name in figures:
        md += [f"## {captions[name]}", "", f"![{captions[name]}]({name}.png)", ""]
    paths["md"] = folder / "report.md"
    runs.atomic_write_bytes(paths["md"], "\n".join(md).encode("utf-8"))
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(n)}</p>" for n in notes)]
    for heading, rows in tables.items():
        body += [f"<h2>{html.escape(heading)}</h2>", html_table(rows)]
    for name in figures:
        body += [f"<h2>{captions[name]}</h2>",
                 f'<img alt="{captions[name]}" src="data:image/png;base64,{encoded[name]}">']
    style = ("body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    paths["html"] = folder / "report.html"
    runs.atomic_write_bytes(paths["html"], page.encode("utf-8"))
    return paths
