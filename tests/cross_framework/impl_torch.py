"""The PyTorch chapter (pytorch_simclr) run on the cross-framework inputs: raw outputs only.

Every function returns plain NumPy / Python values; the tests compare them with the references.
PyTorch is also the reference of the encoders and of the whole SimCLR step (no NumPy ResNet).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torchvision  # noqa: F401  (before anything can import TensorFlow)
from torch import nn

from common.arch import resnet_spec
from common.optim import LARS_VARIANTS
from common.weights import save_encoder
from pytorch_simclr import losses, optim
from pytorch_simclr.augment import build_view_transform
from pytorch_simclr.augment_batched import BatchAugmenter, apply_view
from pytorch_simclr.model import (
    ProjectionHead,
    ScaleOnlyBatchNorm1d,
    SimCLRModel,
    build_encoder,
    encoder_to_portable,
    export_encoder,
    import_encoder,
    torch_name,
)
from tests.cross_framework import cases

LOSSES = {"nt_xent": lambda a, t: losses.nt_xent(*a, t), "info_nce": lambda a, t: losses.info_nce(*a, t),
          "byol": lambda a, t: losses.byol(*a)}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _nhwc(views: torch.Tensor) -> np.ndarray:
    return _numpy(views.permute(0, 2, 3, 1)).copy()


# -- losses ----------------------------------------------------------------------------------------
def loss_outputs() -> dict:
    out = {}
    for dtype, case in cases.loss_case_dtypes():
        tensors = [torch.tensor(a, requires_grad=True) for a in case.arrays]
        value = LOSSES[case.loss](tensors, case.temperature)
        grads = torch.autograd.grad(value, tensors, allow_unused=True, materialize_grads=True)
        out[f"{dtype} {case.name}"] = (value.item(), [_numpy(g) for g in grads], str(value.dtype)[6:])
    return out


# -- optimisers and the schedule -------------------------------------------------------------------
def optim_outputs() -> dict:
    init, grads = cases.optim_problem()
    out = {}
    for name in cases.optimizer_names("pytorch"):
        params = nn.ParameterDict({k: nn.Parameter(torch.tensor(v)) for k, v in init.items()})
        kind, option = name.split(" ")
        optimizer = optim.build_optimizer(kind, params, cases.OPTIM_SCHEDULE.base_lr,
                                          cases.OPTIM_WEIGHT_DECAY, cases.OPTIM_MOMENTUM,
                                          trust_coefficient=cases.OPTIM_ETA,
                                          lars_variant=option if kind == "lars" else "simclr")
        scheduler = optim.build_scheduler(optimizer, cases.OPTIM_SCHEDULE)
        trajectory = []
        for g in grads:
            for k, p in params.items():
                p.grad = torch.tensor(g[k])
            optimizer.step()
            scheduler.step()
            trajectory.append({k: _numpy(p).copy() for k, p in params.items()})
        out[name] = trajectory
    optimizer = optim.build_optimizer("sgd", nn.Linear(1, 1), cases.OPTIM_SCHEDULE.base_lr, 0.0)
    scheduler = optim.build_scheduler(optimizer, cases.OPTIM_SCHEDULE)
    rates = []
    for _ in range(cases.SCHEDULE_READS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    out["schedule"] = np.array(rates)
    return out


# -- augmentations ---------------------------------------------------------------------------------
def augment_outputs() -> dict:
    out = {}
    for name in cases.AUG_OPS:
        images, params, spec = cases.aug_case(name)
        out[name] = _nhwc(apply_view(torch.from_numpy(images), params, spec))
    images, stream = cases.stream_setup()
    augmenter = BatchAugmenter(cases.STREAM_PAIR, "cpu")
    for step in range(cases.STREAM_STEPS):
        data = stream.step(0, step)
        views = augmenter(torch.from_numpy(images[data.indices]), data.view1, data.view2)
        for v, (view, spec) in enumerate(zip(views, cases.STREAM_PAIR.views, strict=True)):
            out[f"step {step} view {v + 1}"] = cases.unnormalise(_nhwc(view), spec)
    return out


class _Spy:
    """Stands in for a transform's applied branch: counts its calls and returns the input as is
    (whether the branch runs is decided before it is called; running the op adds nothing here)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, inpt, *args, **kwargs):
        self.calls += 1
        return inpt


