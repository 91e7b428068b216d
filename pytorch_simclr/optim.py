"""Optimisers and the learning-rate schedule of the SimCLR chapter.

SimCLR trains with LARS (You et al. 2017) at large batch sizes (section 2.2, appendix B.1), with a
linear warm-up and cosine decay (``common/schedules.py``) stepped once per optimisation step. Every
optimiser here is tested step by step against the NumPy references of ``common/optim.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from common.optim import ADAM_BETAS, ADAM_EPS, LARS_EPS, LARS_VARIANTS, OPTIMIZERS, is_excluded
from common.schedules import LrSchedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups split by *shape* (``common.optim.is_excluded``): weights, and the rest.

    Every parameter with ``ndim <= 1`` (BatchNorm gamma/beta, linear and conv biases) goes to the
    group flagged ``lars_exclude=True`` with ``weight_decay=0``: LARS neither decays nor adapts
    it, and SGD/AdamW do not decay it either. These are the tensors google-research/simclr
    excludes by name (``exclude_from_weight_decay=['batch_normalization', 'bias']``); splitting by
    shape cannot silently miss one the way a name pattern can.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if not is_excluded(p.shape)], "weight_decay": weight_decay,
         "lars_exclude": False},
        {"params": [p for p in trainable if is_excluded(p.shape)], "weight_decay": 0.0,
         "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, algorithm 1) in the three
    published forms of ``common.optim.LARS_VARIANTS`` (where the weight decay enters the trust
    ratio's denominator, clipping, where the rate sits in the momentum), the equations of
    ``common/optim.py``. For a tensor w with gradient g in a group not flagged ``lars_exclude``::

        d     = g + weight_decay * w
        trust = eta * ||w|| / ||d||                            (variant "simclr", "byol")
        trust = eta * ||w|| / (||g|| + weight_decay * ||w||)   (variant "solo-learn"; then
                min(trust / lr, 1): clipped)
        trust = 1 where a norm is 0

    then classic momentum ``v = m v + lr trust d; w = w - v`` ("simclr") or PyTorch's
    ``b = m b + trust d; w = w - lr b`` ("solo-learn", "byol"). A ``lars_exclude`` tensor steps
    with ``d = g`` and ``trust = 1``.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, variant: str = "simclr"):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0, trust_coefficient > 0; "
                f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                f"trust_coefficient={trust_coefficient}"
            )
        if variant not in LARS_VARIANTS:
            raise ValueError(f"unknown LARS variant {variant!r}; choose one of {sorted(LARS_VARIANTS)}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "variant": variant, "lars_exclude": False}
        super().__init__(params, defaults)

    @staticmethod
    def _direction(param, grad, group) -> torch.Tensor:
        """``trust * d`` of an adapted tensor (``common.optim.lars_direction``)."""
        variant = LARS_VARIANTS[group["variant"]]
        weight_decay, eta = group["weight_decay"], group["trust_coefficient"]
        w_norm = torch.linalg.vector_norm(param)
        decayed = grad.add(param, alpha=weight_decay)
        if variant.denominator == "update_norm":
            usable = (w_norm > 0) & (torch.linalg.vector_norm(decayed) > 0)
            trust = eta * w_norm / (torch.linalg.vector_norm(decayed) + LARS_EPS)
        else:
            g_norm = torch.linalg.vector_norm(grad)
            usable = (w_norm > 0) & (g_norm > 0)
            trust = eta * w_norm / (g_norm + weight_decay * w_norm + LARS_EPS)
            decayed = torch.where(usable, decayed, grad)
        if variant.clip:
            trust = torch.clamp(trust / group["lr"], max=1.0) if group["lr"] > 0 else torch.ones_like(trust)
        return decayed * torch.where(usable, trust, torch.ones_like(trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            inside = LARS_VARIANTS[group["variant"]].momentum_style == "lr_inside"
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad if group["lars_exclude"] else self._direction(param, param.grad, group)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                if inside:  # v = m v + lr d; w = w - v
                    buffer.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                    param.sub_(buffer)
                else:  # b = m b + d; w = w - lr b
                    buffer.mul_(group["momentum"]).add_(update)
                    param.sub_(buffer, alpha=group["lr"])
        return loss


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9,
                    trust_coefficient: float = 0.001, lars_variant: str = "simclr"
                    ) -> torch.optim.Optimizer:
    """``"lars"``, ``"sgd"`` (PyTorch's: momentum with the rate outside the buffer, coupled weight
    decay) or ``"adamw"`` over ``param_groups(model, ...)``.

    ``lr`` is the peak (already batch-scaled) rate; AdamW ignores ``momentum`` (betas 0.9, 0.999;
    epsilon ``common.optim.ADAM_EPS`` after the bias correction, ``common.optim.adamw_step``).
    """
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient,
                    variant=lars_variant)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LrSchedule, start_step: int = 0
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """``schedule`` (``common/schedules.py``) as a ``LambdaLR`` on every group's peak rate.

    Call ``scheduler.step()`` once after every ``optimizer.step()``: after k calls the rate is
    ``schedule.rate(start_step + k)``. A resumed run passes the step it resumes at (after loading
    the optimiser's state).
    """
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", schedule.base_lr)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule.rate(step) / schedule.base_lr, last_epoch=start_step - 1)
