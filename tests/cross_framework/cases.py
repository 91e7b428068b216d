"""The inputs of every cross-framework check and their references: NumPy only, no framework.

Every process (the pytest process and the Keras subprocesses) builds the same inputs from the same
seeds here, so nothing but the outputs has to travel between processes. The references are the
``common/`` NumPy definitions (losses, augmentation ops, optimisers, schedules, the sampler's
spec); encoders and the whole step have no NumPy version, and PyTorch is their reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import losses as reference_losses
from common.arch import ARCHS, feature_dim, resnet_spec, tensor_shapes
from common.augment import (
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    Normalize,
    RandomResizedCrop,
    Solarize,
    ViewSpec,
    apply_view_batch,
    preset,
    sample_view_params,
)
from common.optim import adamw_step, lars_step, sgd_step
from common.schedules import LrSchedule
from common.stream import DataStream
from common.weights import load_encoder, save_encoder

IMPLEMENTATIONS = ("pytorch", "tensorflow", "keras-tensorflow", "keras-jax", "keras-torch")
KERAS_SUBPROCESS_BACKENDS = ("jax", "torch")


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossCase:
    """One loss evaluation: ``loss`` is "nt_xent", "info_nce" or "byol"; ``arrays`` its tensor
    inputs in the reference's order; ``stopped`` the inputs whose gradient must be zero (the queue,
    BYOL's targets)."""

    name: str
    loss: str
    arrays: tuple[np.ndarray, ...]
    temperature: float | None = None

    @property
    def stopped(self) -> tuple[int, ...]:
        return {"nt_xent": (), "info_nce": (2,), "byol": (2, 3)}[self.loss]

    def astype(self, dtype) -> LossCase:
        return dataclasses.replace(self, arrays=tuple(a.astype(dtype) for a in self.arrays))

    def reference(self) -> tuple[float, list[np.ndarray]]:
        """Value and the gradient with respect to every input (zeros for the stopped ones), float64
        on the (possibly float32-rounded) inputs; computed once per case and dtype (read-only)."""
        key = (self.name, self.arrays[0].dtype.name)
        if key not in _LOSS_REFERENCES:
            _LOSS_REFERENCES[key] = self._reference()
        return _LOSS_REFERENCES[key]

    def _reference(self) -> tuple[float, list[np.ndarray]]:
        arrays = [a.astype(np.float64) for a in self.arrays]
        if self.loss == "nt_xent":
            value, grads = reference_losses.nt_xent(*arrays, self.temperature)
        elif self.loss == "info_nce":
            value, grads = reference_losses.info_nce(*arrays, self.temperature)
        else:
            value, grads = reference_losses.byol(*arrays)
        grads = list(grads) + [np.zeros_like(arrays[i]) for i in self.stopped]
        return value, grads


_LOSS_REFERENCES: dict[tuple[str, str], tuple[float, list[np.ndarray]]] = {}

GRID_LEVELS = {"N": (1, 2, 256), "D": (8, 256), "T": (0.01, 1.0), "K": (0, 4096)}
"""The issue's axes. NT-Xent with N = 1 and InfoNCE with K = 0 are degenerate: the positive is the
only candidate, so the loss and its gradient are exactly 0. Those cases still catch an anchor's
similarity to itself left unmasked, or an empty queue that breaks a shape, but they check no
arithmetic; so the grids below are pairwise-covering designs over the other levels (every pair of
levels of any two axes occurs in a case that is not degenerate, checked by test_losses.py), and the
degenerate cases come on top."""
NT_XENT_GRID = [(2, 8, 1.0), (2, 256, 0.01), (256, 8, 0.01), (256, 256, 1.0),  # N, D, T
                (1, 8, 0.01), (1, 256, 1.0)]  # degenerate: N = 1
INFO_NCE_GRID = [(1, 8, 0.01, 4096), (1, 256, 1.0, 4096), (2, 8, 1.0, 4096), (2, 256, 0.01, 4096),
                 (256, 8, 0.01, 4096), (256, 256, 1.0, 4096),  # N, D, T, K
                 (1, 8, 1.0, 0), (2, 256, 0.01, 0), (256, 8, 1.0, 0)]  # degenerate: K = 0
BYOL_GRID = [(1, 8), (1, 256), (2, 8), (2, 256), (256, 8), (256, 256)]
EDGES = ("identical", "norms", "zero")
EDGE_SHAPE = (4, 8)  # N, D of the edge cases (N = 1 and 2 are in the grid)
EDGE_QUEUE, EDGE_TEMPERATURE = 16, 0.1


