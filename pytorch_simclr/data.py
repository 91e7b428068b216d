"""Data for the SimCLR chapter: uint8 images from common/datasets, and the per-image loader.

Which images each step sees comes from the shared data stream (``common/stream.py``, through the
run's ``TrainingSession``), identical in every chapter and framework. Two pipelines turn them into
views:

- ``batched`` (default): the uint8 batch goes to the training device and
  ``augment_batched.BatchAugmenter`` makes both views there from the stream's view parameters
  (the same views as every other chapter at the same step).
- ``per-image``: the classic path. ``augment.TwoViewDataset`` runs the torchvision.transforms.v2
  pipeline per image in DataLoader worker processes, over the same index batches; torchvision draws
  its own view parameters.
"""

from __future__ import annotations

import signal

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import datasets
from pytorch_simclr.augment import TwoViewDataset


def load_images(config: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int64 labels of ``split`` of the configured dataset."""
    return datasets.load(config["dataset"], split, root=config.get("data_dir"))


def per_image_loader(images: np.ndarray, pair_spec, batches: list[np.ndarray], workers: int,
                     seed: int) -> DataLoader:
    """The classic path: torchvision v2 transforms per image in ``workers`` processes, over the
    given index batches (one per step, in order).

    torchvision draws the views from torch's random state: each worker's, seeded from ``seed``, or
    with ``workers=0`` this process's, seeded here. Give every process of a data-parallel run its
    own ``seed``, or rank r's k-th image gets the draws of rank 0's k-th."""
    if workers == 0:
        torch.manual_seed(seed)
    return DataLoader(TwoViewDataset(images, pair_spec), batch_sampler=[b.tolist() for b in batches],
                      num_workers=workers, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=leave_interrupts_to_the_main_process)


def leave_interrupts_to_the_main_process(_worker_id: int) -> None:
    """A worker ignores Ctrl-C and SIGTERM: they are the training process's to handle.

    A terminal's Ctrl-C reaches every process of the group, and a forked worker inherits the
    session's deferring handler (``common/interrupts.py``): each worker would print the "stopping
    after the current step" line again, and a second Ctrl-C would kill it, failing the step
    instead of stopping cleanly. The training process finishes its step, saves, and shuts the
    workers down through the DataLoader; if it dies, they exit when they see it gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
