"""Data for the SimCLR chapter: uint8 images from common/datasets, and the order they are visited in.

Two input pipelines feed the same training step (see ``augment.py``):

- ``batched`` (default): the loader only moves uint8 images. Each step indexes a uint8 batch, moves it
  to the training device, and ``BatchAugmenter`` makes both views there with tensor ops.
- ``per-image``: the classic path. ``TwoViewDataset`` runs the torchvision.transforms.v2 pipeline per
  image in DataLoader worker processes and collates float views.

Both visit the images in the order of a ``DistributedSampler`` (one replica when not distributed), so a
run under ``torchrun`` shards each epoch across ranks exactly as a single process would order it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from common import datasets
from pytorch_simclr.augment import TwoViewDataset


def load_images(config: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int64 labels of ``split`` of the configured dataset."""
    return datasets.load(config["dataset"], split, root=config.get("data_dir"))


class _Indices(Dataset):
    """A sized stand-in for the image array so DistributedSampler can shard its indices."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


def epoch_batches(
    num_images: int, batch_size_per_rank: int, epoch: int, seed: int, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's index batches for ``epoch``: a seeded shuffle, sharded like DistributedSampler.

    Deterministic in (seed, epoch), so a resumed run replays exactly the same batches; the last
    incomplete batch is dropped (contrastive losses want full batches).
    """
    sampler = DistributedSampler(
        _Indices(num_images), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return list(BatchSampler(sampler, batch_size_per_rank, drop_last=True))


def steps_per_epoch(num_images: int, batch_size: int, cap: int | None) -> int:
    """Optimisation steps in one epoch of ``num_images`` at global ``batch_size``."""
    steps = num_images // batch_size
    if steps == 0:
        raise ValueError(
            f"the training split has {num_images} images, fewer than one batch of {batch_size}; "
            "lower --batch-size"
        )
    return min(steps, cap) if cap else steps


def per_image_loader(
    images: np.ndarray, pair_spec, batches: list[list[int]], workers: int, seed: int
) -> DataLoader:
    """The classic path: torchvision v2 transforms per image in ``workers`` processes."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TwoViewDataset(images, pair_spec),
        batch_sampler=batches,
        num_workers=workers,
        generator=generator,
    )
