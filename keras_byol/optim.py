"""Optimisers and the learning-rate schedule of the BYOL chapter, as Keras 3 optimizers.

BYOL trains with LARS (Grill et al. 2020, section 3.3: "We use the LARS optimizer with a cosine decay
learning rate schedule ... with a warm-up period of 10 epochs ... excluding the biases and batch
normalization parameters from both LARS adaptation and weight decay"). Every optimizer here is
written with ``keras.ops`` in ``update_step`` and runs on all three backends, and each is tested
against the NumPy references of ``common/optim.py`` (``tests/test_keras_optim.py``).

Two Keras facts shape this file:

- **Weight decay.** The base class's ``weight_decay`` is *decoupled* and applied before
  ``update_step`` (``_apply_weight_decay``: ``w <- w - lr wd w``). LARS needs the decay inside the
  trust ratio, and SGD/Adam's published forms add it to the gradient (``d = g + wd w``), so those
  take their own ``coupled_weight_decay`` and leave the base one unset. Only AdamW uses the base.
- **Which tensors.** Exclusion is by *shape* (``common.optim.is_excluded``: ``ndim <= 1``, i.e.
  biases and BatchNorm gamma/beta). Keras' ``exclude_from_weight_decay(var_names=...)`` matches
  ``variable.name``, which is ``gamma``/``beta`` for BatchNorm, so the usual
  ``["batch_normalization", "bias"]`` would silently decay BN.

The optimizer is built on the online network's variables only (``BYOL.trainable_variables``): the
target network is moved by the EMA (``keras_byol/target.py``), never by gradients or weight decay.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from common.optim import ADAM_BETAS, ADAM_EPS, LARS_EPS, LARS_VARIANTS, OPTIMIZERS, LarsVariant, is_excluded
from common.schedules import LrSchedule

OPTIMIZER_NAMES = (*OPTIMIZERS, "adam")
"""The shared ``--optimizer`` names plus plain Adam."""


@keras.saving.register_keras_serializable("keras_byol")
class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The rate of optimisation step t is ``schedule.rate(t)``, read from ``schedule.table()``.

    Keras calls the schedule with the optimizer's ``iterations`` *before* it increments them, so
    step 0 gets ``table[0]``. The table is a constant of the graph (one float32 per step; 4 MB for a
    million steps), so the traced step does no Python arithmetic on the step counter; steps past
    the end read the last entry (the final rate).
    """

    def __init__(self, schedule: LrSchedule):
        self.schedule = schedule
        self.table = schedule.table(np.float32)

    def __call__(self, step):
        index = ops.minimum(ops.cast(step, "int32"), len(self.table) - 1)
        return ops.take(ops.convert_to_tensor(self.table), index)

    def get_config(self):
        return {"schedule": self.schedule.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(LrSchedule.from_dict(config["schedule"]))


def _tensor(variable):
    """A variable's value as a backend tensor. Arithmetic between a Python float and a
    ``keras.Variable`` goes through Keras' type promotion, which turns float64 into float32 on JAX
    and PyTorch; on the tensor it is the backend's own, which keeps the dtype."""
    return ops.convert_to_tensor(variable)


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


def _momentum_step(optimizer, variable, buffer, direction, learning_rate, momentum: float,
                   style: str) -> None:
    """Heavy ball along ``direction`` (``common.optim.momentum_step``)."""
    new_buffer = momentum * _tensor(buffer) + (
        learning_rate * direction if style == "lr_inside" else direction)
    optimizer.assign(buffer, new_buffer)
    if style == "lr_inside":  # v <- m v + lr d,  w <- w - v
        optimizer.assign_sub(variable, new_buffer)
    else:  # "lr_outside": b <- m b + d,  w <- w - lr b
        optimizer.assign_sub(variable, learning_rate * new_buffer)


@keras.saving.register_keras_serializable("keras_byol")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, algorithm 1).

    For a tensor w with gradient g that is not excluded (``ndim > 1``)::

        d     = g + weight_decay * w
        trust = eta ||w|| / (||d|| + eps)                   variant denominator "update_norm"
        trust = eta ||w|| / (||g|| + wd ||w|| + eps)        variant denominator "sum_of_norms"
        trust = 1 where ||w|| = 0 or the gradient-side norm is 0;  clip: min(trust / lr, 1)

    then a momentum step along ``trust * d``, with the rate inside or outside the buffer as the
    variant says. Excluded tensors step along ``g`` (no decay, no trust ratio). ``variant`` is a
    name of ``common.optim.LARS_VARIANTS``: ``"byol"`` (deepmind-research, the default here: update
    norm, no clipping, rate outside the momentum), ``"simclr"`` or ``"solo-learn"``. BYOL's eta is
    1e-3 (``configs/byol.py``); solo-learn's CIFAR recipe uses 0.02 with clipping.
    """

    def __init__(self, learning_rate, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, variant: str | LarsVariant = "byol", name: str = "lars",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        variant = LARS_VARIANTS[variant] if isinstance(variant, str) else variant
        if not 0.0 <= momentum < 1.0 or weight_decay < 0.0 or eta <= 0.0:
            raise ValueError(f"LARS needs 0 <= momentum < 1, weight_decay >= 0 and eta > 0; got "
                             f"{momentum}, {weight_decay}, {eta}")
        self.momentum, self.lars_weight_decay, self.eta, self.variant = (
            momentum, weight_decay, eta, variant)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.buffers = self.add_optimizer_variables(variables, "momentum")

    def _direction(self, gradient, variable, learning_rate):
        """``trust * d`` of an adapted tensor (``common.optim.lars_direction``)."""
        w = _tensor(variable)
        wd, eta = self.lars_weight_decay, self.eta
        w_norm = _norm(w)
        decayed = gradient + wd * w
        if self.variant.denominator == "update_norm":
            grad_side = _norm(decayed)
            trust = eta * w_norm / (grad_side + LARS_EPS)
        else:
            grad_side = _norm(gradient)
            trust = eta * w_norm / (grad_side + wd * w_norm + LARS_EPS)
        if self.variant.clip:  # min(trust / lr, 1), and 1 at lr = 0
            trust = ops.where(trust < learning_rate, trust / learning_rate, 1.0)
        adapt = (w_norm > 0) & (grad_side > 0)
        if self.variant.denominator == "sum_of_norms":  # solo-learn neither decays nor scales then
            return ops.where(adapt, trust * decayed, gradient)
        return ops.where(adapt, trust, 1.0) * decayed

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        direction = gradient
        if not is_excluded(variable.shape):
            direction = self._direction(gradient, variable, learning_rate)
        buffer = self.buffers[self._get_variable_index(variable)]
        _momentum_step(self, variable, buffer, direction, learning_rate, self.momentum,
                       self.variant.momentum_style)

    def get_config(self):
        variant = self.variant
        return {**super().get_config(), "momentum": self.momentum,
                "weight_decay": self.lars_weight_decay, "eta": self.eta,
                "variant": {"denominator": variant.denominator, "clip": variant.clip,
                            "momentum_style": variant.momentum_style, "source": variant.source}}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["variant"] = LarsVariant(**config["variant"])
        return super().from_config(config, custom_objects)


class _CoupledWeightDecay:
    """Adds ``coupled_weight_decay * w`` to the gradient of every non-excluded tensor, then runs the
    Keras optimizer's own ``update_step`` (PyTorch's ``weight_decay`` for SGD and Adam)."""

    def __init__(self, *args, coupled_weight_decay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.coupled_weight_decay = coupled_weight_decay

    def update_step(self, gradient, variable, learning_rate):
        if self.coupled_weight_decay and not is_excluded(variable.shape):
            gradient = (ops.cast(gradient, variable.dtype)
                        + self.coupled_weight_decay * _tensor(variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}


@keras.saving.register_keras_serializable("keras_byol")
class SGD(_CoupledWeightDecay, keras.optimizers.SGD):
    """Keras SGD with coupled weight decay on non-excluded tensors.

    Keras' momentum is ``"lr_inside"`` (classic momentum: ``v <- m v - lr d``, ``w <- w + v``);
    PyTorch's SGD is ``"lr_outside"``. The two agree while the rate is constant.
    """


@keras.saving.register_keras_serializable("keras_byol")
class Adam(_CoupledWeightDecay, keras.optimizers.Adam):
    """Keras Adam with coupled (L2) weight decay on non-excluded tensors, as PyTorch's Adam."""


