"""Data for the MoCo chapter: uint8 images from common/datasets, and the shared data stream as a
distributed ``tf.data`` pipeline.

Which images each step sees, and with which view parameters, comes from ``common/stream.py``: the
same for every chapter and framework at the same step and seed. Here it becomes the input of a
``tf.distribute`` strategy: each replica gets its contiguous shard of the step's global batch and
both views' dense parameters (``common.augment.dense``); the views themselves are made on the
device, inside the training step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from common import allocator, datasets
from common.augment.dense import dense_view_params
from common.stream import DataStream
from tensorflow_moco.augment import dense_params_signature

SHUFFLE_STREAM = 2
"""Tags the Shuffle BN seed generator (``common.stream.VIEW_STREAM`` is 1), so it never shares a
stream with the view parameters or the epoch order."""


def load_images(config: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int64 labels of ``split`` of the configured dataset."""
    return datasets.load(config["dataset"], split, root=config.get("data_dir"))


# --------------------------------------------------------------------------------------------------
def step_seed(seed: int, epoch: int, step: int) -> np.ndarray:
    """The stateless seed (two int64) of a step's Shuffle BN permutation, a function of the stream's
    ``(seed, epoch, step)`` like every other random number of a step (``common.stream``)."""
    return np.random.default_rng((seed, epoch, step, SHUFFLE_STREAM)).integers(0, 2**31 - 1, 2)


def distribute_stream(strategy: tf.distribute.Strategy, images: np.ndarray, stream: DataStream,
                      epoch: int, first_step: int = 0) -> Iterator:
    """Steps ``first_step ..`` of ``epoch``: an iterator over a distributed dataset for ``strategy``.

    Each element is ``(images, view1, view2, seed)`` for one replica: its contiguous shard of the
    step's global batch (uint8 NHWC), both views' parameters for those images
    (``common.augment.dense.dense_view_params``), and the step's Shuffle BN seed (the same on every
    replica).
    The images and parameters are ``common.stream``'s: the same per step as in every other chapter.
    Only whole global batches are formed (the stream skips the remainder: drop_remainder), which
    the queue and BatchNorm under tf.distribute both need.

    ``distribute_datasets_from_function`` calls the dataset function once per worker (input
    pipeline) and hands the elements of a worker's dataset to its local replicas in turn, so a
    worker's dataset yields, per step, the shards of its local replicas in replica order.

    The generator dataset's first iterator switches off glibc's reuse of large buffers, which
    made every step 30-60% slower on a CPU; once it has produced its first element the iterator
    switches it back on (``common/allocator.py``).
    """
    world = strategy.num_replicas_in_sync
    if stream.global_batch % world:
        raise ValueError(f"the global batch {stream.global_batch} does not split over {world} "
                         "replicas; choose a batch size divisible by the number of replicas")
    per_replica = stream.global_batch // world
    height, width = images.shape[1:3]

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = context.num_replicas_in_sync // context.num_input_pipelines
        ranks = range(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)

        def elements():
            for step, data in stream.epoch(epoch, first_step):
                seed = step_seed(stream.seed, epoch, step)
                for rank in ranks:
                    shard = data.shard(rank, world)
                    yield (images[shard.indices], dense_view_params(shard.view1),
                           dense_view_params(shard.view2), seed)

        signature = (tf.TensorSpec((per_replica, height, width, 3), tf.uint8),
                     dense_params_signature(per_replica), dense_params_signature(per_replica),
                     tf.TensorSpec((2,), tf.int64))
        return tf.data.Dataset.from_generator(elements, output_signature=signature).prefetch(2)

    return _keeping_large_buffers(iter(strategy.distribute_datasets_from_function(dataset_fn)))


def _keeping_large_buffers(elements: Iterator) -> Iterator:
    """``elements``, with glibc's large-buffer reuse switched back on after the first one, when the
    generator dataset's first iterator has switched it off (``common/allocator.py``)."""
    for index, element in enumerate(elements):
        if index == 0:
            allocator.keep_large_buffers()
        yield element
