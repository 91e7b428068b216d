"""pytorch_simclr/optim.py (LARS, parameter groups, scheduler)."""

import numpy as np
import pytest
import torch
from torch import nn

from common.arch import feature_dim, resnet_spec, tensor_shapes
from common.schedules import warmup_cosine
from pytorch_simclr.model import ProjectionHead, SimCLRModel, build_encoder
from pytorch_simclr.optim import LARS, build_optimizer, build_scheduler, param_groups

# ---------------------------------------------------------------------------------------------
# Parameter groups


def _simclr_model():
    spec = resnet_spec("resnet18_small", 32)
    model = SimCLRModel(build_encoder(spec), ProjectionHead(feature_dim(spec), 64, 16))
    return spec, model


def test_exclusion_hits_every_norm_parameter_and_bias_and_nothing_else():
    spec, model = _simclr_model()
    model.classifier = nn.Linear(16, 10)  # a biased layer, so biases are really exercised
    weights, excluded = param_groups(model, weight_decay=1e-6)
    assert (weights["lars_exclude"], excluded["lars_exclude"]) == (False, True)
    assert (weights["weight_decay"], excluded["weight_decay"]) == (1e-6, 0.0)
    # Counted independently of shapes: the spec's BN gamma/beta (encoder), the head's BN
    # parameters (hidden BN: gamma + beta, last BN: gamma only), the classifier's bias.
    encoder_bn = sum(1 for k in tensor_shapes(spec) if k.endswith((".gamma", ".beta")))
    assert len(excluded["params"]) == encoder_bn + 2 + 1 + 1
    # ... and each of them belongs to a norm layer or is a bias.
    owners = {id(p): (type(m), n) for m in model.modules() for n, p in m.named_parameters(
        recurse=False)}
    for p in excluded["params"]:
        kind, attribute = owners[id(p)]
        assert issubclass(kind, nn.modules.batchnorm._BatchNorm) or attribute == "bias"
    # Every conv kernel and linear weight is adapted and decayed.
    assert len(weights["params"]) == sum(1 for k in tensor_shapes(spec) if k.endswith("kernel")) + 3
    assert len(weights["params"]) + len(excluded["params"]) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out():
    _, model = _simclr_model()
    model.encoder.requires_grad_(False)
    groups = param_groups(model, 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.head.parameters()))


# ---------------------------------------------------------------------------------------------
# LARS


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)).double()


def _set_grads(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def test_lars_included_parameter_follows_the_hand_computed_update():
    model = _tiny()
    lr, momentum, wd, eta = 0.7, 0.9, 0.05, 0.001
    optimizer = LARS(param_groups(model, wd), lr=lr, momentum=momentum, trust_coefficient=eta)
    w = model[0].weight.detach().numpy().copy()
    velocity = np.zeros_like(w)
    for step in range(3):
        _set_grads(model, step)
        g = model[0].weight.grad.numpy()
        d = g + wd * w
        trust = eta * np.linalg.norm(w) / (np.linalg.norm(d) + 1e-8)
        velocity = momentum * velocity + lr * trust * d
        w = w - velocity
        optimizer.step()
        np.testing.assert_allclose(model[0].weight.detach().numpy(), w, rtol=1e-12, atol=1e-14)
    # The trust ratio really changes the step: it is far from plain SGD's.
    assert not np.allclose(trust, 1.0)


def test_lars_excluded_parameters_step_like_sgd_momentum_without_weight_decay():
    model, reference = _tiny(), _tiny()
    lars = LARS(param_groups(model, 0.05), lr=0.7, momentum=0.9)
    excluded = [reference[0].bias, reference[1].weight, reference[1].bias]
    initial = [p.detach().clone() for p in excluded]
    sgd = torch.optim.SGD(excluded, lr=0.7, momentum=0.9, weight_decay=0.0)
    for step in range(3):
        _set_grads(model, step)
        _set_grads(reference, step)
        lars.step()
        sgd.step()
    ours = [model[0].bias, model[1].weight, model[1].bias]
    for mine, theirs, start in zip(ours, excluded, initial, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
        assert (mine - start).norm() > 1.0  # SGD-sized steps, not trust-ratio-sized ones


def test_lars_trust_ratio_is_one_for_a_zero_weight():
    weight = nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
    optimizer = LARS([{"params": [weight], "weight_decay": 0.1, "lars_exclude": False}], lr=0.5,
                     momentum=0.0)
    weight.grad = torch.ones(3, 3, dtype=torch.float64)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3, 3), -0.5, dtype=torch.float64))


def test_lars_refuses_impossible_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        LARS(_tiny().parameters(), lr=0.1, momentum=1.5)


# ---------------------------------------------------------------------------------------------
# build_optimizer / build_scheduler


@pytest.mark.parametrize(("name", "cls"), [("lars", LARS), ("sgd", torch.optim.SGD),
                                           ("adamw", torch.optim.AdamW)])
def test_build_optimizer_uses_the_shape_groups(name, cls):
    _, model = _simclr_model()
    optimizer = build_optimizer(name, model, lr=0.3, weight_decay=1e-4, momentum=0.9)
    assert isinstance(optimizer, cls)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    assert all(p.ndim <= 1 for p in optimizer.param_groups[1]["params"])
    with pytest.raises(ValueError, match="lars, sgd, adamw"):
        build_optimizer("adam", model, 0.3, 0.0, 0.9)


def test_scheduler_gives_warmup_cosine_of_the_step():
    _, model = _simclr_model()
    peak, total, warmup = 1.2, 20, 5
    optimizer = build_optimizer("lars", model, lr=peak, weight_decay=1e-6, momentum=0.9)
    scheduler = build_scheduler(optimizer, total_steps=total, warmup_steps=warmup)
    for k in range(total + 1):  # after k optimisation steps (and k scheduler steps)
        expected = warmup_cosine(k, total, warmup, peak)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected] * 2), k
        optimizer.step()
        scheduler.step()
    with pytest.raises(ValueError, match="warmup_steps"):
        build_scheduler(optimizer, total_steps=10, warmup_steps=20)
