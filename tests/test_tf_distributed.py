"""The MoCo training step under tf.distribute equals the single-device step on the same global batch.

Per-replica BatchNorm normalises each replica's contiguous shard of the batch; one device with split
BN of as many contiguous groups (``bn_splits=2``) normalises the same groups, and ``model.BatchNorm``
averages the moving statistics over replicas as split BN averages them over groups. So the
reference is the single-device step with ``bn_splits=2``, and the two-replica runs use ordinary BN
(``bn_splits=1``). Everything then agrees to float32 round-off: the loss, the gradients the optimizer
applied (after its all-reduce), both networks (BN statistics included), the queue and its pointer.

- ``MirroredStrategy`` over two logical CPUs of this process (``tests/tf_setup.py``), Shuffle BN
  off (as the reference);
- ``MultiWorkerMirroredStrategy`` with two local worker processes, two steps;
- the step compiled with XLA (``jit_compile=True``) on one device;
- Shuffle BN itself: keys computed on the permuted batch, returned in the original order; and the
  whole step with Shuffle BN on two replicas against one device;
- float16 activations with dynamic loss scaling: the float32 step, to float16's precision.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from common.optim import adamw_step
from common.schedules import LrSchedule
from tensorflow_moco import data, distributed
from tensorflow_moco.model import MoCo
from tensorflow_moco.optim import build_optimizer
from tensorflow_moco.step import StepConfig, make_train_step
from tests import tf_moco_run as run
from tests.tf_setup import LOGICAL_CPUS, logical_cpus

pytestmark = pytest.mark.xdist_group("tf-distributed")  # one worker builds the module's fixtures

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


def _assert_same(got: dict, want: dict, tol: float = TOL) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=tol, atol=tol, err_msg=name)


@pytest.fixture(scope="module")
def initial() -> dict[str, np.ndarray]:
    keras.utils.set_random_seed(0)
    return run.state(run.build_moco())


@pytest.fixture(scope="module")
def single(initial) -> list[dict]:
    """Two steps on one device: split BN in two groups, Shuffle BN off."""
    return run.run_steps(tf.distribute.get_strategy(), initial, steps=2, bn_splits=2, shuffle_bn=False)


@pytest.fixture(scope="module")
def mirrored() -> tf.distribute.MirroredStrategy:
    if len(logical_cpus()) < LOGICAL_CPUS:
        pytest.fail("TensorFlow was initialised before tests/tf_setup.py could split the CPU: the "
                    "MirroredStrategy checks would not run")
    return tf.distribute.MirroredStrategy(logical_cpus()[:LOGICAL_CPUS])


def test_the_reference_step_learns_and_fills_the_queue(single, initial):
    first, second = single
    assert np.isfinite(first["loss"]) and first["loss"] > 0
    assert int(first["queue_ptr"]) == run.GLOBAL_BATCH and int(second["queue_ptr"]) == 2 * run.GLOBAL_BATCH
    np.testing.assert_allclose(np.linalg.norm(second["queue"][:16], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(second["queue"][16:], initial["queue"][16:])
    moved = max(np.abs(first[k] - initial[k]).max() for k in initial if k.startswith("query"))
    gradient = max(np.abs(v).max() for k, v in first.items() if k.startswith("grad"))
    assert moved > 1e-3 and gradient > 1e-3  # the comparisons below have teeth


def test_mirrored_strategy_step_equals_the_single_device_step(single, initial, mirrored):
    results = run.run_steps(mirrored, initial, steps=2, bn_splits=1, shuffle_bn=False)
    for got, want in zip(results, single, strict=True):
        _assert_same(got, want)


def test_the_step_with_shuffle_bn_across_replicas_equals_the_single_device_step(single, initial,
                                                                              mirrored):
    """Shuffle BN on: each replica's key encoder normalises its shard of the *permuted* global batch,
    as split BN normalises the permuted batch's contiguous groups on one device (the same
    permutation, drawn from the step's seed), and every replica gets back the keys of its own
    images; then both runs take the same step."""
    [want] = run.run_steps(tf.distribute.get_strategy(), initial, steps=1, bn_splits=2, shuffle_bn=True)
    [got] = run.run_steps(mirrored, initial, steps=1, bn_splits=1, shuffle_bn=True)
    _assert_same(got, want)
    # and the shuffle mattered: the keys it queued differ from those of the unshuffled step
    assert np.abs(want["queue"] - single[0]["queue"]).max() > 1e-2


def test_jit_compiled_step_equals_the_traced_step(single, initial):
    compiled = run.run_steps(tf.distribute.get_strategy(), initial, steps=1, bn_splits=2,
                             shuffle_bn=False, jit_compile=True)
    _assert_same(compiled[0], single[0], tol=1e-4)


def test_step_refuses_a_queue_that_batches_do_not_tile():
    strategy = tf.distribute.get_strategy()
    moco = MoCo(run.SPEC, projection_dim=4, hidden_dim=8, queue_size=12)
    optimizer = run.recording_sgd(moco.query_variables)
    with pytest.raises(ValueError, match="K=12 is not a multiple of the 8 keys"):
        make_train_step(strategy, moco, optimizer, StepConfig(run.PAIR, global_batch=8))
    with pytest.raises(ValueError, match="K=12 is not a multiple of the 16 keys"):
        make_train_step(strategy, moco, optimizer, StepConfig(run.PAIR, 8, symmetric=True))


def test_mixed_float16_needs_loss_scaling():
    moco = MoCo(run.SPEC, projection_dim=4, hidden_dim=8, queue_size=8, dtype="mixed_float16")
    assert moco.query_encoder.get_layer("stem.conv").compute_dtype == "float16"
    assert {v.dtype for v in moco.query_variables} == {"float32"}
    with pytest.raises(ValueError, match="loss_scaling=True"):
        make_train_step(tf.distribute.get_strategy(), moco, run.recording_sgd(moco.query_variables),
                        StepConfig(run.PAIR, 8))


def _update_of_one_step(initial: dict, dtype: str, unscaled_loss: bool = False) -> dict:
    """The change of every query variable in one step from ``initial`` (plain SGD, one device)."""
    strategy = tf.distribute.get_strategy()
    moco = run.build_moco(dtype=dtype)
    run.load_state(moco, initial)
    optimizer = build_optimizer("sgd", moco.query_variables, run.LR, weight_decay=0.0, momentum=0.0,
                                loss_scaling=dtype == "mixed_float16")
    if unscaled_loss:  # the classic slip: differentiating the loss the optimizer did not scale
        optimizer.scale_loss = lambda loss: loss
    step = make_train_step(strategy, moco, optimizer, StepConfig(run.PAIR, run.GLOBAL_BATCH))
    step(*next(iter(data.distribute_stream(strategy, run.images(), run.STREAM, epoch=0))),
         tf.constant(run.KEY_MOMENTUM))
    after = run.state(moco)
    return {name: after[name] - initial[name] for name in after if name.startswith("query")}


def test_a_mixed_float16_step_with_loss_scaling_takes_the_float32_step(initial):
    """float16 activations (Keras' ``mixed_float16``: float32 weights) and dynamic loss scaling
    update the weights as the float32 step does, to float16's precision (measured 8e-4 of the
    largest update). The step must differentiate the *scaled* loss: the optimizer divides the
    gradients by the scale (32,768 at the start), so the unscaled loss makes every update that
    many times too small, and the check fails by the whole update."""
    want = _update_of_one_step(initial, "float32")
    size = max(float(np.max(np.abs(v))) for v in want.values())

    def error(got):
        return float(np.max([np.max(np.abs(got[name] - want[name])) for name in want])) / size

    assert size > 0.1 and error(_update_of_one_step(initial, "mixed_float16")) < 1e-2
    assert error(_update_of_one_step(initial, "mixed_float16", unscaled_loss=True)) > 0.9


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_step_skipped_by_loss_scaling_still_counts(replicas, request):
    """An overflowing fp16 step is skipped (weights unchanged, scale halved) but counted: the next
    update uses the next step's rate, and ``iterations`` stays the run's step count (a resumed
    run checks that they agree)."""
    strategy = request.getfixturevalue("mirrored") if replicas > 1 else tf.distribute.get_strategy()
    schedule = LrSchedule(base_lr=0.8, total_steps=10, warmup_steps=3)
    with strategy.scope():
        weight = keras.Variable(np.zeros((2, 2)), dtype="float32")
        optimizer = build_optimizer("sgd", [weight], schedule, weight_decay=0.0, momentum=0.0,
                                    loss_scaling=True)

    @tf.function
    def step(gradient):
        strategy.run(lambda: optimizer.apply([gradient], [weight]))

    scale = optimizer.dynamic_scale.numpy()
    step(tf.fill((2, 2), np.inf))  # step 0: skipped
    assert np.all(weight.numpy() == 0) and optimizer.dynamic_scale.numpy() == scale / 2
    assert optimizer.iterations.numpy() == 1
    step(tf.fill((2, 2), scale / 2 / replicas))  # step 1: the gradient 1 (a sum over replicas)
    np.testing.assert_allclose(-weight.numpy(), schedule.rate(1), rtol=1e-6)
    assert optimizer.iterations.numpy() == 2


@pytest.mark.parametrize("replicas", [1, 2])
def test_adamw_counts_only_applied_steps_in_its_bias_correction(replicas, request):
    """After two skipped steps, AdamW's first applied step is Adam's step 1 (as PyTorch's AdamW
    under GradScaler), at the schedule's step 2; Keras' own count made it 0.64 of that size."""
    strategy = request.getfixturevalue("mirrored") if replicas > 1 else tf.distribute.get_strategy()
    schedule = LrSchedule(base_lr=0.8, total_steps=10, warmup_steps=3)
    start, gradient = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[0.5, -1.0], [2.0, 0.25]])
    with strategy.scope():
        weight = keras.Variable(start, dtype="float32")
        optimizer = build_optimizer("adamw", [weight], schedule, weight_decay=0.1, loss_scaling=True)

    @tf.function
    def step(gradient):
        strategy.run(lambda: optimizer.apply([gradient], [weight]))

    step(tf.fill((2, 2), np.inf))
    step(tf.fill((2, 2), np.inf))
    scale = optimizer.dynamic_scale.numpy()
    step(tf.constant(gradient * scale / replicas, tf.float32))  # summed over replicas
    expected, state = adamw_step({"w": start}, {"w": gradient}, {}, schedule.rate(2), 0.1, "raw")
    # the update to 1e-4 of its size: Keras' float32 step rounds 1 - b1 and b1^t apart (7e-6 here)
    np.testing.assert_allclose(weight.numpy() - start, expected["w"] - start, rtol=1e-4)
    assert state["step"] == 1 and optimizer.iterations.numpy() == 3


def test_an_overflow_on_one_replica_skips_the_step_on_all(mirrored):
    """Keras alone decides from replica 0's gradients: replica 1's inf went into the sum."""
    schedule = LrSchedule(base_lr=0.8, total_steps=10, warmup_steps=3)
    with mirrored.scope():
        weight = keras.Variable(np.zeros((2, 2)), dtype="float32")
        optimizer = build_optimizer("sgd", [weight], schedule, weight_decay=0.0, momentum=0.0,
                                    loss_scaling=True)
    scale = optimizer.dynamic_scale.numpy()
    gradients = mirrored.experimental_distribute_values_from_function(
        lambda context: tf.fill((2, 2), [1.0, np.inf][context.replica_id_in_sync_group]))
    tf.function(lambda g: mirrored.run(lambda g: optimizer.apply([g], [weight]), args=(g,)))(gradients)
    assert np.all(weight.numpy() == 0) and optimizer.dynamic_scale.numpy() == scale / 2
    assert optimizer.iterations.numpy() == 1


def test_each_process_of_a_cluster_has_its_own_rank():
    """One rank 0 (which writes the run directory), counted over the chief and the workers."""
    two_workers = {"worker": ["a:1", "b:2"]}
    assert [distributed.cluster_position(two_workers, "worker", i) for i in (0, 1)] == [(0, 2), (1, 2)]
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert distributed.cluster_position(with_chief, "chief", 0) == (0, 2)
    assert distributed.cluster_position(with_chief, "worker", 0) == (1, 2)
    assert distributed.cluster_position({}, None, None) == (0, 1)  # no TF_CONFIG: one machine


def test_the_tpu_strategy_without_a_tpu_says_so(monkeypatch):
    """No TPU named (no TPU_NAME) falls back to this machine's own TPU (a TPU VM); none there is a
    ConfigError, not a traceback. Connecting is replaced here: it would reset this process's
    devices, which the other tests share."""
    monkeypatch.delenv("TPU_NAME", raising=False)
    resolvers = []

    def connect(resolver):
        resolvers.append(resolver)
        raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster.")

    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", connect)
    with pytest.raises(ConfigError, match="--strategy tpu: no TPU found .*TPUs not found"):
        distributed.build_strategy("tpu")
    assert resolvers[0].master() in ("", "local")  # the TPU attached to this machine


def test_jit_compile_is_refused_with_several_replicas(mirrored):
    with mirrored.scope():
        moco = MoCo(run.SPEC, projection_dim=4, hidden_dim=8, queue_size=8)
        optimizer = run.recording_sgd(moco.query_variables)
    with pytest.raises(ValueError, match="single replica"):
        make_train_step(mirrored, moco, optimizer, StepConfig(run.PAIR, 8, jit_compile=True))


def test_jit_compile_is_refused_under_a_one_replica_mirrored_strategy_on_the_cpu():
    """One replica, but a MirroredStrategy's: on the CPU its BN update is still a merge_call, which
    crashes inside the nested XLA function (``RuntimeError: merge_call called while defining a new
    graph``) unless refused with advice first."""
    one = tf.distribute.MirroredStrategy(logical_cpus()[:1])
    with one.scope():
        moco = MoCo(run.SPEC, projection_dim=4, hidden_dim=8, queue_size=8)
        optimizer = run.recording_sgd(moco.query_variables)
    with pytest.raises(ValueError, match="MirroredStrategy with a replica on the CPU.*--strategy default"):
        make_train_step(one, moco, optimizer, StepConfig(run.PAIR, 8, jit_compile=True))
    make_train_step(one, moco, optimizer, StepConfig(run.PAIR, 8))  # without XLA it is fine


# ---------------------------------------------------------------------------------------------
# Shuffle BN
# ---------------------------------------------------------------------------------------------
def _key_network(bn_splits: int = 2):
    keras.utils.set_random_seed(1)
    return MoCo(run.SPEC, projection_dim=4, hidden_dim=8, queue_size=8, bn_splits=bn_splits)


def test_shuffle_bn_on_one_device_uses_other_samples_statistics_and_restores_order():
    moco = _key_network()
    x = tf.constant(np.random.default_rng(2).random((8, 8, 8, 3)), tf.float32)
    seed = tf.constant([5, 6], tf.int64)
    order = distributed.permutation(8, seed).numpy()
    assert sorted(order) == list(range(8)) and not np.array_equal(order, np.arange(8))
    shuffled = distributed.shuffled_forward(moco.key, x, seed).numpy()
    manual = moco.key(tf.gather(x, order)).numpy()[np.argsort(order)]  # encode permuted, un-permute
    np.testing.assert_allclose(shuffled, manual, atol=1e-6)
    plain = distributed.shuffled_forward(moco.key, x, seed, shuffle=False).numpy()
    assert np.abs(shuffled - plain).max() > 1e-3  # other BN groups, other keys
    per_sample = distributed.shuffled_forward(lambda v: moco.key(v, training=False), x, seed)
    np.testing.assert_allclose(per_sample.numpy(), moco.key(x, training=False).numpy(), atol=1e-6)


def test_shuffle_bn_across_replicas_encodes_each_shard_of_the_permuted_batch(mirrored):
    with mirrored.scope():
        moco = _key_network(bn_splits=1)  # per-replica BN
    reference = _key_network(bn_splits=2)  # the same weights on one device, BN in the same groups
    run.load_state(reference, run.state(moco))
    x = np.random.default_rng(3).random((8, 8, 8, 3)).astype(np.float32)
    seed = tf.constant([7, 8], tf.int64)
    shards = mirrored.experimental_distribute_values_from_function(
        lambda context: x[4 * context.replica_id_in_sync_group: 4 * context.replica_id_in_sync_group + 4])

    @tf.function(autograph=False)
    def keys(local):
        return mirrored.run(lambda v: distributed.shuffled_forward(moco.key, v, seed), args=(local,))

    per_replica = [k.numpy() for k in mirrored.experimental_local_results(keys(shards))]
    order = distributed.permutation(8, seed).numpy()
    want = reference.key(tf.gather(x, order)).numpy()[np.argsort(order)]
    for got in per_replica:  # every replica holds the whole batch of keys, in the original order
        np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Input pipeline
# ---------------------------------------------------------------------------------------------
def test_each_replica_gets_its_contiguous_shard_of_the_common_stream(mirrored):
    images = run.images()
    batches = iter(data.distribute_stream(mirrored, images, run.STREAM, epoch=1, first_step=1))
    for step in (1, 2):
        element = next(batches)
        step_data = run.STREAM.step(1, step)
        for rank in range(2):
            local = tf.nest.map_structure(lambda v, r=rank: mirrored.experimental_local_results(v)[r],
                                          element)
            shard = step_data.shard(rank, 2)
            np.testing.assert_array_equal(local[0].numpy(), images[shard.indices])
            np.testing.assert_array_equal(local[1]["crop_box"].numpy(), shard.view1.crop_box)
            np.testing.assert_array_equal(local[2]["flip"].numpy(), shard.view2.flip)
            np.testing.assert_array_equal(local[3].numpy(), data.step_seed(3, 1, step))
    with pytest.raises(StopIteration):
        next(batches)  # 24 images, batches of 8: 3 steps, the epoch started at step 1


# ---------------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two local worker processes
# ---------------------------------------------------------------------------------------------
def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module", autouse=True)
def multiworker(initial, tmp_path_factory):
    """The two worker processes, started before this module's first test.

    Each one imports TensorFlow and traces its step on one core while this process runs the other
    tests (tracing is single-threaded), instead of after them. Their output goes to files (a full
    pipe would block a worker nobody reads yet).
    """
    folder = tmp_path_factory.mktemp("multiworker")
    np.savez(folder / "initial.npz", **initial)
    ports = ",".join(str(p) for p in _free_ports(2))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    workers = []
    for index in range(2):
        with open(folder / f"worker{index}.log", "w") as log:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "tests.tf_moco_run", str(index), ports,
                 str(folder / "initial.npz"), str(folder / f"worker{index}.npz")],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    yield workers, folder
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.slow
def test_multiworker_strategy_equals_one_device(single, multiworker):
    workers, folder = multiworker
    for index, worker in enumerate(workers):
        returncode = worker.wait(timeout=300)
        assert returncode == 0, (folder / f"worker{index}.log").read_text()[-3000:]
    for index in range(2):
        with np.load(folder / f"worker{index}.npz") as result:
            assert int(result["workers"]) == 2
            _assert_same({k: result[k] for k in result.files if k != "workers"}, single[-1])


def test_a_batch_the_replicas_cannot_share_is_refused_before_anything_is_built(mirrored, tmp_path,
                                                                               monkeypatch):
    """Split BN's groups are per replica: the command line alone (which knows no replicas) lets
    these through, and the step would fail inside its trace."""
    from tensorflow_moco import train

    monkeypatch.setattr(distributed, "build_strategy", lambda name: mirrored)  # 2 replicas
    for flags, message in (
            (["--batch-size", "24", "--bn-splits", "8", "--queue-size", "480"],
             "--bn-splits 8: each of the 2 replicas gets 12 images of --batch-size 24, which do not "
             "cut into 8 BatchNorm groups .the groups are per replica.; choose a --bn-splits that "
             "divides 12, e.g. 6"),
            (["--batch-size", "25", "--bn-splits", "1", "--queue-size", "500"],
             "--batch-size 25 does not split over the strategy's 2 replicas: choose a multiple of 2")):
        with pytest.raises(ConfigError, match=message):
            train.Trainer(train.parse_request([*flags, "--output-dir", str(tmp_path)]))
    assert not any(tmp_path.iterdir())  # refused before the run directory exists


def test_split_bn_on_several_replicas_says_how_many_groups_it_makes():
    """The recipes' --bn-splits 8 is the MoCo demo's one GPU standing for 8: on W replicas the
    groups are per replica, W x 8 in all, which the user is told (with the value that keeps 8)."""
    assert distributed.check_batch_split(512, 1, 8) is None  # one device: the demo's own setting
    assert distributed.check_batch_split(512, 2, 1) is None  # per-replica BN: no split
    assert distributed.check_batch_split(512, 2, 8) == (
        "note: split BN on 2 replicas: 2 x 8 = 16 BatchNorm groups of 32 images, not 8 (the groups "
        "are per replica; --bn-splits 4 keeps 8 groups in all)")
    assert "--bn-splits 1 gives one group per replica" in distributed.check_batch_split(384, 3, 8)
