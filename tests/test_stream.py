"""common/stream.py: the epoch order, the shards and the per-step view parameters every chapter uses."""

import dataclasses

import numpy as np
import pytest

from common import augment
from common.stream import DataStream, epoch_order, process_seed, shard, steps_per_epoch


def _stream(**kw):
    args = {"num_images": 103, "image_hw": (32, 32), "global_batch": 16,
            "pair_spec": augment.preset("byol", 32), "seed": 7}
    return DataStream(**{**args, **kw})


def _same_params(a, b):
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))


def test_an_epoch_visits_distinct_images_in_a_seeded_order_that_changes_per_epoch():
    stream = _stream()
    assert stream.steps_per_epoch == 6  # 103 // 16; the 7 left over are skipped this epoch
    seen = np.concatenate([data.indices for _, data in stream.epoch(0)])
    assert len(seen) == 96 and len(np.unique(seen)) == 96
    assert np.array_equal(seen, epoch_order(103, 0, 7)[:96])
    assert not np.array_equal(epoch_order(103, 0, 7), epoch_order(103, 1, 7))
    assert not np.array_equal(epoch_order(103, 0, 7), epoch_order(103, 0, 8))


def test_a_step_is_a_pure_function_of_seed_epoch_and_step():
    a, b = _stream().step(3, 4), _stream().step(3, 4)
    assert np.array_equal(a.indices, b.indices)
    assert _same_params(a.view1, b.view1) and _same_params(a.view2, b.view2)
    resumed = dict(_stream().epoch(3, first_step=4))[4]  # what a run resumed at step 4 draws
    assert np.array_equal(resumed.indices, a.indices) and _same_params(resumed.view2, a.view2)
    other = _stream().step(3, 5)
    assert not _same_params(a.view1, other.view1)
    # BYOL's views differ by design: view 1 never solarises, view 2 sometimes does.
    assert not a.view1.solarize.any()


def test_shards_concatenate_to_the_single_device_batch():
    data = _stream().step(1, 2)
    parts = [data.shard(rank, 4) for rank in range(4)]
    assert np.array_equal(np.concatenate([p.indices for p in parts]), data.indices)
    for field in ("crop_box", "flip", "hue", "solarize"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(p.view2, field) for p in parts]), getattr(data.view2, field))
    with pytest.raises(ValueError, match="does not split over 3 replicas"):
        shard(data.indices, 0, 3)


def test_steps_per_epoch_and_its_errors():
    assert steps_per_epoch(100, 10) == 10 and steps_per_epoch(100, 10, cap=3) == 3
    with pytest.raises(ValueError, match="fewer than one batch of 256; lower --batch-size"):
        steps_per_epoch(100, 256)
    with pytest.raises(IndexError):
        _stream().indices(0, 6)


def test_process_seeds_differ_for_every_seed_epoch_and_rank():
    # (seed + epoch) W + rank, the obvious formula, gives seed 0's epoch 1 the draws of seed 1's
    # epoch 0: none of these may meet.
    seeds = {(seed, epoch, rank): process_seed(seed, epoch, rank)
             for seed in range(4) for epoch in range(4) for rank in range(4)}
    assert len(set(seeds.values())) == len(seeds)
    assert process_seed(0, 1, 0) == seeds[(0, 1, 0)]  # a pure function
    assert all(0 <= value < 2 ** 32 for value in seeds.values())  # what torch.manual_seed takes


def test_the_two_views_of_an_image_get_their_own_draws():
    """One generator, view 1's draws then view 2's: a second generator seeded alike (or view 1's
    parameters passed twice) would give every image two identical views, and nothing to learn."""
    data = _stream(pair_spec=augment.preset("simclr", 32)).step(0, 0)  # the same spec for both views
    first, second = data.view1, data.view2
    assert (first.crop_box != second.crop_box).any(axis=1).mean() > 0.9
    assert not np.array_equal(first.brightness, second.brightness)
    assert not np.array_equal(first.flip, second.flip)
