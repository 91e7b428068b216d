"""Reference optimiser steps in NumPy: SGD with momentum and LARS, the one definition every chapter's
``optim.py`` is tested against (as ``common/losses.py`` is for the losses).

Which tensors are adapted
-------------------------
:func:`is_excluded` is THE rule: a tensor with ``ndim <= 1`` (biases, BatchNorm gamma and beta) is
neither weight-decayed nor trust-ratio-scaled by LARS, and not weight-decayed by SGD/AdamW either.
google-research/simclr excludes ``['batch_normalization', 'bias']`` by *name*; matching by shape
cannot silently miss a tensor whose framework calls it ``gamma``/``beta`` (Keras) or ``weight``/
``bias`` (PyTorch BatchNorm).

Momentum: where the learning rate sits
--------------------------------------
Two published forms, identical while the rate is constant, different while a schedule moves it:

- ``"lr_inside"`` (Sutskever et al. 2013 "classic" momentum; google-research/simclr's LARS,
  Keras' SGD): ``v <- m v + lr d``, ``w <- w - v``. A step's rate is baked into the buffer.
- ``"lr_outside"`` (PyTorch's SGD, solo-learn's LARS, optax): ``b <- m b + d``, ``w <- w - lr b``.
  Every past step is re-weighted by today's rate.

LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks", algorithm 1)
----------------------------------------------------------------------------------------------------
For an adapted tensor w with gradient g, weight decay beta and trust coefficient eta::

    d     = g + beta w
    trust = eta ||w|| / ||d||                  denominator "update_norm" (simclr tf2, deepmind byol)
    trust = eta ||w|| / (||g|| + beta ||w||)   denominator "sum_of_norms" (the paper's algorithm 1,
                                               solo-learn)
    trust = 1 when ||w|| = 0 or ||d|| = 0      (update_norm; sum_of_norms: ||w|| = 0 or ||g|| = 0)
    clip:   trust = min(trust / lr, 1)         (solo-learn's ``clip_lr``, NVIDIA apex LARC's "clip"
                                               mode: the local rate lr * trust never exceeds lr)

then the momentum step above with ``d * trust`` in place of ``d``. An excluded tensor steps with
``d = g`` and ``trust = 1``. The three implementations met in the anchors are three settings of
these switches (:data:`LARS_VARIANTS`).

AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", algorithm 2)
-------------------------------------------------------------------------------------
Adam (Kingma & Ba 2015, algorithm 1) with the weight decay taken out of the gradient: at step
t = 1, 2, ... with betas (b1, b2)::

    w <- w (1 - lr wd)                         (not for excluded tensors)
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    w <- w - lr  m_hat / (sqrt(v_hat) + eps)   m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

That is ``epsilon_placement="bias_corrected"``: the paper's algorithm 1, PyTorch's AdamW. Keras
(the TensorFlow and Keras chapters) uses the paper's "more efficient" order (end of its section
2), ``"raw"``: ``w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``, the same step with
the epsilon ``eps / sqrt(1 - b2^t)`` of the bias-corrected form: about 32 eps at the first step,
within 1 % of eps after 4,000 steps. The two agree wherever ``sqrt(v_hat)`` is well above that
(at the first step they differ by 3 % for a gradient of 1e-5, by 0.03 % for one of 1e-3). Every
chapter uses eps = 1e-8 (:data:`ADAM_EPS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPTIMIZERS = ("lars", "sgd", "adamw")
"""Optimiser names every chapter accepts (``--optimizer``)."""

MOMENTUM_STYLES = ("lr_inside", "lr_outside")
TRUST_DENOMINATORS = ("update_norm", "sum_of_norms")
EPSILON_PLACEMENTS = ("bias_corrected", "raw")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
"""Adam's epsilon in every chapter: PyTorch's default and the Adam paper's (Keras' default is 1e-7)."""
LARS_EPS = 1e-8
"""Guards the trust ratio's division (added to the denominator), as solo-learn does. The ``simclr``
and ``byol`` variants' sources (google-research/simclr, deepmind-research/byol) have none: a
deviation of a relative 1e-8 / ||d||, reached only with both norms nonzero (:func:`lars_direction`)."""


def is_excluded(shape) -> bool:
    """True for tensors LARS leaves unadapted and no optimiser decays: ``ndim <= 1``."""
    return len(tuple(shape)) <= 1


@dataclass(frozen=True)
class LarsVariant:
    """One published LARS: where the denominator's weight decay goes, clipping, momentum form."""

    denominator: str
    clip: bool
    momentum_style: str
    source: str

    def __post_init__(self):
        if self.denominator not in TRUST_DENOMINATORS:
            raise ValueError(f"denominator must be one of {TRUST_DENOMINATORS}, got {self.denominator!r}")
        if self.momentum_style not in MOMENTUM_STYLES:
            raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {self.momentum_style!r}")


LARS_VARIANTS: dict[str, LarsVariant] = {
    "simclr": LarsVariant(
        "update_norm", False, "lr_inside",
        "google-research/simclr tf2/lars_optimizer.py (classic momentum, no clipping)",
    ),
    "solo-learn": LarsVariant(
        "sum_of_norms", True, "lr_outside",
        "vturrisi/solo-learn solo/utils/lars.py (eta ||w|| / (||g|| + wd ||w||), clip_lr)",
    ),
    "byol": LarsVariant(
        "update_norm", False, "lr_outside",
        "deepmind-research byol/utils/optimizers.py (trust ratio on the decayed update, then "
        "momentum, then the rate)",
    ),
}