def sampled_params() -> dict:
    """The per-image torchvision v2 pipeline (``augment.build_view_transform``): its crop boxes
    as RandomResizedCrop draws them, its ColorJitter's factors and order and its blur's sigmas as
    they draw them, and how often each random op fired over the draws."""
    from torchvision.transforms import v2

    out = {}
    torch.manual_seed(0)
    for hw in cases.SAMPLE_SIZES:
        transform = build_view_transform(cases.SAMPLE_SPEC)
        crop = next(t for t in transform.transforms if isinstance(t, v2.RandomResizedCrop))
        image = torch.zeros(3, *hw, dtype=torch.uint8)
        boxes = [crop.make_params([image]) for _ in range(cases.SAMPLE_DRAWS)]
        out[f"boxes {hw[0]}x{hw[1]}"] = np.array([[b["top"], b["left"], b["height"], b["width"]]
                                                  for b in boxes], np.float64)
    transform = build_view_transform(cases.SAMPLE_SPEC)
    applied = [step.transforms[0] for step in transform.transforms if isinstance(step, v2.RandomApply)]
    jitter = next(t for t in applied if isinstance(t, v2.ColorJitter))
    blur = next(t for t in applied if isinstance(t, v2.GaussianBlur))
    draws = [jitter.make_params([]) for _ in range(cases.SAMPLE_DRAWS)]
    out["draws"] = {name: np.array([d[f"{name}_factor"] for d in draws])
                    for name in ("brightness", "contrast", "saturation", "hue")}
    out["draws"]["order"] = np.array([d["fn_idx"].numpy() for d in draws])
    out["draws"]["blur_sigma"] = np.array([blur.make_params([])["sigma"][0]
                                           for _ in range(cases.SAMPLE_DRAWS)])
    # The random ops' firing rates: the pipeline's random steps (as built, each with the p it was
    # given) with spies in their applied branches, on a tiny image.
    spies, random_steps = {}, []
    for step in transform.transforms:
        if isinstance(step, v2.RandomApply | v2.RandomHorizontalFlip | v2.RandomGrayscale
                      | v2.RandomSolarize):
            random_steps.append(step)
        if isinstance(step, v2.RandomApply):
            inner = step.transforms[0]
            key = "jitter" if isinstance(inner, v2.ColorJitter) else "blur"
            spies[key] = inner.forward = _Spy()
        for key, kind in (("flip", v2.RandomHorizontalFlip), ("grayscale", v2.RandomGrayscale),
                          ("solarize", v2.RandomSolarize)):
            if isinstance(step, kind):
                spies[key] = step.transform = _Spy()
    assert set(spies) == {"flip", "jitter", "grayscale", "blur", "solarize"}, sorted(spies)
    image = torch.zeros(3, 2, 2)
    for _ in range(cases.SAMPLE_DRAWS):
        for step in random_steps:
            step(image)
    out["fired"] = {key: spy.calls / cases.SAMPLE_DRAWS for key, spy in spies.items()}
    return out


# -- encoders --------------------------------------------------------------------------------------
def _encoder(spec) -> nn.Module:
    """``build_encoder(spec)`` without its random initialisation (weights are imported next)."""
    with torch.device("meta"):
        encoder = build_encoder(spec)
    encoder = encoder.to_empty(device="cpu")
    for name, buffer in encoder.named_buffers():
        if name.endswith("num_batches_tracked"):
            buffer.zero_()
    return encoder


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def encoder_outputs(folder: Path) -> dict:
    """Per encoder: eval features of the same input, the trainable parameter count, and whether
    its export holds the file's very bytes (tensors) and re-exports byte-identically."""
    out = {}
    for arch, size, side in cases.ENCODERS:
        spec = resnet_spec(arch, size)
        path = folder / f"{cases.encoder_key(arch, size)}.safetensors"
        encoder = _encoder(spec)
        import_encoder(path, encoder, spec)
        encoder.eval()
        with torch.no_grad():
            features = _numpy(encoder(_nchw(cases.encoder_input(side))))
        out[cases.encoder_key(arch, size)] = {
            "features": features,
            "parameters": sum(p.numel() for p in encoder.parameters() if p.requires_grad),
            **cases.round_trip(path, lambda e=encoder, s=spec: encoder_to_portable(e, s),
                               lambda p, e=encoder, s=spec, z=size: export_encoder(p, e, s, z),
                               lambda p, e=encoder, s=spec: import_encoder(p, e, s),
                               files=(arch, size, side) in cases.ROUND_TRIP_ENCODERS),
        }
    return out


