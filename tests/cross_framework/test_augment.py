"""Augmentations: every op of every framework back-end with fixed parameters equals the NumPy
reference (common.augment.ops) within 1/255; the samplers of random parameters (NumPy, Keras'
in-graph ``sample_params`` on each backend, torchvision v2's per-image pipeline) follow the spec's
distributions; the three chapters' views of the same step of the shared stream are the same images.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from common.augment import sample_view_params
from common.augment.sampler import CROP_ATTEMPTS
from tests.cross_framework import cases
from tests.cross_framework.compare import max_abs
from tests.draws import jitter_order_p_value, uniform_p_value

pytestmark = [pytest.mark.xdist_group("cross-framework"), pytest.mark.slow]

PIXEL = 1 / 255
Z = 4.0  # binomial bound: |k - n p| <= 4 sd (a correct sampler fails it with probability ~6e-5)
CHI2_LEVEL = 1e-4  # a correct sampler fails a chi-square (or KS) test with this probability


# --------------------------------------------------------------------------------------------------
# Fixed parameters: each op against the reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", cases.IMPLEMENTATIONS)
def test_each_op_equals_the_reference(workspace, record, implementation):
    """Each op's output on its own scale: the normalise op's on the normalised scale, where 1/255 is
    a quarter of a uint8 step (std ~0.25), the others' on 0..1."""
    outputs = workspace.outputs(implementation, "augment")
    failures = []
    for name in cases.AUG_OPS:
        want = cases.aug_reference(name)
        got = np.asarray(outputs[name])
        assert got.shape == want.shape, name
        error = max_abs(got, want)
        record(f"op: {name}", implementation, error, error, PIXEL)
        if not error <= PIXEL:
            failures.append(f"{name}: {error * 255:.2f}/255")
    assert not failures, failures


@pytest.mark.parametrize("implementation", cases.IMPLEMENTATIONS)
def test_stream_views_are_the_reference_images(workspace, record, implementation):
    """Each chapter's own path from the shared stream to its views (PyTorch's BatchAugmenter,
    TensorFlow's distribute_stream + apply_view, Keras' StreamDataset + apply_view)."""
    outputs = workspace.outputs(implementation, "augment")
    want = cases.stream_reference()
    errors = {key: max_abs(outputs[key], view) for key, view in want.items()}
    error = max(errors.values())
    record(f"shared stream: {cases.STREAM_STEPS} steps x 2 views vs the reference", implementation, error,
           error, PIXEL, note=f"worst: {max(errors, key=errors.get)}")
    assert error <= PIXEL, errors


@pytest.mark.subprocess
def test_stream_views_are_the_same_in_every_chapter(workspace, record):
    views = {impl: workspace.outputs(impl, "augment") for impl in cases.IMPLEMENTATIONS}
    error, pair = 0.0, ""
    for key in cases.stream_reference():
        for a, b in itertools.combinations(cases.IMPLEMENTATIONS, 2):
            e = max_abs(views[a][key], views[b][key])
            if e >= error:
                error, pair = e, f"{key}: {a} vs {b}"
    record("shared stream: any two implementations", "between implementations", error, error, PIXEL,
           note=f"worst: {pair}")
    assert error <= PIXEL, pair


# --------------------------------------------------------------------------------------------------
# Random parameters: distributions against the spec
# --------------------------------------------------------------------------------------------------
@functools.cache
def crop_pmf(hw: tuple[int, int], scale, ratio, grid: int = 1500) -> dict[tuple[int, int], float]:
    """The exact distribution of the (height, width) torchvision's algorithm (the spec) returns:
    each attempt's (area, log-ratio) uniform on a fine midpoint grid, rounded half to even; the
    first accepted attempt of 10, else the central fallback."""
    height, width = hw
    u = (np.arange(grid) + 0.5) / grid
    area = height * width * (scale[0] + u * (scale[1] - scale[0]))[:, None]
    aspect = np.exp(math.log(ratio[0]) + u * (math.log(ratio[1]) - math.log(ratio[0])))[None, :]
    w, h = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    counts = np.bincount((h[fits] * (width + 1) + w[fits]).astype(np.int64))  # one bin per (h, w)
    keys = np.flatnonzero(counts)
    reject = 1.0 - fits.mean()
    tries = sum(reject**k for k in range(CROP_ATTEMPTS))
    pmf = {divmod(int(key), width + 1): counts[key] / grid**2 * tries for key in keys}
    fallback = fallback_size(hw, ratio)
    pmf[fallback] = pmf.get(fallback, 0.0) + reject**CROP_ATTEMPTS
    return pmf


