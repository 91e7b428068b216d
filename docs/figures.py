"""The book's figures that need no training, computed with the project's own NumPy code.

    python -m docs.figures                    # writes docs/img/*.png (from the repository root)
    python docs/figures.py --out docs/img     # the same
    python -m docs.figures --only schedules   # one figure

Each figure calls the function the book says implements the thing drawn, so a figure can never
disagree with the code:

- ``infonce_bound.png``: the bound I(x; y) >= log(K + 1) - L against the number of negatives K, and
  the loss :func:`common.losses.info_nce` measures for random and for perfectly aligned embeddings;
- ``alignment_uniformity.png``: synthetic 2-D embeddings scored by
  :func:`common.evaluate.diagnostics.diagnostics` (alignment, uniformity);
- ``schedules.png``: :func:`common.schedules.warmup_cosine` at the recipes' settings, what
  :meth:`common.schedules.LrSchedule.continued` does when a run is extended, and the target-network
  rate :func:`common.schedules.ema_momentum`.

NumPy and matplotlib only (no framework); every random number is seeded, so the figures are the
same on every run. Figures that need training (loss curves, collapse) are not drawn here: they come
from run directories, and the book marks where they will go.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python docs/figures.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from common import datasets  # noqa: E402
from common.evaluate.diagnostics import diagnostics  # noqa: E402
from common.losses import info_nce  # noqa: E402
from common.recipes import get_recipe, recipe_names  # noqa: E402
from common.schedules import LrSchedule, ema_momentum, scaled_lr, warmup_cosine  # noqa: E402
from common.stream import steps_per_epoch  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "img"
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: the same bytes everywhere


def _new_figure(width: float, height: float, columns: int) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # render with Agg, whatever matplotlib's default backend is
    return fig, fig.subplots(1, columns, squeeze=False)[0]


def _save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata=PNG_METADATA)
    return out


# --------------------------------------------------------------------------------------------------
# (a) InfoNCE: the bound and measured losses
# --------------------------------------------------------------------------------------------------
NEGATIVES = 2 ** np.arange(0, 17)  # K = 1 .. 65,536 (MoCo's ImageNet queue)


def infonce_losses(temperature: float = 0.2, queries: int = 64, dim: int = 128, seed: int = 0) -> dict:
    """``info_nce`` for every K of :data:`NEGATIVES`, on three kinds of embeddings.

    ``random``: queries, keys and queue all independent (an encoder that knows nothing);
    ``identical``: every embedding the same (the closed form log(K + 1)); ``aligned``: each key equal
    to its query, the queue random (an encoder that recognises the positive perfectly).
    """
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((queries, dim))
    k = rng.standard_normal((queries, dim))
    bank = rng.standard_normal((int(NEGATIVES.max()), dim))
    ones = np.ones((queries, dim))
    result = {"random": [], "identical": [], "aligned": []}
    for negatives in NEGATIVES:
        queue = bank[:negatives]
        result["random"].append(info_nce(q, k, queue, temperature)[0])
        result["identical"].append(info_nce(ones, ones, np.ones((negatives, dim)), temperature)[0])
        result["aligned"].append(info_nce(q, q, queue, temperature)[0])
    return {name: np.array(values) for name, values in result.items()}


def infonce_bound(out: Path, temperature: float = 0.2) -> Path:
    log_k1 = np.log(NEGATIVES + 1.0)
    fig, (left, right) = _new_figure(11.0, 4.2, 2)

    left.plot(NEGATIVES, log_k1, color="black", label="ceiling: log(K + 1)  (L = 0)")
    for loss in (1.0, 2.0, 4.0):
        left.plot(NEGATIVES, np.maximum(log_k1 - loss, 0.0), label=f"L = {loss:g} nats")
    simclr_negatives = 2 * get_recipe("simclr", "cifar10")["batch_size"] - 2
    queue = get_recipe("mocov2", "cifar10")["queue_size"]
    marks = {f"SimCLR cifar10: 2N - 2 = {simclr_negatives}": simclr_negatives,
             f"MoCo cifar10: queue {queue}": queue,
             "MoCo v2 paper, ImageNet: queue 65,536": 65536}
    for text, negatives in marks.items():
        left.axvline(negatives, color="grey", linestyle=":", linewidth=1)
        left.text(negatives * 0.85, 0.3, text, fontsize=7, ha="right", va="bottom", rotation=90)
    left.set(xscale="log", xlabel="negatives per query K", ylabel="lower bound on I(x; y), nats",
             title="InfoNCE bound: I(x; y) >= log(K + 1) - L", ylim=(0, 11.5))
    left.legend(fontsize=8, loc="center left")

    measured = infonce_losses(temperature)
    right.plot(NEGATIVES, log_k1, color="black", label="log(K + 1)")
    right.plot(NEGATIVES, measured["identical"], "o", color="black", markersize=4, fillstyle="none",
               label="identical embeddings (closed form)")
    right.plot(NEGATIVES, measured["random"], ".-", label="random embeddings: bound ~ 0")
    right.plot(NEGATIVES, measured["aligned"], ".-", label="key = query, random queue")
    right.plot(NEGATIVES, log_k1 - measured["aligned"], "--", color="C1",
               label="its bound log(K + 1) - L (capped near 1/T)")
    right.axhline(1.0 / temperature, color="grey", linestyle=":", linewidth=1)
    right.text(NEGATIVES[-1], 1.0 / temperature, "1/T", fontsize=7, ha="right", va="bottom")
    right.set(xscale="log", xlabel="negatives per query K", ylabel="nats",
              title=f"common.losses.info_nce, T = {temperature:g}, D = 128, 64 queries")
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, out)


# --------------------------------------------------------------------------------------------------
# (b) Alignment and uniformity on synthetic 2-D embeddings
# --------------------------------------------------------------------------------------------------
def _on_circle(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def synthetic_embeddings(n: int = 256, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(z1, z2)`` of 2-D embeddings: row i of z1 and z2 are two views of one image."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.0, 2 * np.pi, n)
    clusters = rng.integers(0, 4, n) * np.pi / 2 + rng.normal(0.0, 0.15, n)
    collapsed = rng.normal(0.3, 0.08, n)
    return {
        "collapsed": (_on_circle(collapsed), _on_circle(collapsed + rng.normal(0.0, 0.02, n))),
        "aligned and uniform": (_on_circle(spread), _on_circle(spread + rng.normal(0.0, 0.15, n))),
        "uniform, not aligned": (_on_circle(spread), _on_circle(rng.uniform(0.0, 2 * np.pi, n))),
        "aligned, 4 clusters": (_on_circle(clusters), _on_circle(clusters + rng.normal(0.0, 0.15, n))),
    }


def alignment_uniformity(out: Path) -> Path:
    cases = synthetic_embeddings()
    fig, axes = _new_figure(13.0, 3.9, len(cases))
    circle = _on_circle(np.linspace(0.0, 2 * np.pi, 200))
    for ax, (name, (z1, z2)) in zip(axes, cases.items(), strict=True):
        scores = diagnostics(z1, z2)
        ax.plot(circle[:, 0], circle[:, 1], color="lightgrey", linewidth=1)
        for i in range(0, len(z1), 8):  # every 8th positive pair, joined
            ax.plot([z1[i, 0], z2[i, 0]], [z1[i, 1], z2[i, 1]], color="C1", linewidth=0.6, alpha=0.7)
        ax.plot(z1[:, 0], z1[:, 1], ".", markersize=3, color="C0")
        ax.set_title(f"{name}\nalignment {scores['alignment']:.2f}, uniformity {scores['uniformity']:.2f}",
                     fontsize=9)
        ax.set(aspect="equal", xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), xticks=[], yticks=[])
    fig.suptitle("common.evaluate.diagnostics on 256 positive pairs in 2-D (lines: every 8th pair); "
                 "lower is better for both", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(fig, out)


# --------------------------------------------------------------------------------------------------
# (c) Learning-rate and target-momentum schedules
# --------------------------------------------------------------------------------------------------
def _recipe_schedule(method: str, name: str, train_split: str = "train") -> tuple[LrSchedule, int]:
    """The schedule a recipe's run gets (as ``common.session`` builds it) and its steps per epoch."""
    config = get_recipe(method, name)
    images = datasets.info(config["dataset"]).splits[config.get("train_split", train_split)]
    steps = steps_per_epoch(images, config["batch_size"])
    base = scaled_lr(config["lr"], config["batch_size"], config["lr_scaling"])
    return LrSchedule(base, steps * config["epochs"], round(config["warmup_epochs"] * steps)), steps


