"""Speed of SimCLR's two augmentation paths, and of a training step fed by each (CPU).

Run from the repository root: ``.venv/bin/python -m bench.bench_simclr_views`` (2 CPU cores:
about three minutes). Target: the batched path at least 10x the best per-image path in views/s.

Setting: 32 px images, the SimCLR CIFAR preset (``preset("simclr", 32)``), two views per image,
batches of 256 images (512 views). The images are random uint8 pixels; no op's cost depends on the
content, only on which ops fire, and that is drawn from the preset's probabilities either way.

- per-image: ``TwoViewDataset`` (torchvision.transforms.v2 per image), timed both as a plain loop in
  this process (one thread) and through a DataLoader with ``--workers`` processes; the better one is
  the baseline.
- batched: ``BatchAugmenter`` on the uint8 batch (parameters drawn with NumPy each call, ops on
  whole batches), timed with 1 and with ``--threads`` intra-op threads; the better one counts.

Every path is timed ``--rounds`` times, the rounds interleaved so that a burst of load from other
processes hits all paths alike; the figures are medians over the rounds, the ratio is that of the
medians.
- training: SGD steps (forward + backward of ``resnet18_small`` + SimCLR's 2-layer projection head,
  NT-Xent at temperature 0.5, optimiser update) with views from the best per-image path, from the
  batched path, or none (random tensors). Each feed is timed by whole passes of ``--train-steps``
  steps (the DataLoader: one epoch of a dataset of that many batches), the passes of the three
  feeds interleaved over ``--train-rounds`` rounds after one untimed pass each; the figure is the
  median over the rounds of a pass's seconds per step. Whole passes because the DataLoader's
  workers make the views in the background, on the same cores as the step: timed step by step,
  the work of its prefetched batches would land on whichever step ran beside it, another feed's
  included; within a pass all of it lands on the pass.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.arch import resnet_spec
from common.augment import preset, sample_view_params
from pytorch_simclr.augment import TwoViewDataset
from pytorch_simclr.augment_batched import BatchAugmenter
from pytorch_simclr.losses import nt_xent
from pytorch_simclr.model import ProjectionHead, SimCLRModel, build_encoder


def median_seconds(fn, repeats: int, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds: medians over ``repeats`` calls of ``fn`` with ``threads`` intra-op threads.

    The CPU time of this process (all its threads) measures the work itself: on a shared machine it
    is much steadier than the wall clock.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
    finally:
        torch.set_num_threads(previous)
    wall_times, cpu_times = zip(*times, strict=True)
    return float(np.median(wall_times)), float(np.median(cpu_times))


def per_image_loop_batch(dataset: TwoViewDataset, indices: np.ndarray):
    views = [dataset[int(i)] for i in indices]
    return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])


def loader_seconds_per_batch(loader: DataLoader, batches: int) -> float:
    """Seconds per batch of a DataLoader pass, from iterator creation to its last batch.

    The workers persist (started by the untimed warm-up round), so the figure includes refilling the
    prefetch queue but not process start-up; a pass of ``batches`` batches amortises the refill.
    """
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    assert count == batches
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8, help="batches per timed per-image pass")
    parser.add_argument("--repeats", type=int, default=10, help="batched calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--train-steps", type=int, default=4, help="steps per timed pass of a feed")
    parser.add_argument("--train-rounds", type=int, default=3, help="interleaved passes per feed")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    if args.train_steps > args.batches:
        parser.error("--train-steps is at most --batches (a pass's images come from those batches)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, views_per_batch = args.batch_size, 2 * args.batch_size

    pair = preset("simclr", 32)
    images = np.random.default_rng(0).integers(0, 256, (args.batches * n, 32, 32, 3), dtype=np.uint8)
    dataset = TwoViewDataset(images, pair)
    batch_indices = np.arange(n)

    # -- views/s --------------------------------------------------------------------------------
    # One intra-op thread for the per-image loop, as in DataLoader workers: 3x32x32 tensors are too
    # small to split, and a second thread only adds synchronisation (40x slower on a busy machine).
    loader = DataLoader(dataset, batch_size=n, num_workers=args.workers, persistent_workers=True,
                        drop_last=True)
    batch_augmenter = BatchAugmenter(pair, "cpu")
    rng = np.random.default_rng(0)

    def augment(uint8_batch):
        """Both views with fresh parameters (drawn as the shared stream draws them each step)."""
        params = [sample_view_params(spec, n, (32, 32), rng) for spec in pair.views]
        return batch_augmenter(uint8_batch, *params)

    uint8_batch = torch.from_numpy(images[:n])
    batched_threads = sorted({1, args.threads})
    timers = {  # name -> () -> (wall, CPU) seconds per batch, CPU None where it is spent in workers
        "per-image, plain loop": lambda: median_seconds(
            lambda: per_image_loop_batch(dataset, batch_indices), repeats=1, threads=1),
        f"per-image, DataLoader {args.workers} workers": lambda: (
            loader_seconds_per_batch(loader, args.batches), None),
        **{f"batched, {t} thread{'s' if t > 1 else ''}": partial(
            median_seconds, lambda: augment(uint8_batch), args.repeats, t) for t in batched_threads},
    }
    for timer in timers.values():  # warm-up: starts the workers, fills caches
        timer()
    rounds = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            rounds[name].append(timer())
    seconds = {name: float(np.median([wall for wall, _ in r])) for name, r in rounds.items()}
    cpu = {name: None if r[0][1] is None else float(np.median([c for _, c in r]))
           for name, r in rounds.items()}

    per_image_name = min((name for name in timers if name.startswith("per-image")), key=seconds.get)
    batched_name = min((name for name in timers if name.startswith("batched")), key=seconds.get)
    print(f"torch {torch.__version__}, batch {n} images ({views_per_batch} views), 32 px, preset "
          f"simclr/32; medians of {args.rounds} interleaved rounds\n")
    print(f"{'path':<34}{'ms / batch':>12}{'views/s':>12}{'CPU ms / batch':>16}")
    for name, wall in seconds.items():
        cpu_ms = "(in workers)" if cpu[name] is None else f"{1e3 * cpu[name]:.1f}"
        print(f"{name:<34}{1e3 * wall:>12.1f}{views_per_batch / wall:>12.0f}{cpu_ms:>16}")
    print(f"best batched ({batched_name}) / best per-image ({per_image_name}): "
          f"{seconds[per_image_name] / seconds[batched_name]:.1f}x in views/s; CPU work per view, "
          f"plain loop / {batched_name}: "
          f"{cpu['per-image, plain loop'] / cpu[batched_name]:.1f}x\n")
    per_image_name = "plain loop" if per_image_name.endswith("plain loop") else "DataLoader"
    batched_threads = int(batched_name.split()[1])

    # -- training steps/s -----------------------------------------------------------------------
    encoder = build_encoder(resnet_spec("resnet18_small", 32))
    model = SimCLRModel(encoder, ProjectionHead(encoder.feature_dim, encoder.feature_dim, 128))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train_step(view1: torch.Tensor, view2: torch.Tensor) -> None:
        _, z = model(torch.cat([view1, view2]))
        loss = nt_xent(z[:n], z[n:], temperature=0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    steps = args.train_steps
    train_loader = DataLoader(TwoViewDataset(images[: steps * n], pair), batch_size=n,
                              num_workers=args.workers, persistent_workers=True, drop_last=True)

    def plain_loop_views():
        torch.set_num_threads(1)
        views = per_image_loop_batch(dataset, batch_indices)
        torch.set_num_threads(args.threads)
        return views

    def batched_views():
        torch.set_num_threads(batched_threads)
        views = augment(uint8_batch)
        torch.set_num_threads(args.threads)
        return views

    def noise():
        return (torch.randn(n, 3, 32, 32),) * 2

    def one_pass(feed) -> float:
        """Seconds per step of one pass of ``steps`` steps fed by ``feed``."""
        start, count = time.perf_counter(), 0
        for views in (iter(train_loader) if feed is None else (feed() for _ in range(steps))):
            train_step(*views)
            count += 1
        assert count == steps
        return (time.perf_counter() - start) / steps

    feeds = {f"views from per-image ({per_image_name})":
             None if per_image_name == "DataLoader" else plain_loop_views,  # None: train_loader
             "views from batched": batched_views, "no augmentation (compute only)": noise}
    for feed in feeds.values():  # warm-up: the first steps allocate and tune; workers start
        one_pass(feed)
    seconds = {name: [] for name in feeds}
    for _ in range(args.train_rounds):
        for name, feed in feeds.items():
            seconds[name].append(one_pass(feed))
    print(f"{'training step (resnet18_small)':<34}{'steps/s':>12}{'images/s':>12}   (medians of "
          f"{args.train_rounds} interleaved passes of {steps} steps per feed, views included)")
    for name, times in seconds.items():
        rate = 1 / float(np.median(times))
        print(f"{name:<34}{rate:>12.2f}{rate * n:>12.0f}")


if __name__ == "__main__":
    main()