def fallback_size(hw: tuple[int, int], ratio) -> tuple[int, int]:
    """(h, w) of the central fallback: the whole image, its aspect ratio clamped to the range."""
    height, width = hw
    in_ratio = width / height
    return ((round(width / min(ratio)), width) if in_ratio < min(ratio)
            else (height, round(height * max(ratio))) if in_ratio > max(ratio) else (height, width))


def chi_square(values: np.ndarray, atoms: np.ndarray, probabilities: np.ndarray, bins: int = 10):
    """``(X^2, critical value)`` of ``values`` against the discrete distribution (atoms,
    probabilities), in bins of about equal expected mass (bins expecting < 5 merged)."""
    order = np.argsort(atoms)
    atoms, probabilities = atoms[order], probabilities[order]
    cumulative = np.cumsum(probabilities)
    edges = np.unique(atoms[np.searchsorted(cumulative, np.linspace(0, 1, bins + 1)[1:-1])])
    expected = np.array([p.sum() for p in np.split(probabilities, np.searchsorted(atoms, edges, "right"))])
    observed = np.bincount(np.searchsorted(edges, values, "left"), minlength=len(expected))
    expected = expected * len(values)
    keep = expected >= 5
    statistic = float(np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep]))
    statistic += float((observed[~keep].sum() - expected[~keep].sum()) ** 2 / max(expected[~keep].sum(), 1e-9)
                       if (~keep).any() else 0.0)
    return statistic, float(stats.chi2.ppf(1 - CHI2_LEVEL, keep.sum() - 1 + int((~keep).any())))


def crop_statistics(boxes: np.ndarray, hw: tuple[int, int]) -> list[tuple[str, float, float]]:
    """``(name, X^2, critical)`` of the area fraction and the log aspect ratio of the boxes."""
    pmf = crop_pmf(hw, cases.SAMPLE_SPEC.crop.scale, cases.SAMPLE_SPEC.crop.ratio)
    hws = np.array(list(pmf), np.float64)
    probabilities = np.array(list(pmf.values()))
    height, width = boxes[:, 2], boxes[:, 3]
    assert np.all(boxes[:, 0] + height <= hw[0]) and np.all(boxes[:, 1] + width <= hw[1])
    return [("area", *chi_square(height * width / (hw[0] * hw[1]), hws[:, 0] * hws[:, 1] / (hw[0] * hw[1]),
                                 probabilities)),
            ("log aspect", *chi_square(np.log(width / height), np.log(hws[:, 1] / hws[:, 0]), probabilities))]


POSITION_BINS = 10


