"""common/schedules.py (warm-up + cosine, its table, the --resume --epochs rule) and the NumPy
optimiser references of common/optim.py (SGD with momentum, the three LARS variants)."""

import math

import numpy as np
import pytest

from common.optim import LARS_VARIANTS, is_excluded, lars_step, momentum_step, sgd_step
from common.schedules import EmaRise, LrSchedule, ema_momentum, ema_rise, scaled_lr, warmup_cosine

# ---------------------------------------------------------------------------------------------
# Schedules


def test_warmup_cosine_key_points_match_google_research_simclr():
    total, warmup, base, final = 110, 10, 2.0, 0.1
    lrs = [warmup_cosine(t, total, warmup, base, final) for t in range(total + 2)]
    # tf2/model.py WarmUpAndCosineDecay: step / warmup_steps * lr, so step 0 has rate 0.
    assert lrs[0] == 0.0
    assert lrs[1] == pytest.approx(base / warmup)
    assert lrs[warmup - 1] == pytest.approx(base * (warmup - 1) / warmup)
    assert np.allclose(np.diff(lrs[:warmup + 1]), base / warmup)  # linear up to the peak at W
    assert lrs[warmup] == pytest.approx(base)
    assert lrs[warmup + 50] == pytest.approx((base + final) / 2)  # half-way through the cosine
    assert lrs[warmup + 25] == pytest.approx(final + (base - final) * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[total] == pytest.approx(final) and lrs[total + 1] == final
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:], strict=False))


def test_warmup_cosine_without_warmup_and_errors():
    assert warmup_cosine(0, 100, 0, 1.0) == 1.0
    assert warmup_cosine(100, 100, 0, 1.0) == 0.0
    for args, message in [((-1, 10, 0, 1.0), "step must be >= 0"),
                          ((0, 0, 0, 1.0), "total_steps must be >= 1"),
                          ((0, 10, 11, 1.0), "warmup_steps must be in"),
                          ((0, 10, -1, 1.0), "warmup_steps must be in")]:
        with pytest.raises(ValueError, match=message):
            warmup_cosine(*args)


def test_scaled_lr_rules():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)  # SimCLR appendix B.1
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)  # 0.075 * sqrt(4096) = 4.8
    assert scaled_lr(0.3, 4096, "none") == 0.3
    with pytest.raises(ValueError, match="linear, sqrt, none"):
        scaled_lr(0.3, 256, "cubic")


@pytest.mark.parametrize("schedule", [
    LrSchedule(1.5, 100, 10),
    LrSchedule(1.5, 100, 0, final_lr=0.01),
    LrSchedule(1.5, 100, 10).continued(60, 230),
    LrSchedule(1.5, 100, 10).continued(60, 230).continued(150, 170),
    LrSchedule(1.5, 100, 30).continued(12, 400),
])
def test_the_table_equals_the_rate_of_every_step(schedule):
    table = schedule.table(np.float64)
    assert table.shape == (schedule.end_step + 1,)
    np.testing.assert_allclose(table, [schedule.rate(t) for t in range(schedule.end_step + 1)],
                               rtol=1e-13, atol=1e-15)
    assert table[-1] == schedule.final_lr


def test_extending_a_run_never_makes_the_rate_jump():
    schedule = LrSchedule(1.0, 100, 10)  # 10 epochs of 10 steps
    at = 99  # resumed after 9.9 epochs, extended to 20 epochs
    moved_horizon = warmup_cosine(at, 200, 10, 1.0)
    assert moved_horizon > 0.5  # the naive rule: the rate would leap from ~0 to > half the peak
    extended = schedule.continued(at, 200)
    rates = [extended.rate(t) for t in range(at - 5, 201)]
    assert extended.rate(at) == schedule.rate(at)  # continuous ...
    assert 0 <= extended.rate(at) - extended.rate(at + 1) <= schedule.rate(at - 1) - schedule.rate(at)
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))  # ... and still decaying
    assert extended.rate(200) == 0.0
    for t in range(at):  # the past is what it was
        assert extended.rate(t) == schedule.rate(t)


def test_extending_during_the_warmup_keeps_the_warmup_and_moves_the_cosine():
    extended = LrSchedule(1.0, 100, 20).continued(7, 300)
    assert extended == LrSchedule(1.0, 300, 20, extensions=((7, 100, 300),))
    assert [extended.rate(t) for t in range(300)] == [LrSchedule(1.0, 300, 20).rate(t) for t in range(300)]
    assert [extended.rate(t) for t in range(20)] == [LrSchedule(1.0, 100, 20).rate(t) for t in range(20)]


def test_a_finished_schedule_cannot_be_extended_and_shortening_must_leave_steps():
    schedule = LrSchedule(1.0, 100, 10)
    with pytest.raises(ValueError, match="decayed to 0.*new run"):
        schedule.continued(100, 200)
    with pytest.raises(ValueError, match="leaves nothing to train"):
        schedule.continued(50, 50)
    shortened = schedule.continued(50, 80)  # shortening is the same rule: no jump, ends at 80
    assert shortened.rate(50) == schedule.rate(50) and shortened.rate(80) == 0.0
    assert schedule.continued(50, 100) is schedule


