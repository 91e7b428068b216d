"""Speed of SimCLR's two augmentation paths, and of a training step fed by each (CPU).

Run from the repository root: ``.venv/bin/python -m bench.bench_simclr_views`` (2 CPU cores: about a
minute). Target: the batched path at least 10x the per-image path in views/s.

Setting: 32 px images, the SimCLR CIFAR preset (``preset("simclr", 32)``), two views per image,
batches of 256 images (512 views). The images are random uint8 pixels; no op's cost depends on the
content, only on which ops fire, and that is drawn from the preset's probabilities either way.

- per-image: ``TwoViewDataset`` (torchvision.transforms.v2 per image), timed both as a plain loop in
  this process (one thread) and through a DataLoader with ``--workers`` processes; the better one is
  the baseline.
- batched: ``BatchAugmenter`` on the uint8 batch (parameters drawn with NumPy, ops on whole batches).
- training: SGD steps (forward + backward of ``resnet18_small`` + SimCLR's 2-layer projection head,
  NT-Xent at temperature 0.5, optimiser update) with views from the best per-image path or from the
  batched path.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.arch import resnet_spec
from common.augment import preset
from pytorch_simclr.augment import BatchAugmenter, TwoViewDataset
from pytorch_simclr.losses import nt_xent
from pytorch_simclr.model import ProjectionHead, SimCLRModel, build_encoder


def best_seconds(fn, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` calls, after one untimed warm-up.

    The CPU time of this process (all its threads) measures the work itself: on a shared machine it
    is much steadier than the wall clock.
    """
    fn()
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(times)


def per_image_loop_batch(dataset: TwoViewDataset, indices: np.ndarray):
    views = [dataset[int(i)] for i in indices]
    return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])


def loader_seconds_per_batch(loader: DataLoader, batches: int) -> float:
    """Seconds per batch of a DataLoader pass, from iterator creation to its last batch.

    The workers persist (started by an untimed pass), so the figure includes refilling the prefetch
    queue but not process start-up; a pass of ``batches`` batches amortises the refill.
    """
    for _ in loader:  # start the workers
        pass
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    assert count == batches
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8, help="batches per timed per-image pass")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats of a batched call")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
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
    torch.set_num_threads(1)
    loop_s, loop_cpu = best_seconds(lambda: per_image_loop_batch(dataset, batch_indices), repeats=3)
    torch.set_num_threads(args.threads)
    loader = DataLoader(dataset, batch_size=n, num_workers=args.workers, persistent_workers=True,
                        drop_last=True)
    loader_s = loader_seconds_per_batch(loader, args.batches)
    augment = BatchAugmenter(pair, "cpu", seed=0)
    uint8_batch = torch.from_numpy(images[:n])
    batched_s, batched_cpu = best_seconds(lambda: augment(uint8_batch), repeats=args.repeats)

    per_image_s, per_image_name = min((loop_s, "plain loop"), (loader_s, f"{args.workers} workers"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {n} images "
          f"({views_per_batch} views), 32 px, preset simclr/32\n")
    print(f"{'path':<34}{'ms / batch':>12}{'views/s':>12}{'CPU ms / batch':>16}")
    for name, seconds, cpu in (
        ("per-image, plain loop", loop_s, f"{1e3 * loop_cpu:.1f}"),
        (f"per-image, DataLoader {args.workers} workers", loader_s, "(in workers)"),
        ("batched (BatchAugmenter)", batched_s, f"{1e3 * batched_cpu:.1f}"),
    ):
        print(f"{name:<34}{1e3 * seconds:>12.1f}{views_per_batch / seconds:>12.0f}{cpu:>16}")
    print(f"batched / best per-image ({per_image_name}): {per_image_s / batched_s:.1f}x in views/s; "
          f"CPU work per view, plain loop / batched: {loop_cpu / batched_cpu:.1f}x\n")

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

    def steps_per_second(view_batches) -> float:
        """1 / the median time of a step, views included (after one warm-up step)."""
        train_step(*next(view_batches))
        times = []
        for _ in range(args.train_steps):
            start = time.perf_counter()
            train_step(*next(view_batches))
            times.append(time.perf_counter() - start)
        return 1 / float(np.median(times))

    def per_image_views():
        while True:
            if per_image_name == "plain loop":
                torch.set_num_threads(1)
                views = per_image_loop_batch(dataset, batch_indices)
                torch.set_num_threads(args.threads)
                yield views
            else:
                yield from loader

    def batched_views():
        while True:
            yield augment(uint8_batch)

    compute_only = steps_per_second(iter(lambda: (torch.randn(n, 3, 32, 32),) * 2, None))
    per_image_steps = steps_per_second(per_image_views())
    batched_steps = steps_per_second(batched_views())
    print(f"{'training step (resnet18_small)':<34}{'steps/s':>12}{'images/s':>12}")
    for name, rate in (
        (f"views from per-image ({per_image_name})", per_image_steps),
        ("views from batched", batched_steps),
        ("no augmentation (compute only)", compute_only),
    ):
        print(f"{name:<34}{rate:>12.2f}{rate * n:>12.0f}")


if __name__ == "__main__":
    main()