def position_statistics(boxes: np.ndarray, hw: tuple[int, int]) -> list[tuple[str, float, float]]:
    """``(name, X^2, critical)`` of the crop's position given its size: the spec (torchvision's
    ``RandomResizedCrop``) draws top ~ U{0..H-h} and left ~ U{0..W-w} once an attempt fits.

    Per axis, over the draws with room (H - h or W - w) > 0, the fraction top / room falls in one
    of 10 equal bins of [0, 1] (bin ``10 top // room``, 1 in the last); each draw's expected bin
    probabilities are those of U{0..room} for its own room, summed over the draws. Boxes of the
    central fallback's size are left out: the spec centres the fallback, and a box of that size
    cannot tell whether it was one. The draws' rooms differ, so the counts vary a little less than
    a multinomial's (E X^2 <= bins - 1): the level is, if anything, below ``CHI2_LEVEL``."""
    sizes = boxes[:, 2:].astype(np.int64)
    drawn = np.any(sizes != fallback_size(hw, cases.SAMPLE_SPEC.crop.ratio), axis=1)
    out = []
    for axis, name in enumerate(("top", "left")):
        room = hw[axis] - sizes[drawn, axis]
        position = boxes[drawn, axis].astype(np.int64)[room > 0]
        room = room[room > 0]
        assert np.all((position >= 0) & (position <= room)), f"{name} outside the image"
        observed = np.bincount(np.minimum(POSITION_BINS * position // room, POSITION_BINS - 1),
                               minlength=POSITION_BINS)
        expected = np.zeros(POSITION_BINS)
        for r, count in zip(*np.unique(room, return_counts=True), strict=True):
            positions = np.arange(r + 1)
            expected += count * np.bincount(np.minimum(POSITION_BINS * positions // r, POSITION_BINS - 1),
                                            minlength=POSITION_BINS) / (r + 1)
        assert np.all(expected >= 5), expected
        statistic = float(np.sum((observed - expected) ** 2 / expected))
        critical = float(stats.chi2.ppf(1 - CHI2_LEVEL, POSITION_BINS - 1))
        out.append((f"{name} given its size", statistic, critical))
    return out


FREQUENCY_OPS = ("flip", "jitter", "grayscale", "blur", "solarize")
FACTORS = ("brightness", "contrast", "saturation", "hue")


def spec_probability(op: str) -> float:
    return getattr(cases.SAMPLE_SPEC, op).p


def uniform_ranges() -> dict[str, tuple[float, float]]:
    """The spec's range of every drawn value: jitter factors U[max(0, 1 - s), 1 + s], hue U[-h, h],
    blur sigma U(sigma range)."""
    jitter, blur = cases.SAMPLE_SPEC.jitter, cases.SAMPLE_SPEC.blur
    ranges = {name: (max(0.0, 1 - getattr(jitter, name)), 1 + getattr(jitter, name)) for name in FACTORS[:3]}
    return {**ranges, "hue": (-jitter.hue, jitter.hue), "blur_sigma": blur.sigma}


def sampled(workspace, implementation: str) -> tuple[dict, dict, dict]:
    """``({"HxW": boxes (N, 4)}, {op: fraction of draws it fired}, {value: its draws})`` of one
    sampler; the draws of the jitter factors and order where jitter fired, of sigma where blur did."""
    n = cases.SAMPLE_DRAWS
    if implementation == "numpy":
        boxes = {}
        for index, hw in enumerate(cases.SAMPLE_SIZES):
            params = sample_view_params(cases.SAMPLE_SPEC, n, hw, np.random.default_rng(index))
            boxes[f"{hw[0]}x{hw[1]}"] = params.crop_box.astype(np.float64)
            if index == 0:
                first = params
        fired = {op: float(np.mean(getattr(first, op))) for op in FREQUENCY_OPS}
        draws = {name: getattr(first, name)[first.jitter] for name in FACTORS}
        draws["order"] = first.jitter_order[first.jitter]
        draws["blur_sigma"] = first.blur_sigma[first.blur]
        return boxes, fired, draws
    if implementation == "pytorch (v2 per-image)":
        out = workspace.outputs("pytorch", "sampled")
        boxes = {k[len("boxes "):]: v for k, v in out.items() if k.startswith("boxes")}
        return boxes, out["fired"], out["draws"]
    from keras_byol.augment import PARAM_COLUMNS  # column names only (keras is loaded here anyway)

    out = workspace.outputs(implementation, "sampled")
    first = np.asarray(out[f"{cases.SAMPLE_SIZES[0][0]}x{cases.SAMPLE_SIZES[0][1]}"], np.float64)

    def column(name):
        return first[:, PARAM_COLUMNS.index(name)]

    jittered, blurred = column("jitter") > 0, column("blur") > 0
    draws = {name: column(name)[jittered] for name in FACTORS}
    draws["order"] = np.stack([column(f"order{i}") for i in range(4)], axis=1)[jittered].astype(np.int64)
    draws["blur_sigma"] = column("blur_sigma")[blurred]
    return ({k: np.asarray(v, np.float64)[:, :4] for k, v in out.items()},
            {op: float(np.mean(column(op) > 0)) for op in FREQUENCY_OPS}, draws)


def draw_statistics(draws: dict) -> dict[str, float]:
    """p-values: Kolmogorov-Smirnov of each drawn value against its uniform range, chi-square of the
    jitter orders against the uniform distribution on the 24 permutations of the four adjustments."""
    p_values = {name: uniform_p_value(draws[name], lo, hi) for name, (lo, hi) in uniform_ranges().items()}
    p_values["jitter order"] = jitter_order_p_value(draws["order"])
    return p_values


SAMPLERS = ["numpy", "pytorch (v2 per-image)", "keras-tensorflow", "keras-jax", "keras-torch"]


def record_chi_squares(record, implementation: str, boxes: dict, statistics) -> list[str]:
    """Record every ``(name, X^2, critical)`` that ``statistics(boxes, hw)`` gives for each sample
    image size; the failures."""
    failures = []
    for hw in cases.SAMPLE_SIZES:
        for name, statistic, critical in statistics(boxes[f"{hw[0]}x{hw[1]}"], hw):
            record(f"sampled crop {name}, {hw[0]}x{hw[1]} image: X^2 / critical", implementation,
                   text=f"{statistic:.1f} / {critical:.1f}", ok=statistic <= critical,
                   tolerance_text=f"level {CHI2_LEVEL:g}")
            if not statistic <= critical:
                failures.append(f"{name} {hw}: X^2 {statistic:.1f} > {critical:.1f}")
    return failures


@pytest.mark.parametrize("implementation", SAMPLERS)
def test_sampled_parameters_follow_the_spec(workspace, record, implementation):
    """Crop area fraction and log aspect ratio: chi-square against the spec's exact distribution;
    each random op's application frequency within 4 binomial standard deviations of its p; the jitter
    factors, hue and blur sigma uniform on the spec's ranges, the jitter order uniform on the 24
    permutations (a correct sampler fails each with probability 1e-4)."""
    boxes, fired, draws = sampled(workspace, implementation)
    failures = record_chi_squares(record, implementation, boxes, crop_statistics)
    n = cases.SAMPLE_DRAWS
    worst_z, worst_op = 0.0, ""
    for op in FREQUENCY_OPS:
        p = spec_probability(op)
        sd = math.sqrt(p * (1 - p) / n)
        z = abs(fired[op] - p) / sd if sd > 0 else (0.0 if fired[op] == p else math.inf)
        if z >= worst_z:
            worst_z, worst_op = z, op
    record("application frequencies (flip, jitter, grayscale, blur, solarize): max |z|", implementation,
           text=f"{worst_z:.2f} ({worst_op})", ok=worst_z <= Z, tolerance_text=f"{Z:g} sd")
    p_values = draw_statistics(draws)
    lowest = min(p_values, key=p_values.get)
    record("jitter factors, hue, blur sigma (KS), jitter order (X^2): min p-value", implementation,
           text=f"{p_values[lowest]:.2f} ({lowest})", ok=p_values[lowest] >= CHI2_LEVEL,
           tolerance_text=f"p >= {CHI2_LEVEL:g}")
    if p_values[lowest] < CHI2_LEVEL:
        failures.append(f"{lowest}: p = {p_values[lowest]:.1e}")
    assert worst_z <= Z and not failures, (fired, failures)


@pytest.mark.parametrize("implementation", SAMPLERS)
def test_sampled_crop_positions_are_uniform(workspace, record, implementation):
    """Given the crop's size, its top uniform on {0..H-h} and its left on {0..W-w}, as the spec
    (torchvision's ``RandomResizedCrop``) draws them: chi-square of the binned fraction top / (H - h)
    (``position_statistics``), on a square and on a wide image. The test above sees only the
    sizes: a sampler that anchors every crop in the corner or centres it passes it."""
    failures = record_chi_squares(record, implementation, sampled(workspace, implementation)[0],
                                  position_statistics)
    assert not failures, failures


POSITION_BUGS = ("every crop in the top-left corner", "every crop centred",
                 "top from U{0..H-h-1} (an exclusive upper bound)")


def _buggy_positions(boxes: np.ndarray, hw: tuple[int, int], bug: str, rng) -> np.ndarray:
    """The NumPy sampler's boxes with their positions redrawn wrongly (sizes kept)."""
    boxes = boxes.copy()
    room = np.array(hw) - boxes[:, 2:]
    if bug == POSITION_BUGS[0]:
        boxes[:, :2] = 0
    elif bug == POSITION_BUGS[1]:
        boxes[:, :2] = room // 2
    else:
        boxes[:, 0] = np.floor(rng.uniform(0, 1, len(boxes)) * np.maximum(room[:, 0], 1))
    return boxes


@pytest.mark.parametrize("bug", POSITION_BUGS)
def test_the_position_test_rejects_a_wrong_sampler(record, bug):
    """The NumPy sampler's boxes, positions redrawn with a classic mistake: the largest X^2 over
    both images and axes against its critical value. (An exclusive upper bound never draws
    top = H - h, the only position in the last bin wherever the room is under 10, the median room
    here: that bin keeps a fifth of its draws.)"""
    boxes = sampled(None, "numpy")[0]
    rng = np.random.default_rng(0)
    ratio = max(statistic / critical for hw in cases.SAMPLE_SIZES
                for _, statistic, critical in position_statistics(
                    _buggy_positions(boxes[f"{hw[0]}x{hw[1]}"], hw, bug, rng), hw))
    verdict = "rejected" if ratio > 1 else "NOT rejected"
    record(f"negative control: crop {bug}", "numpy", text=f"{verdict}, X^2 = {ratio:.1f} x critical",
           ok=ratio > 1, tolerance_text="must be rejected")
    assert ratio > 1, ratio


BUGS = ("aspect ratio uniform, not log-uniform", "area fraction from (0.2, 1), not (0.08, 1)")


def _buggy_boxes(hw, n, bug: str, rng) -> np.ndarray:
    """torchvision's algorithm (on a square image, where the fallback is the whole image) with a
    classic mistake, to show that the test above can fail: the aspect ratio drawn uniformly, or
    the scale range of another recipe (MoCo v2's ImageNet crop). (Sides truncated instead of
    rounded, a half-pixel shift, is below what 4000 draws resolve: X^2 about half the critical
    value.)"""
    height, width = hw
    scale, ratio = cases.SAMPLE_SPEC.crop.scale, cases.SAMPLE_SPEC.crop.ratio
    if bug == BUGS[1]:
        scale = (0.2, 1.0)
    area = height * width * rng.uniform(*scale, (n, CROP_ATTEMPTS))
    if bug == BUGS[0]:
        aspect = rng.uniform(*ratio, (n, CROP_ATTEMPTS))
    else:
        aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, CROP_ATTEMPTS)))
    w, h = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    h, w = np.where(fits.any(1), h[rows, first], height), np.where(fits.any(1), w[rows, first], width)
    return np.stack([np.zeros(n), np.zeros(n), h, w], axis=1)


