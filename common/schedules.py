"""Learning-rate schedules as pure functions of the optimisation step, and batch-size scaling.

Every chapter calls ``warmup_cosine`` once per optimisation *step* (never once per epoch: a per-step
schedule stepped per epoch would warm up and decay ``steps_per_epoch`` times too slowly).
"""

from __future__ import annotations

import math

LR_SCALING_RULES = ("linear", "sqrt", "none")


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float = 0.0
) -> float:
    """Learning rate for optimisation step ``step`` (0-based) of ``total_steps``.

    Linear warm-up (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 2.2), then half-cosine
    decay without restarts (Loshchilov & Hutter 2017, SGDR, eq. 5), as in SimCLR (appendix B.1):

        lr(t) = base_lr * (t + 1) / W                                     for t < W
        lr(t) = final_lr + (base_lr - final_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2   for t >= W

    with W = ``warmup_steps`` and T = ``total_steps``. The first step already moves (base_lr / W, not
    0), step W - 1 reaches ``base_lr``, and the rate reaches ``final_lr`` at t = T, the step after the
    last one; steps beyond T stay at ``final_lr``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return final_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
    raise ValueError(f"unknown lr scaling rule {rule!r}; choose one of {', '.join(LR_SCALING_RULES)}")
