"""Optimisers and the learning-rate schedule of the SimCLR chapter.

SimCLR trains with LARS (You et al. 2017) at large batch sizes (section 2.2, appendix B.1), with a
linear warm-up and cosine decay (``common/schedules.py``) stepped once per optimisation step.
"""

from __future__ import annotations

import torch
from torch import nn

from common.schedules import warmup_cosine

OPTIMIZERS = ("lars", "sgd", "adamw")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups split by *shape*: weights, and the rest (biases and norm parameters).

    Every parameter with ``ndim <= 1`` (BatchNorm gamma/beta, linear and conv biases) goes to the
    group flagged ``lars_exclude=True`` with ``weight_decay=0``: LARS neither decays nor adapts
    it, and SGD/AdamW do not decay it either. These are the tensors google-research/simclr
    excludes by name (``exclude_from_weight_decay=['batch_normalization', 'bias']``); splitting by
    shape cannot silently miss one the way a name pattern can.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in trainable if p.ndim > 1]
    biases_and_norms = [p for p in trainable if p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": biases_and_norms, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, "Large Batch Training of
    Convolutional Networks", algorithm 1), in the form of google-research/simclr's
    ``lars_optimizer.py`` (classic momentum, no Nesterov).

    For each parameter tensor w with gradient g, in a group not flagged ``lars_exclude``::

        d     = g + weight_decay * w
        trust = eta * ||w|| / (||d|| + eps)      (1 when ||w|| = 0 or ||d|| = 0)
        v     = momentum * v + lr * trust * d
        w     = w - v

    In a ``lars_exclude`` group the update is plain SGD with momentum, no weight decay and no
    trust ratio: ``v = momentum * v + lr * g``. The learning rate sits inside the momentum buffer
    ("classic" momentum, as the reference code), so the trust ratio scales each step before it is
    accumulated. ``eps`` only guards the division; the reference has none.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0, trust_coefficient > 0; "
                f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                f"trust_coefficient={trust_coefficient}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["trust_coefficient"] * param_norm / (update_norm + group["eps"]),
                        torch.ones_like(param_norm),
                    )
                    update = update * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                velocity = state["momentum_buffer"]
                velocity.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                param.sub_(velocity)
        return loss


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """``"lars"``, ``"sgd"`` (with momentum) or ``"adamw"`` over ``param_groups(model, ...)``.

    ``lr`` is the peak (already batch-scaled) rate; AdamW ignores ``momentum`` (betas 0.9, 0.999).
    """
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine (``common.schedules.warmup_cosine``) on every group's peak rate.

    Call ``scheduler.step()`` once after every ``optimizer.step()``: after k calls the rate is
    ``warmup_cosine(k, total_steps, warmup_steps, peak_lr)``.
    """
    warmup_cosine(0, total_steps, warmup_steps, 1.0)  # validates the arguments now, not mid-run
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, 1.0)
    )