def _recipes_by_value(method: str, key: str) -> dict[float, list[str]]:
    """{value of ``key``: the names of ``method``'s recipes that use it}, read from the recipes so
    that the figure follows them."""
    values: dict[float, list[str]] = {}
    for name in recipe_names(method):
        values.setdefault(get_recipe(method, name)[key], []).append(f"{method} {name}")
    return values


def schedules(out: Path) -> Path:
    fig, (lr_ax, resume_ax, tau_ax) = _new_figure(14.0, 4.0, 3)

    for method, name in (("simclr", "cifar10"), ("byol", "stl10"), ("simclr", "quick")):
        schedule, steps = _recipe_schedule(method, name)
        table = schedule.table(np.float64)
        rates = [warmup_cosine(t, schedule.total_steps, schedule.warmup_steps, schedule.base_lr)
                 for t in range(schedule.total_steps + 1)]
        assert np.allclose(table, rates), "LrSchedule.table and warmup_cosine disagree"
        epochs = np.arange(len(table)) / steps
        lr_ax.plot(epochs / epochs[-1], table / schedule.base_lr,
                   label=f"{method} {name}: peak {schedule.base_lr:g}, warm-up "
                         f"{schedule.warmup_steps} of {schedule.total_steps} steps")
    lr_ax.set(xlabel="fraction of training (steps / total steps)", ylabel="rate / peak rate",
              title="warmup_cosine at three recipes' settings\n(LrSchedule.table, as the runs get it)")
    lr_ax.legend(fontsize=7, loc="lower center")

    schedule, steps = _recipe_schedule("simclr", "quick")
    epochs = schedule.total_steps // steps  # the recipe's; extended by half again at 3/4 of it
    at_epoch, end_epoch = 3 * epochs // 4, 3 * epochs // 2
    at, end = at_epoch * steps, end_epoch * steps
    continued = schedule.continued(at, end)
    t = np.arange(end + 1)
    resume_ax.plot(t[: schedule.total_steps + 1] / steps, schedule.table(np.float64), color="black",
                   label=f"the run as started: {epochs} epochs")
    moved = [warmup_cosine(s, end, schedule.warmup_steps, schedule.base_lr) for s in t[at:]]
    resume_ax.plot(t[at:] / steps, moved, ":", color="C3",
                   label=f"horizon moved to {end_epoch}: the rate jumps")
    resume_ax.plot(t[at:] / steps, continued.table(np.float64)[at:], "--", color="C0",
                   label="LrSchedule.continued: a new half-cosine\nfrom the current rate")
    resume_ax.axvline(at / steps, color="grey", linestyle=":", linewidth=1)
    resume_ax.set(xlabel="epoch", ylabel="learning rate",
                  title=f"simclr quick extended at epoch {at_epoch}:\n--resume RUN_DIR --epochs {end_epoch}")
    resume_ax.legend(fontsize=7)

    k = np.linspace(0.0, 1.0, 501)
    taus = _recipes_by_value("byol", "target_momentum")
    taus.setdefault(0.996, []).append("BYOL paper, ImageNet")
    for base, where in sorted(taus.items()):
        tau_ax.plot(k, ema_momentum(base, k * 1000, 1000), label=f"tau0 = {base:g} ({', '.join(where)})")
    for m, where in sorted(_recipes_by_value("mocov2", "key_momentum").items()):
        tau_ax.axhline(m, linestyle=":", linewidth=1, color="grey")
        tau_ax.text(0.35, m, f"MoCo constant m = {m:g} ({', '.join(where)})", fontsize=7, va="bottom")
    tau_ax.set(xlabel="fraction of training k / K", ylabel="EMA rate (weight of the old target)",
               title="ema_momentum:\ntau = 1 - (1 - tau0)(cos(pi k / K) + 1) / 2",
               ylim=(min(taus) - 0.01, 1.005))
    tau_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, out)


FIGURES = {
    "infonce_bound": infonce_bound,
    "alignment_uniformity": alignment_uniformity,
    "schedules": schedules,
}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNG files")
    parser.add_argument("--only", choices=sorted(FIGURES), nargs="+", default=None)
    args = parser.parse_args(argv)
    written = []
    for name in args.only or FIGURES:
        path = FIGURES[name](args.out / f"{name}.png")
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