def _edge(kind: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """``identical``: every input the same embeddings; ``norms``: row norms from 1e-6 to 1e6;
    ``zero``: one all-zero row in each input (in a different row each)."""
    if kind == "identical":
        return [arrays[0].copy() for _ in arrays]
    if kind == "norms":
        return [a * np.logspace(-6, 6, len(a))[::(-1) ** i, None] for i, a in enumerate(arrays)]
    out = [a.copy() for a in arrays]
    for i, a in enumerate(out):
        a[i % len(a)] = 0.0
    return out


def loss_cases() -> list[LossCase]:
    """The grid and the edge cases of every loss, float64 (``astype`` for float32)."""
    rng = np.random.default_rng(20240612)

    def normal(*shape):
        return rng.standard_normal(shape) * rng.uniform(0.5, 3.0)

    cases = []
    for n, d, t in NT_XENT_GRID:
        cases.append(LossCase(f"nt_xent N{n} D{d} T{t:g}", "nt_xent", (normal(n, d), normal(n, d)), t))
    for n, d, t, k in INFO_NCE_GRID:
        cases.append(LossCase(f"info_nce N{n} D{d} T{t:g} K{k}", "info_nce",
                              (normal(n, d), normal(n, d), normal(k, d)), t))
    for n, d in BYOL_GRID:
        cases.append(LossCase(f"byol N{n} D{d}", "byol", tuple(normal(n, d) for _ in range(4))))
    n, d = EDGE_SHAPE
    for kind in EDGES:
        cases.append(LossCase(f"nt_xent {kind}", "nt_xent",
                              tuple(_edge(kind, [normal(n, d), normal(n, d)])), EDGE_TEMPERATURE))
        q, k = _edge(kind, [normal(n, d), normal(n, d)])
        queue = (np.concatenate([q] * (EDGE_QUEUE // n)) if kind == "identical"
                 else _edge(kind, [normal(EDGE_QUEUE, d)])[0])
        cases.append(LossCase(f"info_nce {kind}", "info_nce", (q, k, queue), EDGE_TEMPERATURE))
        cases.append(LossCase(f"byol {kind}", "byol", tuple(_edge(kind, [normal(n, d) for _ in range(4)]))))
    # All rows one point: NT-Xent's closed form log(2N - 1), BYOL's 0 with aligned predictions.
    cases.append(LossCase("nt_xent one point", "nt_xent", (np.ones((n, d)), np.ones((n, d))), 0.5))
    return cases


def loss_case_dtypes() -> list[tuple[str, LossCase]]:
    """``(dtype name, case)`` for every case in float64 and float32."""
    return [(dtype, case.astype(dtype)) for dtype in ("float64", "float32") for case in loss_cases()]


# --------------------------------------------------------------------------------------------------
# Optimisers and the schedule: 10 steps on the same parameters and gradients
# --------------------------------------------------------------------------------------------------
OPTIM_STEPS = 10
# Hyper-parameters exact in binary (0.875 = 7/8, 0.0625 = 1/16, 2^-6): Keras' own SGD casts its
# momentum through float32 on the TensorFlow backend, which would turn 0.9 into 0.89999998 and move
# float64 weights by ~1e-8 -- a property of Keras' optimizer base class, not of the update rule.
OPTIM_MOMENTUM, OPTIM_WEIGHT_DECAY, OPTIM_ETA = 0.875, 0.0625, 2.0**-6
OPTIM_SCHEDULE = LrSchedule(base_lr=0.8, total_steps=OPTIM_STEPS, warmup_steps=3)
SCHEDULE_READS = OPTIM_STEPS + 3  # the rates of steps 0..12: warm-up, cosine, and past the end
OPTIM_SHAPES = {"conv": (2, 2, 3, 4), "dense": (5, 4), "zero": (3, 3), "bias": (4,), "gamma": (4,),
                "quiet": (2, 3)}  # gradients of about 1e-8: where Adam's epsilon decides the step
LARS_VARIANT_NAMES = ("simclr", "solo-learn", "byol")
# Each framework's SGD keeps the rate where its own code base keeps it (common/optim.py): PyTorch's
# and the TensorFlow chapter's outside the buffer, Keras' inside.
SGD_STYLE = {"pytorch": "lr_outside", "tensorflow": "lr_outside", "keras": "lr_inside"}
# Where each framework's AdamW adds its epsilon (common/optim.py): PyTorch after the bias correction,
# Keras (the TensorFlow and Keras chapters) before it.
ADAMW_EPSILON = {"pytorch": "bias_corrected", "tensorflow": "raw", "keras": "raw"}


def optimizer_names(framework: str) -> list[str]:
    """The optimizers a framework's chapter is compared on: "lars <variant>", "sgd <momentum
    style>", "adamw <epsilon placement>"."""
    return [*(f"lars {v}" for v in LARS_VARIANT_NAMES), f"sgd {SGD_STYLE[framework]}",
            f"adamw {ADAMW_EPSILON[framework]}"]


def optim_problem() -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """Initial float64 parameters (one all-zero tensor: LARS's trust ratio 1) and 10 gradients."""
    rng = np.random.default_rng(7)
    init = {k: (np.zeros(s) if k == "zero" else rng.standard_normal(s)) for k, s in OPTIM_SHAPES.items()}
    grads = [{k: rng.standard_normal(s) * (1e-8 if k == "quiet" else 1.0) for k, s in OPTIM_SHAPES.items()}
             for _ in range(OPTIM_STEPS)]
    return init, grads


def schedule_rates(dtype=np.float64) -> np.ndarray:
    """The reference rates of steps 0 .. SCHEDULE_READS - 1 (past the end: the final rate)."""
    return np.array([OPTIM_SCHEDULE.rate(t) for t in range(SCHEDULE_READS)], dtype)


def optim_reference(name: str, rates: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The parameters after each of the 10 steps of optimizer ``name`` (:func:`optimizer_names`)
    under the per-step ``rates``."""
    params, grads = optim_problem()
    buffers: dict = {}
    trajectory = []
    kind, option = name.split(" ")
    for g, lr in zip(grads, rates[:OPTIM_STEPS], strict=True):
        if kind == "lars":
            params, buffers = lars_step(params, g, buffers, float(lr), OPTIM_MOMENTUM, OPTIM_WEIGHT_DECAY,
                                        OPTIM_ETA, option)
        elif kind == "adamw":
            params, buffers = adamw_step(params, g, buffers, float(lr), OPTIM_WEIGHT_DECAY, option)
        else:
            params, buffers = sgd_step(params, g, buffers, float(lr), OPTIM_MOMENTUM, OPTIM_WEIGHT_DECAY,
                                       option)
        trajectory.append(params)
    return trajectory


# --------------------------------------------------------------------------------------------------
# Augmentations
# --------------------------------------------------------------------------------------------------
AUG_IMAGES = 6
WHOLE = RandomResizedCrop(24, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # a 24 x 24 image, untouched


def _square_spec(**ops) -> ViewSpec:
    return ViewSpec(crop=WHOLE, **ops)


# One op per spec, firing on every image (p = 1) with the parameters a fixed seed draws; the crop
# cases on 20 x 28 images (boxes up- and downsampled), the others on 24 x 24 images the crop keeps.
AUG_OPS: dict[str, ViewSpec] = {
    "crop+resize (up)": ViewSpec(crop=RandomResizedCrop(40, scale=(0.08, 1.0))),
    "crop+resize (down)": ViewSpec(crop=RandomResizedCrop(12, scale=(0.08, 1.0))),
    "flip": _square_spec(flip=HorizontalFlip(1.0)),
    "brightness": _square_spec(jitter=ColorJitter(0.8, 0.0, 0.0, 0.0, p=1.0, random_order=False)),
    "contrast": _square_spec(jitter=ColorJitter(0.0, 0.8, 0.0, 0.0, p=1.0, random_order=False)),
    "saturation": _square_spec(jitter=ColorJitter(0.0, 0.0, 0.8, 0.0, p=1.0, random_order=False)),
    "hue": _square_spec(jitter=ColorJitter(0.0, 0.0, 0.0, 0.5, p=1.0, random_order=False)),
    "jitter (random order)": _square_spec(jitter=ColorJitter(0.8, 0.8, 0.8, 0.2, p=1.0)),
    "grayscale": _square_spec(grayscale=Grayscale(1.0)),
    "blur (k=3)": _square_spec(blur=GaussianBlur(1.0, sigma=(0.1, 2.0), kernel_size=3)),
    "blur (k=9)": _square_spec(blur=GaussianBlur(1.0, sigma=(0.1, 2.0), kernel_size=9)),
    "solarize": _square_spec(solarize=Solarize(1.0, threshold=0.5)),
    "normalise": _square_spec(normalize=Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))),
}


def aug_images(hw: tuple[int, int]) -> np.ndarray:
    """uint8 NHWC images: smooth colour gradients plus noise (blur and hue have work to do)."""
    rng = np.random.default_rng(11)
    h, w = hw
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([yy, xx, 1 - yy * xx], axis=-1)[None] * rng.uniform(0.3, 1.0, (AUG_IMAGES, 1, 1, 3))
    return np.clip(255 * base + rng.normal(0, 30, (AUG_IMAGES, h, w, 3)), 0, 255).astype(np.uint8)


def aug_case(name: str):
    """``(images, params, spec)`` of one op case."""
    spec = AUG_OPS[name]
    hw = (20, 28) if name.startswith("crop") else (24, 24)
    params = sample_view_params(spec, AUG_IMAGES, hw, np.random.default_rng(sorted(AUG_OPS).index(name)))
    return aug_images(hw), params, spec


@functools.cache
def aug_reference(name: str) -> np.ndarray:
    return apply_view_batch(*aug_case(name))


def unnormalise(views: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """Views on the 0..1 scale, where the 1/255 tolerance is stated (the normalisation divides by
    std ~0.25, which would stretch the same error four times)."""
    if spec.normalize is None:
        return views
    return views * np.float32(spec.normalize.std) + np.float32(spec.normalize.mean)


# The sampled parameters' distributions: BYOL's second view (every op, each with its own p: blur
# 0.1, solarize 0.2; the ImageNet variant, since the small-image one has no blur) on a square image
# and on a wide one (32 x 96: aspect 3, outside the ratio range, so the central fallback happens too).
# The crop's output size plays no part in the parameters.
SAMPLE_SPEC = preset("byol", 64).view2
SAMPLE_SIZES = ((32, 32), (32, 96))
SAMPLE_DRAWS = 4000


# --------------------------------------------------------------------------------------------------
# The shared data stream: the views each chapter makes of the same step
# --------------------------------------------------------------------------------------------------
STREAM_PAIR = preset("byol", 16)
STREAM_STEPS = 2


def stream_setup() -> tuple[np.ndarray, DataStream]:
    images = aug_images((20, 24))[:, :, :, ::-1].copy()
    images = np.concatenate([images, images[:, ::-1]])  # 12 images
    return images, DataStream(len(images), images.shape[1:3], 4, STREAM_PAIR, seed=5)


@functools.cache
def stream_reference() -> dict[str, np.ndarray]:
    """``"step S view V"`` -> the NumPy reference view of that step (0..1 scale)."""
    images, stream = stream_setup()
    out = {}
    for step in range(STREAM_STEPS):
        data = stream.step(0, step)
        for v, (params, spec) in enumerate(zip((data.view1, data.view2), STREAM_PAIR.views, strict=True)):
            view = apply_view_batch(images[data.indices], params, spec)
            out[f"step {step} view {v + 1}"] = unnormalise(view, spec)
    return out


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------
# (arch, image size the spec is built for, side of the test input). Every architecture name (but
# resnet10_small, resnet18_small with one block per stage: no code path of its own) with
# the ImageNet stem at 64 px (stage 1 at 16 x 16, the last stage at 2 x 2), and the CIFAR stem on
# resnet18_small, the architecture it is used with, on 16 px inputs (stage 1 at 16 x 16 too: every
# stage has the same shapes under either stem, and JAX compiles each shape once). The stems are the
# same code in every architecture; the full-width CIFAR variants would add ~60M parameters to write,
# read and initialise five times and no code path.
ENCODERS = [("resnet18_small", 32, 16), ("resnet18_small", 64, 64), ("resnet18", 64, 64),
            ("resnet34", 64, 64), ("resnet50", 64, 64)]
ENCODER_BATCH = 2
ROUND_TRIP_ENCODERS = [("resnet18_small", 32, 16), ("resnet18_small", 64, 64)]
"""Exported and re-imported through files (byte comparison); the others compare their in-memory
portable tensors (the exported file's content) with the file they were loaded from."""
TRAIN_MODE_ENCODERS = [("resnet18_small", 32, 16), ("resnet18_small", 64, 64)]
TRAIN_MODE_BATCH = 4


def encoder_key(arch: str, size: int) -> str:
    return f"{arch} {resnet_spec(arch, size).stem}"


def portable_tensors(arch: str, size: int) -> dict[str, np.ndarray]:
    """Random but well-scaled portable weights: He fan-out kernels, BN gammas near 1 (0.1-0.5 on the
    last BN of a residual branch, so that deep stacks stay in range), non-trivial betas and moving
    statistics."""
    rng = np.random.default_rng([ARCHS.index(arch), size])
    tensors = {}
    for name, shape in tensor_shapes(resnet_spec(arch, size)).items():
        stat = name.rsplit(".", 1)[1]
        if stat == "kernel":
            value = rng.standard_normal(shape) * math.sqrt(2.0 / (shape[0] * shape[1] * shape[3]))
        elif stat == "gamma":
            last = name.split(".")[-2] in ("bn2", "bn3") and "shortcut" not in name
            value = rng.uniform(0.1, 0.5, shape) if last else rng.uniform(0.5, 1.5, shape)
        elif stat == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # beta, moving_mean
            value = rng.normal(0.0, 0.2, shape)
        tensors[name] = value.astype(np.float32)
    return tensors


def write_reference_weights(folder: Path) -> None:
    """One portable file per encoder of :data:`ENCODERS`, the file every implementation imports."""
    for arch, size, _ in ENCODERS:
        save_encoder(folder / f"{encoder_key(arch, size)}.safetensors", portable_tensors(arch, size),
                     resnet_spec(arch, size), size, framework="reference")


def round_trip(source: Path, to_portable, export, import_, files: bool) -> dict:
    """Does the encoder loaded from ``source`` hold its tensors bit for bit (``to_portable()``, what
    ``export`` writes)? With ``files``: does importing its export and exporting again give the same
    file, byte for byte?"""
    theirs = load_encoder(source)[0]
    ours = to_portable()
    out = {"tensors_identical": set(ours) == set(theirs)
           and all(theirs[k].tobytes() == np.asarray(ours[k], np.float32).tobytes() for k in theirs),
           "reexport_identical": None}
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            first, second = Path(tmp) / "first.safetensors", Path(tmp) / "second.safetensors"
            export(first)
            import_(first)
            export(second)
            out["reexport_identical"] = first.read_bytes() == second.read_bytes()
    return out


def encoder_input(side: int, batch: int = ENCODER_BATCH, seed: int = 0) -> np.ndarray:
    """float32 NHWC images, roughly normalised."""
    return np.random.default_rng(seed).normal(0.0, 1.0, (batch, side, side, 3)).astype(np.float32)


def train_mode_weights(arch: str, size: int) -> np.ndarray:
    """R of the scalar s = sum(h * R) whose gradient with respect to the weights is compared."""
    spec = resnet_spec(arch, size)
    return np.random.default_rng(3).standard_normal((TRAIN_MODE_BATCH, feature_dim(spec))).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# One SimCLR step
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSetup:
    arch: str = "resnet18_small"
    image_size: int = 16
    batch: int = 4
    hidden: int = 32
    out: int = 16
    temperature: float = 0.2
    lr: float = 0.3
    momentum: float = 0.9
    # Far above a real run's (SimCLR: 1e-6) so that the decay shows in one step's update: here the
    # gradients are 1.2 to 34 times the kernels' norms, so at 1e-4 the decay is <= 1e-4 of d and
    # forgetting it moves the update by 0.03 of its tolerance (test_step.py); at 5e-2 it is still
    # <= 4 % of d (the step stays the gradient's), and forgetting it misses by 13 x the tolerance.
    weight_decay: float = 5e-2
    eta: float = 1e-3
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    @property
    def spec(self):
        return resnet_spec(self.arch, self.image_size)

    @property
    def pair(self):
        return preset("simclr", self.image_size)


STEP = StepSetup()


def step_inputs() -> tuple[np.ndarray, object, object]:
    """uint8 images (batch, 20, 20, 3) and both views' parameters (the stream's sampler)."""
    images = aug_images((20, 20))[: STEP.batch]
    rng = np.random.default_rng(13)
    return (images, sample_view_params(STEP.pair.view1, STEP.batch, (20, 20), rng),
            sample_view_params(STEP.pair.view2, STEP.batch, (20, 20), rng))


def step_weights() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The portable encoder and SimCLR's head (Linear - BN - ReLU - Linear - BN without beta):
    ``head`` holds ``linear1`` (in, hidden) and ``linear2`` (hidden, out) kernels (x @ W) and the two
    BNs' gamma / beta / moving statistics."""
    encoder = portable_tensors(STEP.arch, STEP.image_size)
    rng = np.random.default_rng(17)
    features = feature_dim(STEP.spec)
    head = {
        "linear1": rng.normal(0, 1 / math.sqrt(features), (features, STEP.hidden)),
        "bn1.gamma": rng.uniform(0.5, 1.5, STEP.hidden), "bn1.beta": rng.normal(0, 0.2, STEP.hidden),
        "bn1.moving_mean": np.zeros(STEP.hidden), "bn1.moving_variance": np.ones(STEP.hidden),
        "linear2": rng.normal(0, 1 / math.sqrt(STEP.hidden), (STEP.hidden, STEP.out)),
        "bn2.gamma": rng.uniform(0.5, 1.5, STEP.out),
        "bn2.moving_mean": np.zeros(STEP.out), "bn2.moving_variance": np.ones(STEP.out),
    }
    return encoder, {k: v.astype(np.float32) for k, v in head.items()}


# --------------------------------------------------------------------------------------------------
# Trained encoders evaluated by kNN in every chapter
# --------------------------------------------------------------------------------------------------
KNN_ARCH, KNN_SIZE, KNN_STEPS, KNN_BATCH = "resnet10_small", 16, 3, 8
KNN_CLASSES, KNN_TRAIN, KNN_TEST = 4, 96, 64
KNN_CONFIG = {
    # what every chapter's evaluate.load_encoder and common/evaluate/flow need
    "arch": KNN_ARCH, "image_size": KNN_SIZE, "augment": "simclr", "seed": 0, "knn_k": 20,
    "knn_temperature": 0.1, "projection_dim": 16, "projection_hidden_dim": 32, "projection_layers": 2,
    "predictor_hidden_dim": 32, "queue_size": 32, "bn_splits": 1, "key_bn_stats": "skip",
    "target_momentum": 0.99, "target_bn_stats": "skip", "backend": None,
}
TRAINED = ("simclr-pytorch", "moco-tensorflow", "byol-keras")  # chapter-trained encoder files


def knn_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 16 x 16 images of 4 classes (a class colour under heavy noise): a kNN on features of a
    barely trained encoder lands between chance and perfect, where ties and near-ties would show."""
    rng = np.random.default_rng(23)
    colours = rng.uniform(60, 200, (KNN_CLASSES, 3))
    n = KNN_TRAIN + KNN_TEST
    labels = np.arange(n) % KNN_CLASSES
    images = colours[labels][:, None, None, :] + rng.normal(0, 70, (n, KNN_SIZE, KNN_SIZE, 3))
    images = np.clip(images, 0, 255).astype(np.uint8)
    return images[:KNN_TRAIN], labels[:KNN_TRAIN], images[KNN_TRAIN:], labels[KNN_TRAIN:]


def knn_result(features, data) -> dict:
    """``{"top1", "features"}`` of one encoder's ``features`` callable on ``data`` (``knn_data()``):
    the feature extraction and kNN rule of ``common/evaluate``, which every chapter's evaluate.py
    uses; "features" are the test features."""
    from common.evaluate import flow
    from common.evaluate.knn import knn_accuracy

    train_x, train_y, test_x, test_y = data
    train_f = flow.extract_features(features, train_x, KNN_CONFIG)
    test_f = flow.extract_features(features, test_x, KNN_CONFIG)
    top1 = knn_accuracy(train_f, train_y, test_f, test_y, k=KNN_CONFIG["knn_k"],
                        temperature=KNN_CONFIG["knn_temperature"])["top1"]
    return {"top1": top1, "features": test_f}


def knn_stream() -> tuple[np.ndarray, DataStream]:
    """The training stream every chapter's few steps read (the kNN training images)."""
    images = knn_data()[0]
    return images, DataStream(len(images), images.shape[1:3], KNN_BATCH, preset("simclr", KNN_SIZE), seed=3,
                              max_steps_per_epoch=KNN_STEPS)


# --------------------------------------------------------------------------------------------------
# Distributed losses
# --------------------------------------------------------------------------------------------------
WORLD = 2
DIST_N, DIST_D, DIST_K, DIST_T = 8, 16, 32, 0.1  # global batch 8 (4 per replica)


def distributed_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(29)
    n, d = DIST_N, DIST_D
    return {"z1": rng.standard_normal((n, d)), "z2": rng.standard_normal((n, d)),
            "q": rng.standard_normal((n, d)), "k": rng.standard_normal((n, d)),
            "queue": rng.standard_normal((DIST_K, d)),
            "p1": rng.standard_normal((n, d)), "p2": rng.standard_normal((n, d)),
            "t1": rng.standard_normal((n, d)), "t2": rng.standard_normal((n, d))}
