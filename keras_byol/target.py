"""BYOL's target network: an exponential moving average of the online network.

Grill et al. 2020, section 3.1: after each optimisation step of the online weights theta, the target
weights xi follow ``xi <- tau xi + (1 - tau) theta`` (eq. 1's update), with the decay rate rising
from tau_0 to 1 along a cosine (section 3.3 and appendix): at step k of K,

    tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2          (k clamped to K: tau = 1 afterwards)

deepmind-research ``byol/utils/schedules.py`` (``target_ema``) computes exactly this, with the
update written ``xi + (1 - tau)(theta - xi)`` (``byol_experiment.py``, ``_update_fn``, after the
optimizer step, so the target sees the online weights of *this* step); solo-learn's
``cur_tau = final_tau - (final_tau - base_tau)(cos(pi k / K) + 1) / 2`` is the same with final_tau 1.

What the average covers: the trainable weights of the encoder and projector (kernels, biases,
BatchNorm gamma and beta). The target's BatchNorm *moving statistics* are not weights;
``BN_STATS_MODES`` says what happens to them:

- ``"skip"`` (default, faithful to deepmind-research): the target keeps its own statistics. Its
  forward runs in training mode on its own state (``forward.apply(target_params, target_state, ...,
  is_training=True)``), which normalises with the batch statistics and updates *its own* running
  averages; ``target_ema`` touches parameters only. solo-learn does the same (it averages
  ``parameters()``, and the momentum backbone's buffers follow its own train-mode forwards).
- ``"average"``: the moving statistics are averaged with tau like the weights (the Keras MoCo/BYOL
  example by beresandras averages all ``.weights``).
- ``"copy"``: the target's moving statistics are overwritten by the online ones at every step.

Only ``"skip"`` leaves the target's own running averages in charge; under the other two they are
still updated by the target's forward and then replaced. They matter only for evaluating the
target in inference mode: in training the target normalises with batch statistics either way.

``common.schedules.ema_momentum`` is the NumPy reference of the schedule; :func:`tau_at` is the
same formula in ``keras.ops`` for the traced training step.
"""

from __future__ import annotations

import math

from keras import ops

BN_STATS_MODES = ("skip", "average", "copy")
_MOVING_STATS = ("moving_mean", "moving_variance")


def tau_at(step, total_steps: int, base_tau: float, start_step: int = 0):
    """``common.schedules.ema_momentum(base_tau, step, total_steps, start_step)`` in ``keras.ops``
    (float32), for a step counter that may be traced."""
    k = ops.clip(ops.cast(step, "float32"), float(start_step), float(total_steps)) - start_step
    return 1.0 - (1.0 - base_tau) * (ops.cos(math.pi * k / (total_steps - start_step)) + 1.0) / 2.0


def is_moving_statistic(variable) -> bool:
    """A BatchNorm running average (``moving_mean`` / ``moving_variance``), not a weight."""
    return variable.name in _MOVING_STATS


def ema_pairs(online_layers, target_layers, bn_stats: str):
    """``(averaged, copied)``: lists of (target variable, online variable) pairs.

    ``online_layers`` / ``target_layers`` are the online and target networks' corresponding models
    (encoder, projector), built by the same functions, so their ``weights`` lists align one to one;
    each pair is checked to have the same name and shape.
    """
    if bn_stats not in BN_STATS_MODES:
        raise ValueError(f"bn_stats must be one of {BN_STATS_MODES}, got {bn_stats!r}")
    averaged, copied = [], []
    for online, target in zip(online_layers, target_layers, strict=True):
        for o, t in zip(online.weights, target.weights, strict=True):
            if (o.name, tuple(o.shape)) != (t.name, tuple(t.shape)):
                raise ValueError(f"online {o.path} {o.shape} and target {t.path} {t.shape} do not "
                                 "correspond: build both networks with the same functions")
            if not is_moving_statistic(o) or bn_stats == "average":
                averaged.append((t, o))
            elif bn_stats == "copy":
                copied.append((t, o))
    return averaged, copied


def ema_update(averaged, copied, tau) -> None:
    """``xi <- xi + (1 - tau)(theta - xi)`` for the averaged pairs, ``xi <- theta`` for the copied.

    The update is not differentiated: ``stop_gradient`` keeps the PyTorch backend from recording an
    autograd graph through the trainable theta (on TensorFlow and JAX it changes nothing)."""
    for target, online in averaged:
        target.assign(target + (1.0 - tau) * (ops.stop_gradient(online) - target))
    for target, online in copied:
        target.assign(online)
