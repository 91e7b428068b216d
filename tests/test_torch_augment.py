"""The PyTorch chapter's two augmentation paths against the NumPy reference (common/augment).

Same parameters in, same pixels out: every op and the whole view must match ``common.augment.ops``
to within 1/255, for the per-image torchvision path (its functional ops, called with the reference's
explicit parameters) and for the batched path (``pytorch_simclr.augment_batched``). The composed
random v2 pipeline draws its own parameters, so it is checked through its statistics.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import common.augment as ref
from common.augment import (
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    RandomResizedCrop,
    Solarize,
    ViewSpec,
    preset,
    sample_view_params,
)
from common.augment.dense import BLEND_WEIGHTS, SOLARIZE_NEVER
from pytorch_simclr import augment as aug
from pytorch_simclr import augment_batched as bat
from tests.augment_images import distinct_presets, sample_images

TOL = 1 / 255  # the project's cross-framework tolerance
N, SIZE = 12, 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(N, SIZE)


def as_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float() / 255


def as_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).double().numpy()


def reference_batch(images_nhwc: np.ndarray, op, *per_image_args) -> np.ndarray:
    """Apply a reference op image by image (float64), the i-th of each argument to image i."""
    return np.stack([op(ref.to_float(img), *(a[i] for a in per_image_args))
                     for i, img in enumerate(images_nhwc)])


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


def blended(name):
    """A single colour op as the blend the batched path runs it with (the engine itself only ever
    calls blend_ with a plan's per-image weights)."""
    def op(x, f):
        return bat.blend_(x.clone(), *(torch.as_tensor(w).float() for w in BLEND_WEIGHTS[name](f.numpy())))
    return op


BATCHED_COLOUR_OPS = {**{name: blended(name) for name in ("brightness", "contrast", "saturation")},
                      "hue": bat.adjust_hue}


def all_on(spec: ViewSpec) -> ViewSpec:
    """The spec with every probabilistic op that it has made certain (p = 1), so each one fires."""
    ops = {name: dataclasses.replace(getattr(spec, name), p=1.0)
           for name in ("flip", "jitter", "grayscale", "blur", "solarize")
           if getattr(spec, name) is not None}
    return dataclasses.replace(spec, **ops)


# ---------------------------------------------------------------------------------------------
# Batched path, op by op
# ---------------------------------------------------------------------------------------------
def crop_boxes(n: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    spec = ViewSpec(crop=RandomResizedCrop(SIZE, scale=(0.08, 1.0)))
    return sample_view_params(spec, n, hw, np.random.default_rng(seed)).crop_box


@pytest.mark.parametrize("out_size", [32, 20, 45])
def test_resized_crop_and_flip_match_reference(images, out_size):
    boxes = crop_boxes(N, (SIZE, SIZE), seed=out_size)
    boxes[0] = boxes[1] = (0, 0, SIZE, SIZE)  # whole image
    boxes[2] = boxes[3] = (9, 11, 5, 7)  # small interior box: the clamp must be at the box edge
    flip = np.arange(N) % 2 == 1
    got = bat.resized_crop(as_nchw(images), torch.from_numpy(boxes), out_size, torch.from_numpy(flip))
    want = reference_batch(images, lambda img, box: ref.resized_crop(img, box, out_size), boxes)
    want[flip] = want[flip, :, ::-1]
    assert max_diff(as_nhwc(got), want) <= TOL
    if out_size == SIZE:  # identity box, identity resize; and its mirror image
        np.testing.assert_allclose(as_nhwc(got)[0], images[0] / 255, atol=1e-6)
        np.testing.assert_allclose(as_nhwc(got)[1], ref.hflip(images[1] / 255), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("brightness", 0.2, 1.8), ("contrast", 0.2, 1.8), ("saturation", 0.0, 2.0), ("hue", -0.5, 0.5)],
)
def test_colour_op_matches_reference(images, name, low, high):
    factors = np.random.default_rng(len(name)).uniform(low, high, size=N)
    got = BATCHED_COLOUR_OPS[name](as_nchw(images), torch.from_numpy(factors))
    want = reference_batch(images, getattr(ref, f"adjust_{name}"), factors)
    assert max_diff(as_nhwc(got), want) <= TOL
    assert max_diff(want, images / 255) > 0.05  # the op really changed the images


def test_grayscale_matches_reference(images):
    got = as_nhwc(bat.luma(as_nchw(images)).expand(-1, 3, -1, -1))
    assert max_diff(got, reference_batch(images, ref.to_grayscale)) <= 1e-6


@pytest.mark.parametrize("kernel_size", [3, 9])
def test_gaussian_blur_matches_reference(images, kernel_size):
    sigma = np.random.default_rng(kernel_size).uniform(0.1, 2.0, size=N)
    kernels = bat.gaussian_kernel1d(torch.from_numpy(sigma), kernel_size).numpy()
    for s, kernel in zip(sigma, kernels, strict=True):
        np.testing.assert_allclose(kernel, ref.gaussian_kernel1d(s, kernel_size), atol=1e-6)
    got = bat.gaussian_blur(as_nchw(images), torch.from_numpy(sigma), kernel_size)
    want = reference_batch(images, lambda img, s: ref.gaussian_blur(img, s, kernel_size), sigma)
    assert max_diff(as_nhwc(got), want) <= TOL
    assert max_diff(want, images / 255) > 0.1


def test_solarize_fires_on_zero_to_one_images(images):
    x = as_nchw(images)
    got = bat.solarize(x, 0.5)
    assert max_diff(as_nhwc(got), reference_batch(images, lambda img: ref.solarize(img, 0.5))) < 1e-6
    bright = x >= 0.5
    assert bright.float().mean() > 0.3  # so the check below is not vacuous
    torch.testing.assert_close(got[bright], 1 - x[bright])
    torch.testing.assert_close(got[~bright], x[~bright])


def test_one_blend_runs_a_different_colour_op_on_each_image(images):
    """blend_ with per-image weights: image i gets brightness, contrast, saturation, grayscale or
    nothing (neutral weights: bit-exact identity), in place, as the separate ops would give it."""
    x = as_nchw(images)
    f = np.random.default_rng(5).uniform(0.2, 1.8, size=N)
    kind = np.arange(N) % 5
    weights = np.ones((3, N)) * np.array([[1.0], [0.0], [0.0]])
    weights[:, kind == 0] = [f[kind == 0], 0 * f[kind == 0], 0 * f[kind == 0]]
    weights[:, kind == 1] = [f[kind == 1], 1 - f[kind == 1], 0 * f[kind == 1]]
    weights[:, kind == 2] = [f[kind == 2], 0 * f[kind == 2], 1 - f[kind == 2]]
    weights[:, kind == 3] = [[0.0], [0.0], [1.0]]
    got = x.clone()
    out = bat.blend_(got, *torch.from_numpy(weights).float())
    assert out.data_ptr() == got.data_ptr()
    ops = [lambda img, i: ref.adjust_brightness(img, f[i]), lambda img, i: ref.adjust_contrast(img, f[i]),
           lambda img, i: ref.adjust_saturation(img, f[i]), lambda img, i: ref.to_grayscale(img),
           lambda img, i: img]
    want = reference_batch(images, lambda img, i: ops[kind[i]](img, i), np.arange(N))
    assert max_diff(as_nhwc(got), want) <= TOL
    assert torch.equal(got[kind == 4], x[kind == 4])


def test_solarize_takes_one_threshold_per_image(images):
    x = as_nchw(images)
    thresholds = torch.tensor([0.5, 2.0] * (N // 2)).view(-1, 1, 1, 1)  # 2: never reached
    got = bat.solarize(x, thresholds)
    torch.testing.assert_close(got[0::2], bat.solarize(x[0::2], 0.5))
    assert torch.equal(got[1::2], x[1::2])


def test_normalize_matches_reference(images):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    got = as_nhwc(bat.normalize_(as_nchw(images), mean, std))
    want = reference_batch(images, lambda img: ref.normalize(img, mean, std))
    assert max_diff(got, want) <= 1e-5


# ---------------------------------------------------------------------------------------------
# Whole views: both paths against the reference, same parameters
# ---------------------------------------------------------------------------------------------
def torchvision_view(image_uint8: np.ndarray, params, i: int, spec: ViewSpec) -> torch.Tensor:
    """One view made of torchvision.transforms.v2.functional calls with the reference's parameters."""
    x = TF.to_dtype(TF.to_image(image_uint8), torch.float32, scale=True)
    x = TF.resized_crop(x, *(int(v) for v in params.crop_box[i]), size=[spec.crop.size] * 2,
                        antialias=False)
    if spec.flip is not None and params.flip[i]:
        x = TF.horizontal_flip(x)
    if spec.jitter is not None and params.jitter[i]:
        adjust = {0: (TF.adjust_brightness, params.brightness), 1: (TF.adjust_contrast, params.contrast),
                  2: (TF.adjust_saturation, params.saturation), 3: (TF.adjust_hue, params.hue)}
        for op in params.jitter_order[i]:
            fn, factors = adjust[int(op)]
            x = fn(x, float(factors[i]))
    if spec.grayscale is not None and params.grayscale[i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if spec.blur is not None and params.blur[i]:
        x = TF.gaussian_blur(x, [spec.blur.kernel_size] * 2, [float(params.blur_sigma[i])] * 2)
    if spec.solarize is not None and params.solarize[i]:
        x = TF.solarize(x, spec.solarize.threshold)
    if spec.normalize is not None:
        x = TF.normalize(x, list(spec.normalize.mean), list(spec.normalize.std))
    return x


VIEW_CASES = [(name, 32, view, on) for name in distinct_presets(32)
              for view in (1, 2) for on in (False, True)] + [("byol", 96, 2, True)]


@pytest.mark.parametrize(("name", "size", "view", "force_all"), VIEW_CASES)
def test_whole_view_matches_reference_on_both_paths(name, size, view, force_all):
    spec = preset(name, size).views[view - 1]
    if force_all:
        spec = all_on(spec)
    rng = np.random.default_rng(size + view)
    hw = (size + 8, size + 4)
    images = rng.integers(0, 256, size=(8, *hw, 3), dtype=np.uint8)
    params = sample_view_params(spec, len(images), hw, rng)
    want = ref.apply_view_batch(images, params, spec)

    batched = bat.apply_view(torch.from_numpy(images), params, spec)
    assert batched.dtype == torch.float32 and batched.shape == (8, 3, size, size)
    assert max_diff(as_nhwc(batched), want) <= TOL

    per_image = torch.stack([torchvision_view(img, params, i, spec) for i, img in enumerate(images)])
    assert max_diff(as_nhwc(per_image), want) <= TOL


def test_nchw_input_gives_the_nhwc_result(images):
    spec = all_on(preset("simclr", 32).view1)
    params = sample_view_params(spec, N, (SIZE, SIZE), np.random.default_rng(0))
    nhwc = torch.from_numpy(images)
    torch.testing.assert_close(bat.apply_view(nhwc.permute(0, 3, 1, 2), params, spec),
                               bat.apply_view(nhwc, params, spec))
    narrow = torch.zeros((2, 3, 8, 3), dtype=torch.uint8)  # NCHW 3 pixels wide, or NHWC 3 rows
    with pytest.raises(ValueError, match=r"reads as NHWC and NCHW alike: pass it NHWC"):
        bat.to_float_nchw(narrow)


# ---------------------------------------------------------------------------------------------
# BatchAugmenter
# ---------------------------------------------------------------------------------------------
def test_batch_augmenter_makes_both_views_of_the_given_parameters(images):
    pair = preset("byol", 32)
    rng = np.random.default_rng(3)
    params = [sample_view_params(spec, N, (SIZE, SIZE), rng) for spec in pair.views]
    view1, view2 = bat.BatchAugmenter(pair, "cpu", channels_last=True)(torch.from_numpy(images), *params)
    assert view1.shape == view2.shape == (N, 3, SIZE, SIZE) and view1.dtype == torch.float32
    assert view1.is_contiguous(memory_format=torch.channels_last)
    for view, spec, p in zip((view1, view2), pair.views, params, strict=True):
        torch.testing.assert_close(view, bat.apply_view(torch.from_numpy(images), p, spec))
    assert not torch.allclose(view1, view2)


def test_the_plan_names_each_images_work():
    spec = all_on(preset("byol", 32).view2)
    params = sample_view_params(spec, N, (SIZE, SIZE), np.random.default_rng(4))
    plan = bat.ViewPlan.of(params, spec)
    assert plan.blend_weights.shape == (5, 3, N)
    np.testing.assert_array_equal(plan.blend_weights[4][2], params.grayscale.astype(float))
    assert sum(len(i) for i in plan.hue_images) == int(np.sum(params.hue != 0))
    np.testing.assert_array_equal(plan.blur_images, np.flatnonzero(params.blur))
    np.testing.assert_array_equal(plan.solarize_threshold, np.where(params.solarize, 0.5, SOLARIZE_NEVER))
    moved = plan.to(torch.device("cpu"))
    assert moved.blend_weights.dtype == torch.float32 and len(moved.hue_deltas) == 4
    np.testing.assert_array_equal(moved.crop_box.numpy(), params.crop_box)


def test_batch_augmenter_rejects_float_images():
    pair = preset("simclr", 32)
    params = sample_view_params(pair.view1, 2, (32, 32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        bat.BatchAugmenter(pair, "cpu")(torch.rand(2, 32, 32, 3), params, params)


# ---------------------------------------------------------------------------------------------
# Per-image path: the composed random v2 pipeline, checked through its statistics
# ---------------------------------------------------------------------------------------------
WHOLE_IMAGE = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the crop is the image


def rate(transform, image, fired, draws: int = 400) -> float:
    """Fraction of ``draws`` seeded calls whose output ``fired`` says the op fired on.

    One intra-op thread, as in a DataLoader worker (tiny tensors; a second thread only waits).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        return float(np.mean([fired(transform(image)) for _ in range(draws)]))
    finally:
        torch.set_num_threads(threads)


def test_v2_pipeline_output_is_a_normalised_float_view():
    spec = preset("simclr", 32).view1
    transform = aug.build_view_transform(spec)
    image = np.random.default_rng(0).integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
    out = transform(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 32, 32)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (spec.normalize.mean, spec.normalize.std))
    unnormalised = out * std + mean
    assert unnormalised.min() >= -1e-6 and unnormalised.max() <= 1 + 1e-6
    torch.manual_seed(1)
    from_numpy = transform(image)
    torch.manual_seed(1)
    from_tensor = transform(torch.from_numpy(image).permute(2, 0, 1))  # uint8 CHW tensor input
    torch.testing.assert_close(from_numpy, from_tensor)


def test_v2_solarize_fires_at_its_rate():
    transform = aug.build_view_transform(ViewSpec(crop=WHOLE_IMAGE, solarize=Solarize(p=0.3)))
    image = np.full((8, 8, 3), 204, dtype=np.uint8)  # 0.8 >= threshold 0.5
    assert rate(transform, image, lambda out: bool(torch.allclose(out, torch.tensor(0.2)))) == \
        pytest.approx(0.3, abs=0.07)


def test_v2_flip_grayscale_and_jitter_fire_at_their_rates():
    image = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    as_float = torch.from_numpy(image).permute(2, 0, 1) / 255
    flip = aug.build_view_transform(ViewSpec(crop=WHOLE_IMAGE, flip=HorizontalFlip(0.5)))
    assert rate(flip, image, lambda out: bool(torch.allclose(out, as_float.flip(-1)))) == \
        pytest.approx(0.5, abs=0.08)
    grey = aug.build_view_transform(ViewSpec(crop=WHOLE_IMAGE, grayscale=Grayscale(0.2)))
    assert rate(grey, image, lambda out: bool(torch.allclose(out[0], out[1]))) == \
        pytest.approx(0.2, abs=0.06)
    jitter = aug.build_view_transform(
        ViewSpec(crop=WHOLE_IMAGE, jitter=ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)))
    assert rate(jitter, image, lambda out: not torch.allclose(out, as_float, atol=1e-3)) == \
        pytest.approx(0.8, abs=0.07)
    blur = aug.build_view_transform(
        ViewSpec(crop=WHOLE_IMAGE, blur=GaussianBlur(0.5, sigma=(1.0, 2.0), kernel_size=3)))
    assert rate(blur, image, lambda out: not torch.allclose(out, as_float, atol=1e-3)) == \
        pytest.approx(0.5, abs=0.08)


def test_two_view_dataset_yields_two_different_views():
    images = np.random.default_rng(2).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    dataset = aug.TwoViewDataset(images, preset("mocov2", 32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    view1, view2 = next(iter(loader))
    assert len(dataset) == 5
    assert view1.shape == view2.shape == (5, 3, 32, 32) and view1.dtype == torch.float32
    assert not torch.allclose(view1, view2)


def test_two_view_dataset_rejects_nchw_or_float_arrays():
    with pytest.raises(ValueError, match="uint8"):
        aug.TwoViewDataset(np.zeros((2, 3, 32, 32), np.uint8), preset("simclr", 32))
    with pytest.raises(ValueError, match="uint8"):
        aug.TwoViewDataset(np.zeros((2, 32, 32, 3), np.float32), preset("simclr", 32))


def test_each_process_of_the_per_image_path_draws_its_own_views():
    """torchvision draws the views from torch's random state: two ranks' loaders seeded alike would
    give the k-th image of each shard the same crop, flip and jitter (the seed train.py gives each
    rank is (seed + epoch) x world size + rank)."""
    from pytorch_simclr.data import per_image_loader

    images = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 8, axis=0)
    pair = preset("simclr", 32)

    def views(seed: int) -> torch.Tensor:
        [(view1, _)] = list(per_image_loader(images, pair, [np.arange(8)], workers=0, seed=seed))
        return view1

    rank0, rank1 = views(2 * 0 + 0), views(2 * 0 + 1)
    assert torch.equal(rank0, views(0))  # a process's draws are reproducible ...
    assert not torch.equal(rank0, rank1)  # ... and the other rank's are its own


LOADER_UNDER_SIGNALS = """
import multiprocessing, os, signal, time
import numpy as np
from common.augment import preset
from common.interrupts import InterruptRequest
from pytorch_simclr.data import per_image_loader

images = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
batches = [np.arange(4 * i, 4 * i + 4) for i in range(16)]
with InterruptRequest() as request:  # what the session has installed when an epoch starts
    loader = iter(per_image_loader(images, preset("simclr", 16), batches, workers=1, seed=0))
    received = [next(loader)]
    [worker] = multiprocessing.active_children()
    for signum in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
        os.kill(worker.pid, signum)
        time.sleep(0.2)  # one at a time: a second pending SIGINT would merge with the first
    received += list(loader)
print(len(received), request.signal)
"""


def test_loader_workers_leave_ctrl_c_and_sigterm_to_the_training_process():
    """A terminal's Ctrl-C reaches the workers too. Forked inside the session, they would inherit
    its deferring handler: print the "stopping" line again, and die of a second Ctrl-C (the step
    then fails with "DataLoader worker exited unexpectedly" instead of stopping cleanly). In a
    process of its own: forking a pytest worker that has loaded JAX's threads could deadlock."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", LOADER_UNDER_SIGNALS], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["16", "None"]  # every batch; the training process got no signal
    assert "stopping after the current step" not in done.stderr


@pytest.mark.parametrize("grayscale", [True, False])  # without it, saturation and hue show too
@pytest.mark.parametrize(("size", "name"), [(size, name) for size in (32, 96)  # blur from 96 px (kernel 9)
                                            for name in distinct_presets(size)])
def test_the_shipped_per_image_pipeline_makes_the_reference_view_of_what_it_drew(name, grayscale, size):
    """``build_view_transform`` itself (not a pipeline written here): every op made certain, the
    parameters torchvision draws recorded, and the reference view of those parameters. A step in
    the wrong order (grayscale before the jitter, blurring after solarizing, normalising before
    solarizing) or a blur of another kernel fails it."""
    from torchvision.transforms import v2

    spec = all_on(preset(name, size).view2)
    assert (spec.blur is not None) == (size == 96)
    spec = spec if grayscale else dataclasses.replace(spec, grayscale=None)
    transform = aug.build_view_transform(spec)
    drawn = {}

    def record(step, key):
        draw = step.make_params
        step.make_params = lambda *args: drawn.setdefault(key, draw(*args))

    for step in transform.transforms:
        inner = step.transforms[0] if isinstance(step, v2.RandomApply) else step
        for kind, key in ((v2.RandomResizedCrop, "crop"), (v2.ColorJitter, "jitter"),
                          (v2.GaussianBlur, "blur")):
            if isinstance(inner, kind):
                record(inner, key)
    image = np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    torch.manual_seed(0)
    got = transform(image).permute(1, 2, 0).numpy()
    crop, jitter = drawn["crop"], drawn["jitter"]
    assert spec.jitter.random_order  # one ColorJitter: its order and factors are the ones drawn

    def factor(key, neutral):
        value = jitter[f"{key}_factor"]
        return np.array([neutral if value is None else float(value)])

    params = dataclasses.replace(
        sample_view_params(spec, 1, image.shape[:2], np.random.default_rng(0)),
        crop_box=np.array([[crop["top"], crop["left"], crop["height"], crop["width"]]]),
        flip=np.array([True]), jitter=np.array([True]), jitter_order=np.array([jitter["fn_idx"].numpy()]),
        brightness=factor("brightness", 1.0), contrast=factor("contrast", 1.0),
        saturation=factor("saturation", 1.0), hue=factor("hue", 0.0),
        grayscale=np.array([grayscale]), blur=np.array([spec.blur is not None]),
        blur_sigma=np.array([float(drawn["blur"]["sigma"][0]) if spec.blur is not None else 0.0]),
        solarize=np.array([spec.solarize is not None]))
    assert max_diff(got, ref.apply_view(image, params, 0, spec)) <= TOL
