"""Learning-rate schedules as pure functions of the optimisation step, and batch-size scaling.

Every chapter reads the rate of optimisation *step* t (never of the epoch: a per-step schedule
stepped per epoch warms up and decays ``steps_per_epoch`` times too slowly). Two forms of the same
numbers: :meth:`LrSchedule.rate` (a Python float, for PyTorch's ``LambdaLR``) and
:meth:`LrSchedule.table` (a NumPy array indexed by the step, for a ``tf.function`` or ``jax.jit``
step that must not run Python ``if``s or ``math.cos`` on a traced step counter).

Extending a run (``--resume RUN_DIR --epochs N``)
-------------------------------------------------
Moving the cosine's horizon from T to T' at step s would make the rate jump: going from 10 to 20
epochs at the end of the 10th lifts it from about 0 to about half the peak (0.50 without a
warm-up). The rule here (:meth:`LrSchedule.continued`) is that *the rate never jumps*:

- after the warm-up (s >= W), the remaining steps follow a new half-cosine from the current rate
  ``lr(s)`` down to the final rate at T';
- during the warm-up (s < W), the warm-up goes on unchanged and the cosine ends at T' instead of T
  (the warm-up does not depend on T, so the steps already taken had exactly these rates).

A finished run (s = T) has decayed to the final rate, 0 by default: extending it would train at
rate 0, so :meth:`continued` refuses and says to start a new run (or to extend before the end).

Changing the rate of a run (``--resume RUN_DIR --lr X``, e.g. after a divergence) multiplies every
rate from the resume step on by X / (the --lr of the checkpoint's schedule) (:meth:`LrSchedule.scaled`;
``common/session.py`` keeps that --lr with the position): the shape stays.

The EMA rate of a target or key network (:func:`ema_momentum`, rising to 1 at the horizon) follows
the same rule (:func:`ema_rise`): an extension at step s starts a new half-cosine from the rate
reached at s up to 1 at T', warm-up or not. Re-planning the rise over T' instead would make it jump
back (BYOL's tau0 0.99, 1000 steps extended to 2000 at step 500: 0.995 to 0.9915 in one step).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

LR_SCALINGS = ("linear", "sqrt", "none")


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float = 0.0
) -> float:
    """Learning rate for optimisation step ``step`` (0-based) of ``total_steps``.

    Linear warm-up (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 2.2), then half-cosine
    decay without restarts (Loshchilov & Hutter 2017, SGDR, eq. 5), exactly as google-research/simclr
    ``tf2/model.py`` ``WarmUpAndCosineDecay``::

        lr(t) = base_lr * t / W                                                     for t < W
        lr(t) = final_lr + (base_lr - final_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2   for t >= W

    with W = ``warmup_steps`` and T = ``total_steps``. The first step has rate 0 (it still updates
    BatchNorm statistics and momentum buffers stay 0), step W is the peak, and the rate reaches
    ``final_lr`` at t = T, the step after the last one; steps beyond T stay at ``final_lr``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return final_lr
    return float(_cosine(step - warmup_steps, total_steps - warmup_steps, base_lr, final_lr))


def _cosine(t, length: int, start: float, end: float):
    """The half-cosine from ``start`` (t = 0) to ``end`` (t = length); t a number or an array."""
    return end + (start - end) * 0.5 * (1.0 + np.cos(np.pi * np.asarray(t, np.float64) / max(length, 1)))


@dataclass(frozen=True)
class LrSchedule:
    """Warm-up + cosine over ``total_steps``, followed by the continuations resumes added.

    ``continuations`` holds ``(start, rate, end)`` triples: from step ``start`` on, a half-cosine
    from ``rate`` down to ``final_lr`` at step ``end`` (module docstring). ``scales`` holds
    ``(start, factor)`` pairs: from step ``start`` on, every rate is multiplied by ``factor``.
    ``extensions`` holds every change of horizon, ``(step, old end, new end)``, the ones during the
    warm-up included: what the EMA rates follow (:func:`ema_rise`).
    :attr:`end_step` is the horizon in force. Saved with a run's position (:meth:`to_dict` /
    :meth:`from_dict`), so a resumed run replays the same rates, and :meth:`rate` still gives the
    rate every past step had.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int
    final_lr: float = 0.0
    continuations: tuple[tuple[int, float, int], ...] = ()
    scales: tuple[tuple[int, float], ...] = ()
    extensions: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self):
        warmup_cosine(0, self.total_steps, self.warmup_steps, self.base_lr)  # validates

    @property
    def end_step(self) -> int:
        """The step after the last one: the rate there is ``final_lr``."""
        return self.continuations[-1][2] if self.continuations else self.total_steps

    def rate(self, step: int) -> float:
        """The learning rate of optimisation step ``step``."""
        return self._unscaled_rate(step) * math.prod(f for start, f in self.scales if step >= start)

    def _unscaled_rate(self, step: int) -> float:
        for start, start_rate, end in reversed(self.continuations):
            if step >= start:
                return self.final_lr if step >= end else float(_cosine(
                    step - start, end - start, start_rate, self.final_lr))
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.base_lr, self.final_lr)

    def table(self, dtype=np.float32) -> np.ndarray:
        """``rate(t)`` for t = 0 .. :attr:`end_step` (the last entry: the rate after the final step).

        The same formulas as :meth:`rate`, evaluated on all steps at once with array operations.
        """
        t = np.arange(self.end_step + 1, dtype=np.float64)
        total, warmup, final = self.total_steps, self.warmup_steps, self.final_lr
        rates = np.where(t < warmup, self.base_lr * t / max(warmup, 1), _cosine(
            t - warmup, total - warmup, self.base_lr, final))
        rates[t >= total] = final
        for start, start_rate, end in self.continuations:
            rates = np.where(t >= start, _cosine(t - start, end - start, start_rate, final), rates)
            rates[t >= end] = final
        for start, factor in self.scales:
            rates = np.where(t >= start, rates * factor, rates)
        return rates.astype(dtype)

    def continued(self, at_step: int, end_step: int) -> LrSchedule:
        """The schedule of a run resumed at ``at_step`` with the new horizon ``end_step``.

        The rate never jumps (module docstring); a finished schedule cannot be continued.
        """
        if end_step == self.end_step:
            return self
        if not 0 <= at_step < end_step:
            raise ValueError(
                f"the run has taken {at_step} steps; a horizon of {end_step} steps leaves nothing "
                "to train (pass a larger --epochs)"
            )
        extensions = (*self.extensions, (int(at_step), self.end_step, int(end_step)))
        if at_step < self.warmup_steps and not self.continuations:
            return dataclasses.replace(self, total_steps=end_step, extensions=extensions)
        current = self._unscaled_rate(at_step)
        if at_step >= self.end_step or current <= self.final_lr:
            raise ValueError(
                f"the run has finished its schedule: its learning rate has decayed to {current:g}, "
                "so more epochs would train at that rate. Start a new run with the larger --epochs "
                "(a run extended before it ends continues its cosine from the current rate)"
            )
        continuation = (int(at_step), float(current), int(end_step))
        return dataclasses.replace(self, continuations=(*self.continuations, continuation),
                                   extensions=extensions)

    def scaled(self, at_step: int, factor: float) -> LrSchedule:
        """The schedule with every rate from step ``at_step`` on multiplied by ``factor``."""
        if not factor > 0:
            raise ValueError(f"a learning-rate factor must be positive, got {factor}")
        return dataclasses.replace(self, scales=(*self.scales, (int(at_step), float(factor))))

    def to_dict(self) -> dict:
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "final_lr": self.final_lr,
                "continuations": [list(c) for c in self.continuations],
                "scales": [list(c) for c in self.scales],
                "extensions": [list(c) for c in self.extensions]}

    @classmethod
    def from_dict(cls, state: dict) -> LrSchedule:
        return cls(float(state["base_lr"]), int(state["total_steps"]), int(state["warmup_steps"]),
                   float(state["final_lr"]),
                   tuple((int(s), float(r), int(e)) for s, r, e in state.get("continuations", ())),
                   tuple((int(s), float(f)) for s, f in state.get("scales", ())),
                   tuple((int(s), int(a), int(b)) for s, a, b in state.get("extensions", ())))


def ema_momentum(base: float, step: int | np.ndarray, total_steps: int, start_step: int = 0):
    """The increasing EMA rate of a target network (BYOL, Grill et al. 2020, sec. 3.3):

        tau(k) = 1 - (1 - base) (cos(pi (k - k0) / (K - k0)) + 1) / 2

    ``base`` at step k0 = ``start_step`` (0 but in an extended run, :func:`ema_rise`), rising along
    a half-cosine to 1 at k = K = ``total_steps`` (and 1 after it). deepmind-research byol
    ``target_ema`` and solo-learn's ``cur_tau`` (with final tau 1) are this formula with k0 = 0;
    MoCo's key encoder uses a constant m, which this chapter's ``cosine`` option turns into the same
    rise. ``step`` may be an array (a per-step table for traced steps).
    """
    k = np.clip(np.asarray(step, np.float64), start_step, total_steps) - start_step
    tau = 1.0 - (1.0 - base) * (np.cos(np.pi * k / (total_steps - start_step)) + 1.0) / 2.0
    return float(tau) if np.ndim(tau) == 0 else tau


class EmaRise(NamedTuple):
    """The arguments of :func:`ema_momentum` in force: its rate rises from ``base`` at
    ``start_step`` to 1 at ``total_steps``."""

    base: float
    total_steps: int
    start_step: int = 0

    def rate(self, step: int | np.ndarray):
        return ema_momentum(self.base, step, self.total_steps, self.start_step)


def ema_rise(base: float, schedule: LrSchedule) -> EmaRise:
    """The rise of the EMA rate of a run with this learning-rate ``schedule`` and base rate
    ``base``: from ``base`` at step 0 to 1 at the horizon as planned; after each extension of the
    run at step s, from the rate reached at s to 1 at the new horizon (module docstring: the rate
    never jumps)."""
    rise = EmaRise(base, schedule.extensions[0][1] if schedule.extensions else schedule.end_step)
    for at_step, _, new_end in schedule.extensions:
        rise = EmaRise(rise.rate(at_step), new_end, at_step)
    return rise


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """The learning rate for ``batch_size`` from a recipe's base rate.

    ``"linear"``: ``base_lr * batch_size / 256`` (Goyal et al. 2017; SimCLR appendix B.1, LR = 0.3 x
    B/256); ``"sqrt"``: ``base_lr * sqrt(batch_size)`` (SimCLR appendix B.1, LR = 0.075 x sqrt(B),
    better for small batches / long training); ``"none"``: ``base_lr`` unchanged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule {rule!r}; choose one of {', '.join(LR_SCALINGS)}")
