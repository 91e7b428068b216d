"""The data stream every chapter trains on: which images each step sees, and with which views.

Both are NumPy functions of ``(seed, epoch, step)`` only, so every chapter in every framework, on one
device or many, sees the same images and the same augmentation parameters at the same step for the
same seed -- and a resumed run sees exactly what the uninterrupted one saw.

- **Epoch order**: a permutation of the training images drawn from ``default_rng((seed, epoch))``.
  Step ``s`` takes the global batch ``order[s B : (s + 1) B]``; the images left over at the end of
  an epoch (fewer than B) are skipped that epoch (contrastive losses and queues want full batches).
- **Shards**: with W replicas or processes, replica r takes the contiguous slice
  ``[r B/W : (r + 1) B/W]`` of the global batch (:func:`shard`). So the W shards of a step,
  concatenated in rank order, are the single-device batch of that step, and a data-parallel step
  can be checked against a single-device one on the very same images. (PyTorch's
  ``DistributedSampler`` interleaves ranks instead, ``order[r::W]``, which gives every world size a
  different global batch and cannot be reproduced by TensorFlow or Keras.)
- **View parameters**: both views' parameters for the whole global batch are drawn from
  ``default_rng((seed, epoch, step, VIEW_STREAM))`` by ``common.augment.sample_view_params`` (view 1
  first, then view 2); each replica applies the rows of its shard.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from common.augment import PairSpec, ViewParams, sample_view_params

VIEW_STREAM = 1
"""Tags the view-parameter generator so that it never shares a stream with the epoch order."""

PROCESS_STREAM = 2
"""Tags :func:`process_seed`'s stream."""


def steps_per_epoch(num_images: int, global_batch: int, cap: int | None = None) -> int:
    """Optimisation steps in one epoch of ``num_images`` at ``global_batch`` (at most ``cap``)."""
    steps = num_images // global_batch
    if steps == 0:
        raise ValueError(
            f"the training split has {num_images} images, fewer than one batch of {global_batch}; "
            "lower --batch-size"
        )
    return min(steps, cap) if cap else steps


def epoch_order(num_images: int, epoch: int, seed: int) -> np.ndarray:
    """The seeded permutation of ``range(num_images)`` that epoch ``epoch`` visits."""
    return np.random.default_rng((seed, epoch)).permutation(num_images)


def process_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed for a framework's own random state in one epoch of one process (PyTorch's per-image
    views draw from torch's), different for every ``(seed, epoch, rank)``: ``(seed + epoch) W +
    rank`` would give seed 0's epoch 1 the draws of seed 1's epoch 0."""
    return int(np.random.SeedSequence((seed, epoch, rank, PROCESS_STREAM)).generate_state(1)[0])


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Replica ``rank``'s contiguous slice of a global batch (its length must divide evenly)."""
    if len(batch) % world_size:
        raise ValueError(f"a global batch of {len(batch)} does not split over {world_size} replicas")
    size = len(batch) // world_size
    return batch[rank * size : (rank + 1) * size]


@dataclass(frozen=True)
class StepData:
    """What step ``step`` of ``epoch`` trains on: image indices and both views' parameters.

    All three cover the global batch, in the same order; ``shard`` them for one replica.
    """

    indices: np.ndarray
    view1: ViewParams
    view2: ViewParams

    def shard(self, rank: int, world_size: int) -> StepData:
        rows = shard(np.arange(len(self.indices)), rank, world_size)
        return StepData(self.indices[rows], self.view1.select(rows), self.view2.select(rows))


@dataclass(frozen=True)
class DataStream:
    """The stream of one training run; ``stream.step(epoch, step)`` is all a step needs to know."""

    num_images: int
    image_hw: tuple[int, int]
    global_batch: int
    pair_spec: PairSpec
    seed: int
    max_steps_per_epoch: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_images, self.global_batch, self.max_steps_per_epoch)

    def indices(self, epoch: int, step: int) -> np.ndarray:
        """The global batch of step ``step`` of ``epoch`` (indices into the training images)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is outside the epoch's {self.steps_per_epoch} steps")
        order = epoch_order(self.num_images, epoch, self.seed)
        return order[step * self.global_batch : (step + 1) * self.global_batch]

    def view_params(self, epoch: int, step: int, n: int | None = None) -> tuple[ViewParams, ViewParams]:
        """Both views' parameters for the ``n`` (default: the global batch) images of a step."""
        rng = np.random.default_rng((self.seed, epoch, step, VIEW_STREAM))
        n = self.global_batch if n is None else n
        return (sample_view_params(self.pair_spec.view1, n, self.image_hw, rng),
                sample_view_params(self.pair_spec.view2, n, self.image_hw, rng))

    def step(self, epoch: int, step: int) -> StepData:
        return StepData(self.indices(epoch, step), *self.view_params(epoch, step))

    def epoch(self, epoch: int, first_step: int = 0):
        """``(step, StepData)`` for the steps ``first_step ..`` of ``epoch``."""
        order = epoch_order(self.num_images, epoch, self.seed)
        batch = self.global_batch
        for step in range(first_step, self.steps_per_epoch):
            yield step, StepData(order[step * batch : (step + 1) * batch], *self.view_params(epoch, step))


def fingerprint(images: np.ndarray, samples: int = 64) -> str:
    """A short digest of a training set: its shape and the bytes of ``samples`` evenly spaced images.

    Saved with a run, so that ``--resume`` can tell that ``--data-dir`` still holds the same images
    without hashing every byte of a large dataset: another dataset or image size gives another
    digest, and so does any change that moves one of the sampled images, as most reorders and
    insertions do. A change confined to the images between the samples (two neighbours swapped)
    goes unseen.
    """
    digest = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    for index in np.linspace(0, len(images) - 1, num=min(samples, len(images)), dtype=np.int64):
        digest.update(np.ascontiguousarray(images[index]).tobytes())
    return digest.hexdigest()[:16]