@pytest.mark.parametrize("bug", BUGS)
def test_the_distribution_test_rejects_a_wrong_sampler(record, bug):
    hw = cases.SAMPLE_SIZES[0]
    assert hw[0] == hw[1]
    results = crop_statistics(_buggy_boxes(hw, cases.SAMPLE_DRAWS, bug, np.random.default_rng(0)), hw)
    ratio = max(statistic / critical for _, statistic, critical in results)
    verdict = "rejected" if ratio > 1 else "NOT rejected"
    record(f"negative control: crop {bug}", "numpy", text=f"{verdict}, X^2 = {ratio:.1f} x critical",
           ok=ratio > 1, tolerance_text="must be rejected")
    assert ratio > 1, results


DRAW_BUGS = {"jitter order always brightness, contrast, saturation, hue": "order",
             "hue drawn from [-0.5 h, 0.5 h]": "hue",
             "blur sigma drawn from (0.1, 1.0)": "blur_sigma"}


@pytest.mark.parametrize("bug", DRAW_BUGS)
def test_the_draw_tests_reject_a_wrong_sampler(record, bug):
    """The NumPy sampler's draws with one of them replaced by a wrong one."""
    draws = sampled(None, "numpy")[2]
    rng = np.random.default_rng(0)
    name = DRAW_BUGS[bug]
    size = len(draws[name])
    if name == "order":
        draws[name] = np.tile(np.arange(4), (size, 1))
    elif name == "hue":
        hue = cases.SAMPLE_SPEC.jitter.hue
        draws[name] = rng.uniform(-0.5 * hue, 0.5 * hue, size)
    else:
        draws[name] = rng.uniform(0.1, 1.0, size)
    p_value = draw_statistics(draws)["jitter order" if name == "order" else name]
    verdict = "rejected" if p_value < CHI2_LEVEL else "NOT rejected"
    record(f"negative control: {bug}", "numpy", text=f"{verdict}, p = {p_value:.0e}", ok=p_value < CHI2_LEVEL,
           tolerance_text="must be rejected")
    assert p_value < CHI2_LEVEL
