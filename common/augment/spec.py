"""Augmentation specs: frozen, validated, JSON-serialisable descriptions of a view.

A spec says *which* ops a view uses and the ranges their random parameters are drawn from; it draws
nothing itself (``sampler.py`` does) and applies nothing (``ops.py`` and the chapters do). The exact
meaning of every field is written once, in the package docstring (``common/augment/__init__.py``).

Every spec validates itself on construction and raises :class:`InvalidSpecError` (a ``ValueError``)
with a message that says what to change. Sequences are stored as tuples of floats, so a spec rebuilt
from JSON (where tuples become lists) compares equal to the original.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar


class InvalidSpecError(ValueError):
    """An augmentation spec whose values are impossible (the message says which and why)."""


def kernel_size_for(image_size: int) -> int:
    """Gaussian-blur kernel side for square views of ``image_size`` pixels: ``2*floor(size/20) + 1``.

    SimCLR (Chen et al. 2020, appendix A) blurs with a kernel of about 10% of the image side; its
    code uses radius ``floor(size/10 / 2)`` and side ``2*radius + 1``, so the side is always odd:
    224 -> 23, 96 -> 9, 32 -> 3. Integer arithmetic keeps the rule exact for every size.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise InvalidSpecError(f"image_size must be a positive int, got {image_size!r}")
    return 2 * (image_size // 20) + 1


def _float_pair(owner: object, name: str) -> tuple[float, float]:
    """Coerce the field ``name`` of ``owner`` to a tuple of two floats (stored back in place)."""
    value = getattr(owner, name)
    try:
        pair = tuple(float(v) for v in value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        raise InvalidSpecError(
            f"{type(owner).__name__}.{name} must be two finite numbers (lo, hi), got {value!r}"
        )
    object.__setattr__(owner, name, pair)
    return pair


def _float_triple(owner: object, name: str) -> tuple[float, float, float]:
    """Coerce the per-channel field ``name`` of ``owner`` to a tuple of three floats (in place)."""
    value = getattr(owner, name)
    try:
        triple = tuple(float(v) for v in value)
    except TypeError:
        triple = ()
    if len(triple) != 3 or not all(math.isfinite(v) for v in triple):
        raise InvalidSpecError(
            f"{type(owner).__name__}.{name} must be three finite numbers (R, G, B), got {value!r}"
        )
    object.__setattr__(owner, name, triple)
    return triple


def _check_probability(owner: object, name: str = "p") -> None:
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InvalidSpecError(
            f"{type(owner).__name__}.{name} is a probability and must be in [0, 1], got {value!r}"
        )
    object.__setattr__(owner, name, float(value))


def _check_strength(owner: object, name: str, upper: float = math.inf) -> None:
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= upper:
        bound = f"[0, {upper}]" if math.isfinite(upper) else ">= 0"
        raise InvalidSpecError(
            f"{type(owner).__name__}.{name} must be {bound} (0 switches that adjustment off), got {value!r}"
        )
    object.__setattr__(owner, name, float(value))


class _Spec:
    """JSON round trip shared by every spec: ``to_dict``/``from_dict``, ``to_json``/``from_json``."""

    # Fields that hold nested specs, by name -> spec class (filled in by ViewSpec and PairSpec).
    _nested: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types (tuples become lists, nested specs dicts, absent ops None)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Spec):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Rebuild a spec from :meth:`to_dict` output (validated like any new spec)."""
        if not isinstance(data, dict):
            raise InvalidSpecError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidSpecError(
                f"unknown field(s) {unknown} for {cls.__name__}; valid fields: {sorted(names)}"
            )
        kwargs = dict(data)
        for name, nested_cls in cls._nested.items():
            if kwargs.get(name) is not None:
                kwargs[name] = nested_cls.from_dict(kwargs[name])
        try:
            return cls(**kwargs)
        except TypeError as err:  # a required field is missing
            raise InvalidSpecError(f"cannot build {cls.__name__} from {data!r}: {err}") from None

    def to_json(self) -> str:
        """The spec as a JSON string (stable key order, so equal specs give equal strings)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        """Rebuild a spec from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidSpecError(f"not valid JSON for {cls.__name__}: {err}") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class RandomResizedCrop(_Spec):
    """Random crop of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio), resized to size."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise InvalidSpecError(f"RandomResizedCrop.size must be a positive int, got {self.size!r}")
        lo, hi = _float_pair(self, "scale")
        if not 0.0 < lo <= hi <= 1.0:
            raise InvalidSpecError(
                f"RandomResizedCrop.scale is an area fraction: need 0 < lo <= hi <= 1, got {(lo, hi)}"
            )
        lo, hi = _float_pair(self, "ratio")
        if not 0.0 < lo <= hi:
            raise InvalidSpecError(
                f"RandomResizedCrop.ratio is width/height: need 0 < lo <= hi, got {(lo, hi)}"
            )
        if self.interpolation != "bilinear":
            raise InvalidSpecError(
                f"RandomResizedCrop.interpolation {self.interpolation!r} is not implemented; "
                "the reference defines 'bilinear' only"
            )


@dataclass(frozen=True)
class HorizontalFlip(_Spec):
    """Left-right mirror with probability p."""

    p: float = 0.5

    def __post_init__(self) -> None:
        _check_probability(self)


