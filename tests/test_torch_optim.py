"""pytorch_simclr/optim.py (LARS, parameter groups, scheduler)."""

import numpy as np
import pytest
import torch
from torch import nn

from common.arch import feature_dim, resnet_spec, tensor_shapes
from common.optim import LARS_VARIANTS, lars_step, sgd_step
from common.schedules import LrSchedule
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
# Every optimiser against the NumPy references of common/optim.py, 10 steps, a moving rate


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)).double()


def _set_grads(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _run_against_reference(optimizer_name, reference_step, **kw):
    model = _tiny()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    buffers = {}
    schedule = LrSchedule(0.8, 10, 3)
    optimizer = build_optimizer(optimizer_name, model, lr=schedule.base_lr, weight_decay=0.05,
                                momentum=0.9, **kw)
    scheduler = build_scheduler(optimizer, schedule)
    for step in range(10):
        _set_grads(model, step)
        grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
        params, buffers = reference_step(params, grads, buffers, schedule.rate(step))
        optimizer.step()
        scheduler.step()
        for name, p in zip(names, model.parameters(), strict=True):
            np.testing.assert_allclose(p.detach().numpy(), params[name], rtol=1e-11, atol=1e-13,
                                       err_msg=f"{name} at step {step}")
    return model


@pytest.mark.parametrize("variant", sorted(LARS_VARIANTS))
def test_lars_equals_the_numpy_reference_step_by_step(variant):
    def reference(params, grads, buffers, lr):
        return lars_step(params, grads, buffers, lr, 0.9, 0.05, 0.02, variant)

    _run_against_reference("lars", reference, trust_coefficient=0.02, lars_variant=variant)


def test_sgd_equals_the_numpy_reference_with_the_rate_outside_the_momentum():
    def reference(params, grads, buffers, lr):
        return sgd_step(params, grads, buffers, lr, 0.9, 0.05, style="lr_outside")

    _run_against_reference("sgd", reference)


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
    with pytest.raises(ValueError, match="unknown LARS variant"):
        LARS(_tiny().parameters(), lr=0.1, variant="nvidia")


# ---------------------------------------------------------------------------------------------
# build_optimizer / build_scheduler


@pytest.mark.parametrize(("name", "cls"), [("lars", LARS), ("sgd", torch.optim.SGD),
                                           ("adamw", torch.optim.AdamW)])
def test_build_optimizer_uses_the_shape_groups(name, cls):
    _, model = _simclr_model()
    optimizer = build_optimizer(name, model, lr=0.3, weight_decay=1e-4, momentum=0.9)
    assert isinstance(optimizer, cls)
    decayed, excluded = optimizer.param_groups
    assert (decayed["weight_decay"], excluded["weight_decay"]) == (1e-4, 0.0)
    assert (decayed.get("lars_exclude"), excluded.get("lars_exclude")) == (False, True)
    assert decayed["params"] and all(p.ndim > 1 for p in decayed["params"])
    assert excluded["params"] and all(p.ndim <= 1 for p in excluded["params"])
    assert len(decayed["params"]) + len(excluded["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="lars, sgd, adamw"):
        build_optimizer("adam", model, 0.3, 0.0, 0.9)


def test_scheduler_gives_the_schedule_rate_of_the_step_also_after_a_resume():
    _, model = _simclr_model()
    schedule = LrSchedule(1.2, 20, 5)
    optimizer = build_optimizer("lars", model, lr=schedule.base_lr, weight_decay=1e-6, momentum=0.9)
    scheduler = build_scheduler(optimizer, schedule)
    for k in range(12):  # after k optimisation steps (and k scheduler steps)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([schedule.rate(k)] * 2), k
        optimizer.step()
        scheduler.step()
    state = optimizer.state_dict()
    extended = schedule.continued(12, 40)  # resumed at step 12 with a longer horizon
    resumed = build_optimizer("lars", model, lr=schedule.base_lr, weight_decay=1e-6, momentum=0.9)
    resumed.load_state_dict(state)
    scheduler = build_scheduler(resumed, extended, start_step=12)
    for k in range(12, 41):
        assert [g["lr"] for g in resumed.param_groups] == pytest.approx([extended.rate(k)] * 2), k
        resumed.step()
        scheduler.step()