def test_schedule_round_trips_through_a_dict():
    schedule = LrSchedule(0.3, 100, 10, 0.001).continued(40, 150).continued(90, 120)
    assert LrSchedule.from_dict(schedule.to_dict()) == schedule


# ---------------------------------------------------------------------------------------------
# Optimiser references


def test_the_exclusion_rule_is_by_number_of_dimensions():
    assert is_excluded((64,)) and is_excluded(())
    assert not is_excluded((3, 3, 3, 64)) and not is_excluded((128, 10))


def _tensors(seed):
    rng = np.random.default_rng(seed)
    return {"kernel": rng.normal(size=(3, 3, 2, 4)), "dense": rng.normal(size=(5, 3)),
            "gamma": rng.normal(size=4), "bias": rng.normal(size=3)}


def test_momentum_styles_agree_at_constant_rate_and_differ_when_it_moves():
    w, d = np.ones(3), np.array([0.5, -1.0, 2.0])
    inside, outside = (w, np.zeros(3)), (w, np.zeros(3))
    for _ in range(3):
        inside = momentum_step(inside[0], d, inside[1], 0.1, 0.9, "lr_inside")
        outside = momentum_step(outside[0], d, outside[1], 0.1, 0.9, "lr_outside")
    np.testing.assert_allclose(inside[0], outside[0], rtol=1e-14)
    before_inside, before_outside = inside[0], outside[0]
    inside = momentum_step(inside[0], d, inside[1], 0.5, 0.9, "lr_inside")
    outside = momentum_step(outside[0], d, outside[1], 0.5, 0.9, "lr_outside")
    assert not np.allclose(inside[0], outside[0])
    # lr_inside: the old steps keep their rate 0.1; lr_outside re-weights them all by today's 0.5.
    np.testing.assert_allclose(inside[0] - before_inside, -(0.1 * (0.9 ** 3 + 0.9 ** 2 + 0.9) + 0.5) * d)
    np.testing.assert_allclose(outside[0] - before_outside, -0.5 * (0.9 ** 3 + 0.9 ** 2 + 0.9 + 1) * d)


def test_sgd_decays_weights_but_not_biases_and_norms():
    params, grads = _tensors(0), _tensors(1)
    new, buffers = sgd_step(params, grads, {}, lr=0.1, momentum=0.9, weight_decay=0.01)
    decayed = grads["dense"] + 0.01 * params["dense"]
    np.testing.assert_allclose(new["dense"], params["dense"] - 0.1 * decayed)
    np.testing.assert_allclose(new["gamma"], params["gamma"] - 0.1 * grads["gamma"])
    np.testing.assert_allclose(buffers["bias"], grads["bias"])


@pytest.mark.parametrize("variant", sorted(LARS_VARIANTS))
def test_lars_adapted_tensor_follows_its_source_formula(variant):
    params, grads = _tensors(2), _tensors(3)
    lr, momentum, wd, eta = 0.7, 0.9, 0.05, 0.02
    w, g = params["kernel"], grads["kernel"]
    d = g + wd * w
    if variant == "solo-learn":  # eta ||w|| / (||g|| + wd ||w||), clipped at lr
        trust = min(eta * np.linalg.norm(w) / (np.linalg.norm(g) + wd * np.linalg.norm(w) + 1e-8) / lr, 1)
    else:
        trust = eta * np.linalg.norm(w) / (np.linalg.norm(d) + 1e-8)
    expected = w - lr * trust * d  # first step from a zero buffer: both momentum styles agree
    new, _ = lars_step(params, grads, {}, lr, momentum, wd, eta, variant)
    np.testing.assert_allclose(new["kernel"], expected, rtol=1e-13)
    assert not np.isclose(trust, 1.0)  # the trust ratio really scales the step
    # Excluded tensors: plain momentum SGD, no decay, no trust ratio.
    np.testing.assert_allclose(new["gamma"], params["gamma"] - lr * grads["gamma"], rtol=1e-13)
    np.testing.assert_allclose(new["bias"], params["bias"] - lr * grads["bias"], rtol=1e-13)


@pytest.mark.parametrize("variant", sorted(LARS_VARIANTS))
def test_lars_second_step_follows_the_variants_momentum_form(variant):
    """A second step at another rate: "simclr" (classic momentum, the rate inside the buffer) and
    "byol" (the rate applied after the buffer) part here, as their sources do."""
    params, grads = _tensors(2), _tensors(3)
    momentum, wd, eta, rates = 0.9, 0.05, 0.02, (0.7, 0.3)
    style = LARS_VARIANTS[variant].momentum_style

    def adapted(w, g, lr):
        d = g + wd * w
        if variant == "solo-learn":
            trust = min(eta * np.linalg.norm(w) / (np.linalg.norm(g) + wd * np.linalg.norm(w) + 1e-8) / lr, 1)
        else:
            trust = eta * np.linalg.norm(w) / (np.linalg.norm(d) + 1e-8)
        return trust * d

    w, buffer = params["kernel"], np.zeros_like(params["kernel"])
    state, buffers = params, {}
    for lr in rates:
        d = adapted(w, grads["kernel"], lr)
        buffer = momentum * buffer + (lr * d if style == "lr_inside" else d)
        w = w - (buffer if style == "lr_inside" else lr * buffer)
        state, buffers = lars_step(state, grads, buffers, lr, momentum, wd, eta, variant)
    np.testing.assert_allclose(state["kernel"], w, rtol=1e-12)
    assert LARS_VARIANTS["simclr"].momentum_style != LARS_VARIANTS["byol"].momentum_style


