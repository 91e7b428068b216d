"""Optimisers and the learning-rate schedule of the MoCo chapter, as Keras 3 optimizers.

Each one is tested step by step against the NumPy references of ``common/optim.py`` (which tensors
are adapted and decayed, where the learning rate sits in the momentum buffer, the LARS variants), and
the schedule against ``common.schedules.LrSchedule.rate``.

Weight decay here is always *coupled*: ``d = g + wd w`` enters the update (and LARS's trust ratio)
and goes through the momentum buffer, as in PyTorch's SGD and every LARS. Keras' base-class
``weight_decay`` is the decoupled kind, applied to the weights before ``update_step``; these
optimizers never pass it on, so it stays unset. Tensors with ``ndim <= 1`` (biases, BN gamma and
beta) are neither decayed nor LARS-adapted (``common.optim.is_excluded``, decided by shape).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from common.optim import (
    ADAM_BETAS,
    ADAM_EPS,
    LARS_EPS,
    LARS_VARIANTS,
    MOMENTUM_STYLES,
    OPTIMIZERS,
    LarsVariant,
    is_excluded,
)
from common.schedules import LrSchedule


class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``LrSchedule`` as a Keras schedule: the rate of step t is ``table[t]``, gathered in the graph.

    Keras evaluates a schedule at ``optimizer.iterations``, the number of steps already applied, so
    the update of step t (0-based) uses ``LrSchedule.rate(t)``; past the table's end the last entry
    (the final rate) holds. ``dtype`` float64 keeps the rates exact for float64 variables.
    """

    def __init__(self, schedule: LrSchedule, dtype="float32"):
        self.schedule = schedule
        self.dtype = dtype
        self.table = schedule.table(np.dtype(dtype))

    def __call__(self, step):
        index = ops.minimum(ops.cast(step, "int32"), len(self.table) - 1)
        return ops.take(ops.convert_to_tensor(self.table, dtype=self.dtype), index)

    def get_config(self):
        return {"schedule": self.schedule.to_dict(), "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(LrSchedule.from_dict(config["schedule"]), config["dtype"])


class _CoupledMomentum(keras.optimizers.Optimizer):
    """Shared part of SGD and LARS: one momentum buffer per variable and the heavy-ball step."""

    def __init__(self, learning_rate, momentum: float, weight_decay: float, momentum_style: str,
                 name: str, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ValueError(f"need 0 <= momentum < 1 and weight_decay >= 0, got momentum={momentum}, "
                             f"weight_decay={weight_decay}")
        if momentum_style not in MOMENTUM_STYLES:
            raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)
        self.momentum_style = momentum_style

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def _heavy_ball(self, variable, direction, learning_rate):
        """``common.optim.momentum_step``: where the rate sits decides what the buffer holds.

        lr_inside (Sutskever et al. 2013, Keras' SGD): v <- m v + lr d; w <- w - v.
        lr_outside (PyTorch's SGD, MoCo's official optimizer): b <- m b + d; w <- w - lr b.
        """
        buffer = self.momentums[self._get_variable_index(variable)]
        if self.momentum_style == "lr_inside":
            self.assign(buffer, self.momentum * buffer + learning_rate * direction)
            self.assign_sub(variable, buffer)
        else:
            self.assign(buffer, self.momentum * buffer + direction)
            self.assign_sub(variable, learning_rate * buffer)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum,
                "weight_decay": self.coupled_weight_decay, "momentum_style": self.momentum_style}