def portable_grads(encoder: nn.Module, spec) -> dict[str, np.ndarray]:
    """The encoder's gradients under portable names, kernels as HWIO."""
    named = dict(encoder.named_parameters())
    grads = {}
    for portable in encoder_to_portable(encoder, spec):
        tensor = named.get(torch_name(portable))
        if tensor is not None:
            g = _numpy(tensor.grad)
            grads[portable] = g.transpose(2, 3, 1, 0) if g.ndim == 4 else g
    return grads


def train_mode_outputs(folder: Path) -> dict:
    """Train-mode (batch statistics) features, the gradient of sum(h * R) w.r.t. the weights, and
    the BN running statistics after that one pass, with the number of values each BN averaged."""
    out = {}
    for arch, size, side in cases.TRAIN_MODE_ENCODERS:
        spec = resnet_spec(arch, size)
        encoder = _encoder(spec)
        import_encoder(folder / f"{cases.encoder_key(arch, size)}.safetensors", encoder, spec)
        encoder.train()
        modules = dict(encoder.named_modules())
        samples = {}  # BN module name -> values per channel in its batch statistics

        def count(name, samples=samples):
            return lambda module, inputs: samples.__setitem__(name, inputs[0].numel() // inputs[0].shape[1])

        for name, module in modules.items():
            if isinstance(module, nn.BatchNorm2d):
                module.register_forward_pre_hook(count(name))
        h = encoder(_nchw(cases.encoder_input(side, cases.TRAIN_MODE_BATCH, seed=1)))
        (h * torch.from_numpy(cases.train_mode_weights(arch, size))).sum().backward()
        moving = {k: v for k, v in encoder_to_portable(encoder, spec).items() if ".moving_" in k}
        out[cases.encoder_key(arch, size)] = {
            "features": _numpy(h), "grads": portable_grads(encoder, spec), "moving": moving,
            "samples": {k: samples[torch_name(k).rsplit(".", 1)[0]] for k in moving}}
    return out


# -- one SimCLR step -------------------------------------------------------------------------------
def simclr_step(dtype: torch.dtype = torch.float32, bn_eps: float | None = None,
                weight_decay: float | None = None, trust_denominator: str = "update_norm") -> dict:
    """SimCLR's step assembled here from this chapter's pieces, as pytorch_simclr/train.py
    assembles them (``build_encoder``, ``ProjectionHead``, ``SimCLRModel``, ``BatchAugmenter``,
    ``losses.nt_xent``, ``optim.LARS``; both views in one forward pass), from the portable weights:
    loss, gradients and updated weights under portable names.

    ``dtype`` float64: the same step in double precision (the same float32 weights and views, cast),
    the reference every float32 implementation is compared with. The negative controls plant one
    bug each: ``bn_eps`` replaces every BN's epsilon (Keras' default 1e-3 where PyTorch's 1e-5 is
    meant); ``weight_decay`` replaces the step's (0: the decay forgotten); ``trust_denominator``
    "sum_of_norms" puts ||g|| + wd ||w|| in the trust ratio instead of ||d|| (the simclr variant
    otherwise: no clipping, the rate inside the momentum)."""
    weight_decay = cases.STEP.weight_decay if weight_decay is None else weight_decay
    if trust_denominator == LARS_VARIANTS["simclr"].denominator:
        return _simclr_step(dtype, bn_eps, weight_decay, "simclr")
    planted = dataclasses.replace(LARS_VARIANTS["simclr"], denominator=trust_denominator,
                                  source="negative control")
    with mock.patch.dict(LARS_VARIANTS, {"planted": planted}):
        return _simclr_step(dtype, bn_eps, weight_decay, "planted")


def _simclr_step(dtype: torch.dtype, bn_eps: float | None, weight_decay: float, variant: str) -> dict:
    setup = cases.STEP
    encoder_weights, head_weights = cases.step_weights()
    spec = setup.spec
    encoder = _encoder(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.safetensors"
        save_encoder(path, encoder_weights, spec, setup.image_size, "reference")
        import_encoder(path, encoder, spec)
    head = ProjectionHead(encoder.feature_dim, setup.hidden, setup.out)
    with torch.no_grad():
        head[0].weight.copy_(torch.from_numpy(head_weights["linear1"].T))
        head[3].weight.copy_(torch.from_numpy(head_weights["linear2"].T))
        for bn, prefix in ((head[1], "bn1"), (head[4], "bn2")):
            bn.weight.copy_(torch.from_numpy(head_weights[f"{prefix}.gamma"]))
            if not isinstance(bn, ScaleOnlyBatchNorm1d):
                bn.bias.copy_(torch.from_numpy(head_weights[f"{prefix}.beta"]))
    model = SimCLRModel(encoder, head).train().to(dtype)
    if bn_eps is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = bn_eps
    optimizer = optim.build_optimizer("lars", model, setup.lr, weight_decay, setup.momentum,
                                      trust_coefficient=setup.eta, lars_variant=variant)
    images, params1, params2 = cases.step_inputs()
    view1, view2 = BatchAugmenter(setup.pair, "cpu")(torch.from_numpy(images), params1, params2)
    _, z = model(torch.cat([view1, view2]).to(dtype))
    loss = losses.nt_xent(*z.chunk(2), setup.temperature)
    optimizer.zero_grad()
    loss.backward()
    grads = portable_grads(encoder, spec)
    optimizer.step()
    weights = {k: _numpy(p).transpose(2, 3, 1, 0) if p.ndim == 4 else _numpy(p)
               for k, p in ((k, dict(encoder.named_parameters())[torch_name(k)]) for k in grads)}
    return {"loss": loss.item(), "grads": grads, "weights": weights,
            "head": {"linear1": _numpy(head[0].weight).T, "linear2": _numpy(head[3].weight).T}}


def simclr_step_float64() -> dict:
    return simclr_step(torch.float64)


def simclr_step_wrong_bn_eps() -> dict:
    return simclr_step(torch.float64, bn_eps=1e-3)


def simclr_step_no_weight_decay() -> dict:
    return simclr_step(torch.float64, weight_decay=0.0)


def simclr_step_sum_of_norms() -> dict:
    return simclr_step(torch.float64, trust_denominator="sum_of_norms")


# -- kNN of chapter-trained encoders ---------------------------------------------------------------
def train_for_knn(path: Path) -> None:
    """A few steps of the SimCLR chapter's training step on the shared stream; the encoder exported."""
    from pytorch_simclr.model import build_model

    config = {**cases.KNN_CONFIG, "temperature": 0.2}
    torch.manual_seed(0)
    model = build_model(config).train()
    optimizer = optim.build_optimizer("lars", model, 1.0, 1e-4, 0.9, lars_variant="simclr")
    images, stream = cases.knn_stream()
    augmenter = BatchAugmenter(stream.pair_spec, "cpu")
    for step in range(cases.KNN_STEPS):
        data = stream.step(0, step)
        view1, view2 = augmenter(torch.from_numpy(images[data.indices]), data.view1, data.view2)
        _, z = model(torch.cat([view1, view2]))
        loss = losses.nt_xent(*z.chunk(2), config["temperature"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    size = config["image_size"]
    export_encoder(path, model.encoder, resnet_spec(config["arch"], size), size)


def knn_outputs(folder: Path) -> dict:
    """kNN top-1 of every trained encoder file through this chapter's evaluation (evaluate.py)."""
    from pytorch_simclr.evaluate import load_encoder as load

    config = cases.KNN_CONFIG
    data = cases.knn_data()
    out = {}
    for name in cases.TRAINED:
        encoder = load(config, "cpu", None, folder / f"{name}.safetensors")
        out[name] = cases.knn_result(encoder.features, data)
    return out