def lars_direction(w: np.ndarray, g: np.ndarray, lr: float, weight_decay: float, eta: float,
                   variant: LarsVariant) -> tuple[np.ndarray, float]:
    """``(d, trust)`` of an adapted tensor: the decayed gradient and LARS's factor for it.

    Where a norm is 0 the trust is 1, as each source has it: the ``update_norm`` sources test
    ``||w||`` and ``||d||`` (and always decay), solo-learn tests ``||w||`` and ``||g||`` and then
    neither decays nor scales.
    """
    w_norm = float(np.linalg.norm(w))
    if variant.denominator == "update_norm":
        d = g + weight_decay * w
        d_norm = float(np.linalg.norm(d))
        if w_norm == 0.0 or d_norm == 0.0:
            return d, 1.0
        trust = eta * w_norm / (d_norm + LARS_EPS)
    else:
        g_norm = float(np.linalg.norm(g))
        if w_norm == 0.0 or g_norm == 0.0:
            return g, 1.0
        d = g + weight_decay * w
        trust = eta * w_norm / (g_norm + weight_decay * w_norm + LARS_EPS)
    if variant.clip:
        trust = min(trust / lr, 1.0) if lr > 0 else 1.0
    return d, trust


def momentum_step(w: np.ndarray, d: np.ndarray, buffer: np.ndarray, lr: float, momentum: float,
                  style: str) -> tuple[np.ndarray, np.ndarray]:
    """``(w, buffer)`` after one heavy-ball step along direction ``d`` (module docstring)."""
    if style == "lr_inside":
        buffer = momentum * buffer + lr * d
        return w - buffer, buffer
    if style == "lr_outside":
        buffer = momentum * buffer + d
        return w - lr * buffer, buffer
    raise ValueError(f"momentum style must be one of {MOMENTUM_STYLES}, got {style!r}")


def sgd_step(params: dict, grads: dict, buffers: dict, lr: float, momentum: float,
             weight_decay: float, style: str = "lr_outside") -> tuple[dict, dict]:
    """SGD with momentum and coupled weight decay (``d = g + beta w`` for non-excluded tensors).

    ``params``, ``grads`` and ``buffers`` are dicts of float64 arrays keyed alike (``buffers``
    may be empty: buffers start at 0). Returns the new ``(params, buffers)``; inputs are not changed.
    """
    new_params, new_buffers = {}, {}
    for name, w in params.items():
        w = np.asarray(w, np.float64)
        d = np.asarray(grads[name], np.float64)
        if not is_excluded(w.shape):
            d = d + weight_decay * w
        new_params[name], new_buffers[name] = momentum_step(
            w, d, buffers.get(name, np.zeros_like(w)), lr, momentum, style)
    return new_params, new_buffers


def lars_step(params: dict, grads: dict, buffers: dict, lr: float, momentum: float,
              weight_decay: float, eta: float, variant: LarsVariant | str = "simclr"
              ) -> tuple[dict, dict]:
    """One LARS step of every tensor (module docstring); same conventions as :func:`sgd_step`."""
    variant = LARS_VARIANTS[variant] if isinstance(variant, str) else variant
    new_params, new_buffers = {}, {}
    for name, w in params.items():
        w = np.asarray(w, np.float64)
        g = np.asarray(grads[name], np.float64)
        d = g
        if not is_excluded(w.shape):
            d, trust = lars_direction(w, g, lr, weight_decay, eta, variant)
            d = d * trust
        new_params[name], new_buffers[name] = momentum_step(
            w, d, buffers.get(name, np.zeros_like(w)), lr, momentum, variant.momentum_style)
    return new_params, new_buffers


def adamw_step(params: dict, grads: dict, state: dict, lr: float, weight_decay: float,
               epsilon_placement: str = "bias_corrected", betas: tuple[float, float] = ADAM_BETAS,
               eps: float = ADAM_EPS) -> tuple[dict, dict]:
    """One AdamW step of every tensor (module docstring); ``state`` holds ``"step"`` and each
    tensor's ``(m, v)`` (empty at the start); same conventions as :func:`sgd_step`. Adam with
    coupled (L2) decay is this step with ``weight_decay=0`` on ``g + wd w``."""
    if epsilon_placement not in EPSILON_PLACEMENTS:
        raise ValueError(f"epsilon_placement must be one of {EPSILON_PLACEMENTS}, got "
                         f"{epsilon_placement!r}")
    b1, b2 = betas
    t = state.get("step", 0) + 1
    new_params, new_state = {}, {"step": t}
    for name, w in params.items():
        w = np.asarray(w, np.float64)
        g = np.asarray(grads[name], np.float64)
        m, v = state.get(name, (np.zeros_like(w), np.zeros_like(w)))
        if not is_excluded(w.shape):
            w = w * (1.0 - lr * weight_decay)
        m, v = b1 * m + (1.0 - b1) * g, b2 * v + (1.0 - b2) * g * g
        if epsilon_placement == "bias_corrected":
            step = lr * (m / (1.0 - b1**t)) / (np.sqrt(v / (1.0 - b2**t)) + eps)
        else:
            step = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t) * m / (np.sqrt(v) + eps)
        new_params[name], new_state[name] = w - step, (m, v)
    return new_params, new_state