def test_solo_learn_clipping_caps_the_local_rate_at_the_global_one():
    params = {"w": np.full((2, 2), 10.0)}
    grads = {"w": np.full((2, 2), 1e-3)}  # a huge trust ratio: eta * 20 / 0.002 = 200
    new, _ = lars_step(params, grads, {}, lr=0.1, momentum=0.0, weight_decay=0.0, eta=0.02,
                       variant="solo-learn")
    np.testing.assert_allclose(new["w"], params["w"] - 0.1 * grads["w"])  # trust clipped to 1
    unclipped, _ = lars_step(params, grads, {}, lr=0.1, momentum=0.0, weight_decay=0.0, eta=0.02,
                             variant="byol")
    np.testing.assert_allclose(unclipped["w"], params["w"] - 0.1 * 200 * grads["w"], rtol=1e-6)


def test_lars_trust_is_one_for_a_zero_weight():
    new, _ = lars_step({"w": np.zeros((3, 3))}, {"w": np.ones((3, 3))}, {}, lr=0.5, momentum=0.0,
                       weight_decay=0.1, eta=0.001)
    np.testing.assert_allclose(new["w"], -0.5)


def test_a_new_rate_on_resume_scales_the_future_and_keeps_the_past():
    schedule = LrSchedule(1.0, 100, 10).continued(50, 150)
    halved = schedule.scaled(60, 0.5)
    assert [halved.rate(t) for t in range(60)] == [schedule.rate(t) for t in range(60)]
    np.testing.assert_allclose([halved.rate(t) for t in range(60, 151)],
                               [0.5 * schedule.rate(t) for t in range(60, 151)], rtol=1e-15)
    np.testing.assert_allclose(halved.table(np.float64), [halved.rate(t) for t in range(151)], rtol=1e-13)
    # extending after the change keeps the halved rate continuous (no double scaling)
    extended = halved.continued(80, 300)
    assert extended.rate(80) == pytest.approx(halved.rate(80), rel=1e-15)
    assert LrSchedule.from_dict(extended.to_dict()) == extended


@pytest.mark.parametrize(("extensions", "old_rise"), [
    ([(500, 2000)], EmaRise(0.99, 1000)),  # after the learning rate's warm-up
    ([(5, 2000)], EmaRise(0.99, 1000)),  # during it (the learning rate keeps its warm-up)
    ([(500, 2000), (1500, 1800)], EmaRise(ema_momentum(0.99, 500, 1000), 2000, 500)),  # twice
])
def test_an_extended_run_continues_its_ema_rise_without_a_jump(extensions, old_rise):
    schedule = LrSchedule(1.0, 1000, 10)
    assert ema_rise(0.99, schedule) == EmaRise(0.99, 1000, 0)  # as planned
    for at_step, end_step in extensions:
        schedule = schedule.continued(at_step, end_step)
    rise = ema_rise(0.99, schedule)
    assert (rise.start_step, rise.total_steps) == extensions[-1] == (rise.start_step, schedule.end_step)
    assert rise.base == old_rise.rate(rise.start_step)  # from where the old rise was ...
    assert 0 < rise.base - old_rise.rate(rise.start_step - 1) < 1e-4  # ... one step on: no jump
    rates = rise.rate(np.arange(rise.start_step, rise.total_steps + 1))
    assert rates[0] == rise.base and rates[-1] == 1.0 and np.all(np.diff(rates) > 0)
    assert LrSchedule.from_dict(schedule.to_dict()) == schedule  # saved with the run's position


def test_the_target_ema_rises_from_its_base_to_one_along_a_half_cosine():
    from common.schedules import ema_momentum

    assert ema_momentum(0.996, 0, 1000) == pytest.approx(0.996)
    assert ema_momentum(0.996, 500, 1000) == pytest.approx(0.998)  # half-way: half the gap
    assert ema_momentum(0.996, 1000, 1000) == 1.0 and ema_momentum(0.996, 1200, 1000) == 1.0
    table = ema_momentum(0.99, np.arange(101), 100)
    assert table.shape == (101,) and np.all(np.diff(table) >= 0)
    # deepmind-research byol: 1 - (1 - base) * cosine_decay(k, K, 1) with 0.5 (1 + cos(pi k / K))
    k = 37
    assert table[k] == pytest.approx(1 - (1 - 0.99) * 0.5 * (1 + math.cos(math.pi * k / 100)))
