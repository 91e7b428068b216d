"""The registry on the command line.

    python -m common.datasets                          # every dataset: splits, size, on disk?
    python -m common.datasets show NAME [--root R] [--split S]   # load it and summarise
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import datasets

CHUNK_IMAGES = 2048  # a memory-mapped split is averaged in chunks, never read whole


def registry_table() -> str:
    """One row per dataset, then the data dir."""
    rows = [("name", "splits (images)", "image size", "on disk", "source")]
    for name, entry in datasets.REGISTRY.items():
        info = entry.info
        rows.append((
            name,
            ", ".join(f"{split} {count:,}" for split, count in info.splits.items()) or "sub-folders",
            "x".join(map(str, info.image_size)) if info.image_size else "any",
            {True: "yes", False: "no", None: "-"}[entry.is_present(datasets.data_dir())],
            info.source,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    return "\n".join([*lines, "", f"data dir: {datasets.data_dir()} (set $DATA_DIR to change it)"])


def channel_mean(images: np.ndarray) -> np.ndarray:
    """Mean R, G, B over all pixels of all images, chunk by chunk."""
    total = np.zeros(3)
    for start in range(0, len(images), CHUNK_IMAGES):
        total += images[start : start + CHUNK_IMAGES].sum(axis=(0, 1, 2), dtype=np.float64)
    return total / max(1, images.shape[0] * images.shape[1] * images.shape[2])


def split_summary(name: str, split: str, root) -> str:
    """Shape, dtype, pixel mean and per-class counts of one loaded split."""
    images, labels = datasets.load(name, split, root=root)
    classes = datasets.info(name, root=root).classes
    mean = ", ".join(f"{value:.1f}" for value in channel_mean(images))
    lines = [f"{split}: images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}",
             f"  pixel mean (R, G, B): {mean}"]
    values, counts = np.unique(labels, return_counts=True)
    for value, count in zip(values, counts, strict=True):
        label = "unlabeled" if value < 0 else f"{value}: {classes[value]}"
        lines.append(f"  {label:<24} {count:,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    show = commands.add_parser("show", help="load a dataset and summarise each split")
    show.add_argument("name", choices=datasets.names())
    show.add_argument("--root", help="dataset folder (default: the data dir); for imagefolder "
                      "the image folder or .zip")
    show.add_argument("--split", help="only this split (default: all)")
    args = parser.parse_args(argv)
    if args.command is None:
        print(registry_table())
        return 0
    try:
        info = datasets.info(args.name, root=args.root)
        if not info.splits and args.root is None:  # an image folder tells its splits when read
            parser.exit(1, f"error: {args.name} needs --root: the image folder or .zip to show\n")
        print(f"{info.name}: {info.description}\nsource: {info.source}")
        for split in [args.split] if args.split else list(info.splits):
            print(split_summary(args.name, split, args.root))
    except (ValueError, OSError) as error:
        parser.exit(1, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
