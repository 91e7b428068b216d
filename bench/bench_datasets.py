"""Load times of the image-folder loader on a real archive: first decode, then the cached load.

Run from the repository root (the shared CIFAR-10 JPEG copy is the default source):

    .venv/bin/python -m bench.bench_datasets [--root ../shared/data/cifar10-jpeg.zip]

The first load decodes every JPEG with Pillow and writes the uint8 cache, as any load does: beside
a writable source (``<source>.npy-cache/``, kept afterwards), else under ``$DATA_DIR``, here a fresh
temporary one. A source that already has a cache beside it is refused, since its first load would
read that cache instead of decoding. The cached load is timed over repeats. The issue's target: the
cached load of 60,000 images well under 1 s.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from common import datasets
from common.datasets import imagecache

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


def load_all(root: Path) -> dict[str, np.ndarray]:
    return {split: datasets.load("imagefolder", split, root=root)[1] for split in ("train", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="image folder or .zip")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    nearby, _ = imagecache.cache_dirs(args.root)
    if nearby.is_dir() and any(nearby.iterdir()):
        parser.error(f"{nearby} holds a cache of an earlier load, which the first load would read "
                     "instead of decoding: delete that folder (the next load rebuilds it) and run again")
    with tempfile.TemporaryDirectory() as data_dir:
        os.environ["DATA_DIR"] = data_dir
        start = time.perf_counter()
        labels = load_all(args.root)
        first = time.perf_counter() - start
        cached = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            load_all(args.root)
            cached.append(time.perf_counter() - start)
    for split, split_labels in labels.items():
        counts = np.bincount(split_labels)
        print(f"{split}: {len(split_labels):,} images, {len(counts)} classes, "
              f"{counts.min():,}-{counts.max():,} per class")
    print(f"first load (decode + cache): {first:.1f} s")
    print(f"cached load: median {np.median(cached):.2f} s, min {min(cached):.2f} s "
          f"over {args.repeats} repeats")


if __name__ == "__main__":
    main()