@keras.saving.register_keras_serializable("keras_byol")
class AdamW(keras.optimizers.AdamW):
    """Keras AdamW (decoupled decay ``w <- w - lr wd w``, Loshchilov & Hutter 2019), with the
    excluded tensors (by shape) taken out of the decay when the optimizer is built."""

    def build(self, variables):
        if self.built:
            return
        self.exclude_from_weight_decay(var_list=[v for v in variables if is_excluded(v.shape)])
        super().build(variables)


def build_optimizer(name: str, schedule: LrSchedule | float, weight_decay: float = 0.0,
                    momentum: float = 0.9, eta: float = 1e-3, lars_variant: str = "byol"
                    ) -> keras.optimizers.Optimizer:
    """``"lars"``, ``"sgd"`` (with momentum), ``"adam"`` or ``"adamw"``.

    ``schedule`` is the ``LrSchedule`` of the run (read per step through :class:`TableSchedule`)
    or a constant rate. Adam and AdamW ignore ``momentum`` (betas 0.9, 0.999; epsilon
    ``common.optim.ADAM_EPS``, not Keras' 1e-7, in Keras' place: ``common.optim.adamw_step(...,
    "raw")``).
    """
    rate = TableSchedule(schedule) if isinstance(schedule, LrSchedule) else float(schedule)
    if name == "lars":
        return LARS(rate, momentum=momentum, weight_decay=weight_decay, eta=eta,
                    variant=lars_variant)
    if name == "sgd":
        return SGD(rate, momentum=momentum, coupled_weight_decay=weight_decay)
    if name == "adam":
        return Adam(rate, coupled_weight_decay=weight_decay, beta_1=ADAM_BETAS[0],
                    beta_2=ADAM_BETAS[1], epsilon=ADAM_EPS)
    if name == "adamw":
        return AdamW(rate, weight_decay=weight_decay, beta_1=ADAM_BETAS[0], beta_2=ADAM_BETAS[1],
                     epsilon=ADAM_EPS)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
