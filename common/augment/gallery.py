"""Picture of what each preset does: a few dataset images and 8 random views of each.

    python -m common.augment.gallery --out docs/img/augment_gallery.png
    python -m common.augment.gallery --datasets shapes digits --images 2 --size 96 --seed 0
    python -m common.augment.gallery --imagefolder PATH/cifar10-jpeg.zip --out /tmp/g.png

One block of rows per preset, one row per image: the image (resized to the view size), then 4 views
drawn with the preset's first view spec and 4 with its second (they differ for BYOL). Views are shown
before normalisation. The default size, 96, uses the presets' ImageNet variants so that blur is
visible; ``--size 32`` shows the CIFAR variants (no blur).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common import datasets

from .ops import apply_view_batch, resized_crop, to_float
from .presets import PRESETS, preset, without_normalize
from .sampler import sample_view_params
from .spec import PairSpec


def pick_examples(images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` images of distinct classes (chosen at random by ``seed``), first of each class."""
    classes = np.unique(labels)
    if count > len(classes):
        raise ValueError(f"asked for {count} images of distinct classes, the data has {len(classes)}")
    chosen = np.random.default_rng(seed).choice(classes, size=count, replace=False)
    return np.stack([images[np.flatnonzero(labels == c)[0]] for c in chosen])


def pair_views(images: np.ndarray, pair: PairSpec, views: int, rng: np.random.Generator) -> np.ndarray:
    """``(N, views, S, S, 3)`` floats in [0, 1]: the first half from view 1, the rest from view 2.

    The pair's normalisation is dropped so that the views can be displayed as they are.
    """
    if views < 2 or views % 2:
        raise ValueError(f"views must be an even number >= 2 (half per view spec), got {views}")
    pair = without_normalize(pair)
    n, height, width = images.shape[:3]
    repeated = np.repeat(images, views // 2, axis=0)  # image 0 x (views/2), image 1 x ...
    halves = []
    for spec in pair.views:
        params = sample_view_params(spec, len(repeated), (height, width), rng)
        out = apply_view_batch(repeated, params, spec)
        halves.append(out.reshape(n, views // 2, *out.shape[1:]))
    return np.concatenate(halves, axis=1)


def render(rows: list[tuple[str, np.ndarray, np.ndarray]], out: Path, views: int) -> None:
    """Draw rows of (label, original HWC float, views (V, S, S, 3) float) into a PNG at ``out``."""
    n_cols = views + 1
    fig = Figure(figsize=(0.95 * n_cols + 0.9, 0.95 * len(rows) + 0.3))
    FigureCanvasAgg(fig)  # render with Agg, whatever matplotlib's default backend is
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (label, original, row_views) in enumerate(rows):
        for c, picture in enumerate([original, *row_views]):
            ax = axes[r, c]
            ax.imshow(np.clip(picture, 0.0, 1.0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    for c in range(1, n_cols):
        axes[0, c].set_title(f"view {1 if c <= views // 2 else 2}", fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.995, top=0.97, bottom=0.005, wspace=0.05, hspace=0.05)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def build_rows(
    examples: dict[str, np.ndarray], size: int, views: int, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Rows for :func:`render`: for each preset, each dataset's example images and their views."""
    rng = np.random.default_rng(seed)
    rows = []
    for name in PRESETS:
        pair = preset(name, size)
        for dataset, images in examples.items():
            row_views = pair_views(images, pair, views, rng)
            for image, image_views in zip(images, row_views, strict=True):
                h, w = image.shape[:2]
                original = resized_crop(to_float(image), (0, 0, h, w), size)
                rows.append((f"{name}\n{dataset}", original, image_views))
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/augment_gallery.png"))
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["shapes", "digits"],
        help="built-in or registered datasets, test split (default: shapes digits)",
    )
    parser.add_argument(
        "--imagefolder",
        default=None,
        help="also show the test split of this image folder or .zip (e.g. CIFAR-10)",
    )
    parser.add_argument("--images", type=int, default=2, help="images per dataset (default 2)")
    parser.add_argument("--views", type=int, default=8, help="views per image, even (default 8)")
    parser.add_argument("--size", type=int, default=96, help="view size in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sources = [(name, name, {}) for name in args.datasets]
    if args.imagefolder:
        sources.append((Path(args.imagefolder).stem, "imagefolder", {"root": args.imagefolder}))
    examples = {}
    for label, name, kwargs in sources:
        images, labels = datasets.load(name, "test", **kwargs)
        examples[label] = pick_examples(images, labels, args.images, args.seed)
    render(build_rows(examples, args.size, args.views, args.seed), args.out, args.views)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return args.out


if __name__ == "__main__":
    main()
