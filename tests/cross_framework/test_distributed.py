"""Distributed losses give the single-device loss and gradient on the same global batch (float64,
within 1e-9 of the NumPy reference on the whole batch):

- PyTorch: NT-Xent with the gradient-carrying all-gather over 2 gloo processes; the ranks' mean loss
  and their gradients averaged as DDP averages them (``torch_gather.py``);
- TensorFlow: InfoNCE under MirroredStrategy over 2 logical CPUs, each replica's loss divided by the
  replica count (written in ``impl_tf.mirrored_info_nce``: the chapter's own step, with that
  reduction, is checked by tests/test_tf_distributed.py), summed by ``strategy.reduce``;
- Keras on JAX: the three losses on a batch sharded over 2 host devices by ``DataParallel``'s data
  layout, compiled by XLA for both devices.

The training steps under these strategies (model, BN, optimizer) are tests/test_torch_ddp.py and
tests/test_tf_distributed.py; Keras' BYOL step under DataParallel is tests/test_keras_distributed.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from common import losses as reference
from tests.cross_framework import cases
from tests.cross_framework.compare import max_abs, relative, worst

pytestmark = [pytest.mark.xdist_group("cross-framework"), pytest.mark.slow]

TOL = 1e-9


def _compare(record, check, implementation, loss, grads, ref_loss, ref_grads) -> float:
    error = max_abs(loss, ref_loss)
    errors = [(error, error / max(1.0, abs(ref_loss)))]
    errors += [relative(g, r) for g, r in zip(grads, ref_grads, strict=True)]
    abs_err, rel_err = worst(errors)
    record(check, implementation, abs_err, rel_err, TOL)
    return rel_err


@pytest.mark.subprocess
def test_gathered_nt_xent_over_two_gloo_processes(workspace, record):
    ranks = workspace.subprocess_results("torch-gather")
    x = cases.distributed_inputs()
    ref_loss, ref_grads = reference.nt_xent(x["z1"], x["z2"], cases.DIST_T)
    loss = float(np.mean([ranks[r][0] for r in range(cases.WORLD)]))
    grads = [np.concatenate([ranks[r][i] for r in range(cases.WORLD)]) / cases.WORLD for i in (1, 2)]
    error = _compare(record, "distributed: NT-Xent, all-gather over 2 gloo processes", "pytorch", loss, grads,
                     ref_loss, ref_grads)
    assert error <= TOL


def test_info_nce_under_mirrored_strategy(workspace, record):
    from tests.cross_framework import impl_tf

    result = impl_tf.mirrored_info_nce()
    assert "skipped" not in result, result  # tests/tf_setup.py gives TensorFlow 2 logical CPUs
    assert result["replicas"] == cases.WORLD
    x = cases.distributed_inputs()
    ref_loss, ref_grads = reference.info_nce(x["q"], x["k"], x["queue"], cases.DIST_T)
    error = _compare(record, "distributed: InfoNCE, MirroredStrategy over 2 logical CPUs", "tensorflow",
                     result["loss"], result["grads"], ref_loss, ref_grads)
    assert error <= TOL


@pytest.mark.subprocess
def test_losses_under_keras_data_parallel_on_jax(workspace, record):
    result = workspace.outputs("keras-jax", "data_parallel")
    assert "skipped" not in result, result  # the workspace gives JAX 2 host devices (XLA_FLAGS)
    assert result["devices"] == cases.WORLD and result["sharded_batch"]
    x = cases.distributed_inputs()
    references = {"nt_xent": reference.nt_xent(x["z1"], x["z2"], cases.DIST_T),
                  "info_nce": reference.info_nce(x["q"], x["k"], x["queue"], cases.DIST_T),
                  "byol": reference.byol(x["p1"], x["p2"], x["t1"], x["t2"])}
    for loss, (ref_loss, ref_grads) in references.items():
        got = result[loss]
        assert got["grad_devices"] == cases.WORLD, loss  # XLA kept the gradient sharded: partitioned
        ref_grads = list(ref_grads) + [np.zeros_like(g) for g in got["grads"][len(ref_grads):]]
        error = _compare(record, f"distributed: {loss}, Keras DataParallel over 2 JAX host devices",
                         "keras-jax", got["loss"], got["grads"], ref_loss, ref_grads)
        assert error <= TOL, loss