@dataclass(frozen=True)
class ColorJitter(_Spec):
    """With probability p, brightness/contrast/saturation/hue adjustments in random (or fixed) order.

    Strengths as torchvision's ColorJitter: factors ~ U[max(0, 1-s), 1+s] for brightness, contrast
    and saturation, hue shift ~ U[-hue, hue] with hue <= 0.5; a strength of 0 switches that one off.
    """

    brightness: float
    contrast: float
    saturation: float
    hue: float
    p: float = 0.8
    random_order: bool = True

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            _check_strength(self, name)
        _check_strength(self, "hue", upper=0.5)
        _check_probability(self)
        if not isinstance(self.random_order, bool):
            raise InvalidSpecError(
                f"ColorJitter.random_order must be True or False, got {self.random_order!r}"
            )


@dataclass(frozen=True)
class Grayscale(_Spec):
    """With probability p, replace RGB by the ITU-R 601-2 luma replicated to three channels."""

    p: float = 0.2

    def __post_init__(self) -> None:
        _check_probability(self)


@dataclass(frozen=True)
class GaussianBlur(_Spec):
    """With probability p, separable Gaussian blur, sigma ~ U(sigma), odd kernel_size (reflect pad).

    Use :func:`kernel_size_for` to get the SimCLR rule (about 10% of the image side).
    """

    p: float
    sigma: tuple[float, float] = (0.1, 2.0)
    kernel_size: int = field(kw_only=True)

    def __post_init__(self) -> None:
        _check_probability(self)
        lo, hi = _float_pair(self, "sigma")
        if not 0.0 < lo <= hi:
            raise InvalidSpecError(f"GaussianBlur.sigma needs 0 < lo <= hi, got {(lo, hi)}")
        k = self.kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise InvalidSpecError(
                f"GaussianBlur.kernel_size must be a positive odd int, got {k!r} "
                "(kernel_size_for(image_size) gives the SimCLR rule)"
            )


@dataclass(frozen=True)
class Solarize(_Spec):
    """With probability p, invert every value >= threshold (threshold on the 0..1 scale)."""

    p: float
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_probability(self)
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
            # (t - 0.5) / 255: what torchvision's uint8 RandomSolarize(t) inverts (x >= t), on no
            # uint8 level, so float rounding cannot decide a pixel (t / 255 sits exactly on one)
            hint = (f" (on the 0..255 scale? use {(t - 0.5) / 255:.4g})"
                    if isinstance(t, int | float) else "")
            raise InvalidSpecError(
                f"Solarize.threshold is on the 0..1 scale of the float pipeline, got {t!r}{hint}; "
                "a threshold above 1 would never fire"
            )
        object.__setattr__(self, "threshold", float(t))


@dataclass(frozen=True)
class Normalize(_Spec):
    """Per-channel standardisation (x - mean) / std on the 0..1 scale."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        mean = _float_triple(self, "mean")
        std = _float_triple(self, "std")
        if not all(0.0 <= v <= 1.0 for v in mean):
            raise InvalidSpecError(
                f"Normalize.mean is on the 0..1 scale of the float pipeline, got {mean} "
                "(0..255 values? divide them by 255)"
            )
        if not all(s > 0.0 for s in std):
            raise InvalidSpecError(f"Normalize.std must be positive per channel, got {std}")


# Ops that are applied with a probability; one with p == 0 is stored as absent (None).
_OPTIONAL_OPS: dict[str, type] = {
    "flip": HorizontalFlip,
    "jitter": ColorJitter,
    "grayscale": Grayscale,
    "blur": GaussianBlur,
    "solarize": Solarize,
}


@dataclass(frozen=True)
class ViewSpec(_Spec):
    """One view: crop -> flip -> jitter -> grayscale -> blur -> solarize -> normalise.

    Every op but the crop is optional (None = absent). An op given with ``p == 0`` is stored as
    None, so two specs that do the same thing compare (and serialise) equal. ``normalize=None``
    leaves the view on the 0..1 scale (used for display).
    """

    crop: RandomResizedCrop
    flip: HorizontalFlip | None = None
    jitter: ColorJitter | None = None
    grayscale: Grayscale | None = None
    blur: GaussianBlur | None = None
    solarize: Solarize | None = None
    normalize: Normalize | None = None

    _nested: ClassVar[dict[str, type]] = {
        "crop": RandomResizedCrop,
        **_OPTIONAL_OPS,
        "normalize": Normalize,
    }

    def __post_init__(self) -> None:
        for name, cls in self._nested.items():
            value = getattr(self, name)
            if value is None and name != "crop":
                continue
            if not isinstance(value, cls):
                raise InvalidSpecError(
                    f"ViewSpec.{name} must be a {cls.__name__}"
                    + ("" if name == "crop" else " or None")
                    + f", got {type(value).__name__}"
                )
            if name in _OPTIONAL_OPS and value.p == 0.0:
                object.__setattr__(self, name, None)

    @property
    def size(self) -> int:
        """Side of the square view in pixels."""
        return self.crop.size


@dataclass(frozen=True)
class PairSpec(_Spec):
    """The two views of a pair; identical for SimCLR and MoCo v2, different for BYOL."""

    view1: ViewSpec
    view2: ViewSpec

    _nested: ClassVar[dict[str, type]] = {"view1": ViewSpec, "view2": ViewSpec}

    def __post_init__(self) -> None:
        for name in ("view1", "view2"):
            if not isinstance(getattr(self, name), ViewSpec):
                raise InvalidSpecError(
                    f"PairSpec.{name} must be a ViewSpec, got {type(getattr(self, name)).__name__}"
                )
        if self.view1.size != self.view2.size:
            raise InvalidSpecError(
                f"both views of a pair must have the same size, got {self.view1.size} and {self.view2.size}"
            )

    @property
    def views(self) -> tuple[ViewSpec, ViewSpec]:
        """(view1, view2)."""
        return (self.view1, self.view2)