class SGD(_CoupledMomentum):
    """SGD with momentum and coupled weight decay, PyTorch's form by default.

    facebookresearch/moco trains with ``torch.optim.SGD(momentum=0.9, weight_decay=1e-4)``: the
    rate outside the buffer (``"lr_outside"``), weight decay added to the gradient. Keras' own SGD is
    ``"lr_inside"`` with decoupled decay; the two momentum forms agree while the rate is constant and
    differ while a schedule moves it, so the faithful choice is this small subclass. One deviation
    from the official code, set by ``common.optim``: tensors with ``ndim <= 1`` are not decayed
    (MoCo's SGD decays every parameter, BN gamma and beta and the head's biases included).
    """

    def __init__(self, learning_rate=0.03, momentum: float = 0.9, weight_decay: float = 0.0,
                 momentum_style: str = "lr_outside", name: str = "sgd", **kwargs):
        super().__init__(learning_rate, momentum, weight_decay, momentum_style, name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        direction = ops.cast(gradient, variable.dtype)
        if not is_excluded(variable.shape):
            direction = direction + self.coupled_weight_decay * variable
        self._heavy_ball(variable, direction, learning_rate)


class LARS(_CoupledMomentum):
    """LARS (You, Gitman & Ginsburg 2017, algorithm 1) in the published variants of
    ``common.optim.LARS_VARIANTS`` (``"simclr"``, ``"solo-learn"``, ``"byol"``).

    For a tensor with ``ndim > 1``, with ``d = g + wd w``::

        trust = eta ||w|| / (||d|| + eps)               variant.denominator == "update_norm"
        trust = eta ||w|| / (||g|| + wd ||w|| + eps)    variant.denominator == "sum_of_norms"
        trust = min(trust / lr, 1)                      if variant.clip
        trust = 1 (and, for sum_of_norms, d = g)        where ||w|| or the denominator's norm is 0

    then the heavy-ball step with ``trust * d`` in the variant's momentum style. Tensors with
    ``ndim <= 1`` step with ``d = g``. The weight decay lives inside the trust ratio, which is why it
    cannot be Keras' decoupled ``weight_decay``.
    """

    def __init__(self, learning_rate=1.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, variant: str | LarsVariant | dict = "simclr", name: str = "lars",
                 **kwargs):
        if isinstance(variant, dict):  # from get_config
            variant = LarsVariant(**variant)
        variant = LARS_VARIANTS[variant] if isinstance(variant, str) else variant
        super().__init__(learning_rate, momentum, weight_decay, variant.momentum_style, name, **kwargs)
        if not eta > 0:
            raise ValueError(f"eta (the trust coefficient) must be > 0, got {eta}")
        self.eta = float(eta)
        self.variant = variant

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if is_excluded(variable.shape):
            self._heavy_ball(variable, g, learning_rate)
            return
        w = ops.convert_to_tensor(variable)
        wd, eta = self.coupled_weight_decay, self.eta
        decayed = g + wd * w
        w_norm = ops.norm(ops.reshape(w, (-1,)))
        if self.variant.denominator == "update_norm":
            other_norm = ops.norm(ops.reshape(decayed, (-1,)))
            trust = eta * w_norm / (other_norm + LARS_EPS)
        else:
            other_norm = ops.norm(ops.reshape(g, (-1,)))
            trust = eta * w_norm / (other_norm + wd * w_norm + LARS_EPS)
        if self.variant.clip:
            safe_lr = ops.where(learning_rate > 0, learning_rate, ops.ones_like(learning_rate))
            trust = ops.where(learning_rate > 0, ops.minimum(trust / safe_lr, 1.0), 1.0)
        adapted = ops.logical_and(w_norm > 0, other_norm > 0)
        trust = ops.where(adapted, trust, ops.ones_like(trust))
        # Where a norm is 0, the update_norm sources still decay; solo-learn neither decays nor scales.
        direction = decayed if self.variant.denominator == "update_norm" else ops.where(adapted, decayed, g)
        self._heavy_ball(variable, trust * direction, learning_rate)

    def get_config(self):
        config = super().get_config()
        del config["momentum_style"]  # the variant's
        return {**config, "eta": self.eta, "variant": dataclasses.asdict(self.variant)}


class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW whose bias correction counts the steps it applied, not the steps it was asked for.

    Adam's step t (1-based; ``common.optim.adamw_step``, Keras' epsilon placement ``"raw"``)::

        m <- b1 m + (1 - b1) g,    v <- b2 v + (1 - b2) g^2
        w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)

    after the decoupled decay ``w <- w - lr wd w`` (Keras' ``weight_decay``, applied before this
    step). Keras takes t = ``iterations`` + 1, and under dynamic loss scaling ``iterations`` also
    counts the skipped steps (:class:`StepCountingLossScaleOptimizer`, so that the schedule keeps
    the run's step). With ``count_skipped_steps`` the optimizer keeps ``skipped_steps`` (which that
    wrapper advances) and takes t = ``iterations`` + 1 - ``skipped_steps``, the count PyTorch's
    AdamW keeps under ``GradScaler``; without it, it is Keras' AdamW and has Keras' variables (so
    its checkpoints are Keras AdamW's). ``amsgrad`` is not supported.
    """

    def __init__(self, *args, count_skipped_steps: bool = False, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("this AdamW has no amsgrad variant")
        super().__init__(*args, **kwargs)
        self.count_skipped_steps = count_skipped_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.count_skipped_steps:
            self.skipped_steps = self.add_variable((), initializer="zeros", dtype="int",
                                                   aggregation="only_first_replica",
                                                   name="skipped_steps")

    def update_step(self, gradient, variable, learning_rate):
        """Keras' ``Adam.update_step``, op for op (so that without skipped steps the numbers are
        Keras' to the bit), but for the t of its bias correction."""
        t = self.iterations + 1
        if self.count_skipped_steps:
            t -= self.skipped_steps
        t = ops.cast(t, variable.dtype)
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        alpha = lr * ops.sqrt(1 - ops.power(ops.cast(self.beta_2, variable.dtype), t)) / \
            (1 - ops.power(ops.cast(self.beta_1, variable.dtype), t))
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))

    def get_config(self):
        return {**super().get_config(), "count_skipped_steps": self.count_skipped_steps}


class StepCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling, where a skipped step still counts, and an overflow on any
    replica skips the step on all of them.

    When the scaled gradients overflow, the step is skipped and the scale halved. Keras 3's
    ``LossScaleOptimizer`` then leaves ``iterations`` (the inner optimizer's) where it was, so the
    rate schedule, read at ``iterations``, falls one step behind the run for every skip, and a
    resumed run's step count no longer matches its optimizer's. Keras 2's (tf-keras) counted the
    skipped step (its ``do_not_apply_fn``), as a per-step ``torch.optim.lr_scheduler`` does under
    ``GradScaler``: step t of the run always has the rate of step t.

    Keras' Adam reads the same ``iterations`` for its bias correction, so the first step applied
    after s skipped ones would be corrected as if s + 1 steps had run (about 0.74 of its size after
    one skip), where PyTorch's skipped ``optimizer.step()`` leaves AdamW's count alone. So an
    :class:`AdamW` built with ``count_skipped_steps`` also counts the skips, in its
    ``skipped_steps``, and its bias correction counts only the applied steps (SGD and LARS keep no
    step count, and no such variable).

    Under tf.distribute, Keras 3.15 decides from the first replica's own gradients, before they
    are summed (``_tf_apply``): an overflow on another replica went into the sum and the weights
    became inf. :meth:`apply` first sums the replicas' overflow flags and, if any overflowed, makes
    every replica's gradients NaN, so all of them skip the step (and the workers of a cluster take
    the same branch).
    """

    def apply(self, grads, trainable_variables=None):
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            overflows = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                           tf.cast(tf.logical_not(self.check_finite(grads)), tf.float32))
            poison = tf.where(overflows > 0, float("nan"), 0.0)  # g + 0 is g
            grads = [g if g is None else g + tf.cast(poison, g.dtype) for g in grads]
        return super().apply(grads, trainable_variables)

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)
        if getattr(self.inner_optimizer, "count_skipped_steps", False):
            self.inner_optimizer.skipped_steps.assign_add(1)


def build_optimizer(name: str, variables: list, learning_rate: float | LrSchedule, *,
                    weight_decay: float, momentum: float = 0.9, eta: float = 0.001,
                    lars_variant: str | LarsVariant = "simclr", sgd_momentum_style: str = "lr_outside",
                    loss_scaling: bool = False) -> keras.optimizers.Optimizer:
    """``"lars"``, ``"sgd"`` or ``"adamw"`` (``common.optim.OPTIMIZERS``) for ``variables``, built.

    ``learning_rate``: a constant or an ``LrSchedule`` (then read per step through
    :class:`TableSchedule`). AdamW is :class:`AdamW` (decoupled decay ``w -= lr wd w``, as
    PyTorch's AdamW; betas 0.9, 0.999; ``momentum`` unused; epsilon ``common.optim.ADAM_EPS``, not
    Keras' 1e-7, in Keras' place: ``common.optim.adamw_step(..., "raw")``), with the ``ndim <= 1``
    tensors excluded from the decay.
    ``loss_scaling`` wraps the optimizer in Keras' dynamic loss scaling (for mixed_float16), with
    skipped steps counted (:class:`StepCountingLossScaleOptimizer`). The optimizer is built on
    ``variables`` here, so call this inside ``strategy.scope()``: its slots must exist before the
    first traced step (created lazily inside a ``tf.function`` they fail under tf.distribute).
    """
    if isinstance(learning_rate, LrSchedule):
        learning_rate = TableSchedule(learning_rate, dtype=variables[0].dtype if variables else "float32")
    if name == "lars":
        optimizer = LARS(learning_rate, momentum, weight_decay, eta, lars_variant)
    elif name == "sgd":
        optimizer = SGD(learning_rate, momentum, weight_decay, sgd_momentum_style)
    elif name == "adamw":
        optimizer = AdamW(learning_rate, weight_decay=weight_decay, beta_1=ADAM_BETAS[0],
                          beta_2=ADAM_BETAS[1], epsilon=ADAM_EPS, count_skipped_steps=loss_scaling)
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if is_excluded(v.shape)])
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if loss_scaling:
        optimizer = StepCountingLossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer
