"""``shapes``: procedurally generated 32x32 images of 10 shape classes. Built in: no download.

The class is the shape and nothing else. Everything else is a random *nuisance*, drawn
independently of the class: the shape's colour, position, size and rotation, and a textured
background (two random colours mixed by a sum of two random sinusoidal gratings), plus grey pixel noise.
Raw pixels therefore say little about the class (nearest neighbours on pixels are barely above
chance), while a feature that ignores colour, position and scale -- what SSL augmentations
(colour jitter, crops, flips) teach; none of the presets rotates -- separates it easily.

Rendering is vectorised over all images: the pixel grid (supersampled 2x2 per pixel for smooth
edges) is mapped into each shape's own frame (centre at 0, outer radius 1, rotation undone), where
every class is a fixed region: an implicit inequality (circle, ring, crescent, heart) or a polygon
tested with the even-odd crossing rule (triangle, square, pentagon, star, cross, arrow).
Deterministic: the same seed gives the same images on every platform.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from common.datasets.base import Dataset, DatasetInfo

SIDE = 32
SUPERSAMPLE = 2
RADIUS_RANGE = (6.0, 12.0)  # outer radius in pixels
MIN_COLOUR_SHIFT = 80  # every channel of the background's first colour differs from the shape's
# by at least this; its second colour is within 60 of the first, so it may come closer
NOISE_STD = 6.0
RENDER_CHUNK = 500  # images rendered at once: keeps the temporaries in cache, twice as fast
SPLIT_SIZES = {"train": 5_000, "test": 1_000}
SPLIT_SEEDS = {"train": 0, "test": 1}


def _regular_polygon(corners: int, inner_radius: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon of outer radius 1 (a star if ``inner_radius`` is given)."""
    points = corners * (1 if inner_radius is None else 2)
    angles = np.pi / 2 + 2 * np.pi * np.arange(points) / points
    radii = np.ones(points) if inner_radius is None else np.tile([1.0, inner_radius], corners)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


POLYGONS = {
    "triangle": _regular_polygon(3),
    "square": _regular_polygon(4),
    "pentagon": _regular_polygon(5),
    "star": _regular_polygon(5, inner_radius=0.42),
    "cross": np.array([(-1, -0.3), (-0.3, -0.3), (-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3),
                       (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3)]),
    "arrow": np.array([(-1, -0.22), (0.15, -0.22), (0.15, -0.65), (1, 0), (0.15, 0.65),
                       (0.15, 0.22), (-1, 0.22)]),
}


def inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: a point is inside if a ray towards +u crosses the boundary an odd number
    of times."""
    inside = np.zeros(u.shape, dtype=bool)
    for (u1, v1), (u2, v2) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if v1 == v2:
            continue  # a horizontal edge is never crossed by a horizontal ray
        crosses = (v1 > v) != (v2 > v)
        inside ^= crosses & (u < u1 + (v - v1) * (u2 - u1) / (v2 - v1))
    return inside


def inside_implicit(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The regions given by an inequality in the shape's frame."""
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 1
    if name == "ring":
        return (r2 <= 1) & (r2 >= 0.55**2)
    if name == "crescent":
        return (r2 <= 1) & ((u - 0.45) ** 2 + v * v >= 0.8**2)
    # heart: (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled by 1.15 and shifted to centre it
    x, y = 1.15 * u, 1.15 * v + 0.12
    return (x * x + y * y - 1) ** 3 <= x * x * y**3


CLASSES = (
    "circle", "triangle", "square", "pentagon", "star", "cross", "ring", "crescent", "heart",
    "arrow",
)


@dataclass(frozen=True)
class Nuisances:
    """Everything about an image except its class, one row per image."""

    centres: np.ndarray  # (N, 2) x, y in pixels
    radii: np.ndarray  # (N,) outer radius in pixels
    angles: np.ndarray  # (N,) rotation in radians
    shape_colours: np.ndarray  # (N, 3) in 0..255
    background_colours: np.ndarray  # (N, 2, 3): the two colours the texture mixes
    gratings: np.ndarray  # (N, 2, 3): per grating, the x and y frequency (radians/pixel), phase
    noise: np.ndarray  # (N, 32, 32, 1) additive grey pixel noise

    @classmethod
    def sample(cls, rng: np.random.Generator, count: int) -> Nuisances:
        radii = rng.uniform(*RADIUS_RANGE, count)
        centres = rng.uniform(radii[:, None] + 1, SIDE - 1 - radii[:, None], (count, 2))
        shape_colours = rng.integers(0, 256, (count, 3))
        shift = rng.integers(MIN_COLOUR_SHIFT, 256 - MIN_COLOUR_SHIFT + 1, (count, 3))
        base = (shape_colours + shift) % 256
        second = np.clip(base + rng.integers(-60, 61, (count, 3)), 0, 255)
        frequency = rng.uniform(0.2, 1.2, (count, 2))  # radians per pixel: 1 to 6 stripes
        direction = rng.uniform(0, np.pi, (count, 2))
        gratings = np.stack(
            [frequency * np.cos(direction), frequency * np.sin(direction),
             rng.uniform(0, 2 * np.pi, (count, 2))], axis=-1,
        )
        return cls(
            centres=centres,
            radii=radii,
            angles=rng.uniform(0, 2 * np.pi, count),
            shape_colours=shape_colours.astype(np.float32),
            background_colours=np.stack([base, second], axis=1).astype(np.float32),
            gratings=gratings.astype(np.float32),
            noise=NOISE_STD * rng.standard_normal((count, SIDE, SIDE, 1), dtype=np.float32),
        )


    def rows(self, index: slice) -> Nuisances:
        """The nuisances of the images in ``index``."""
        return Nuisances(**{field.name: getattr(self, field.name)[index] for field in fields(self)})


def coverage(labels: np.ndarray, nuisances: Nuisances) -> np.ndarray:
    """(N, 32, 32) fraction of each pixel covered by the image's shape (2x2 supersampled)."""
    inside = np.zeros((len(labels), SIDE * SUPERSAMPLE, SIDE * SUPERSAMPLE), dtype=bool)
    for label, name in enumerate(CLASSES):
        chosen = np.flatnonzero(labels == label)
        u, v = _shape_frame(nuisances, chosen)
        if name in POLYGONS:
            inside[chosen] = inside_polygon(u, v, POLYGONS[name])
        else:
            inside[chosen] = inside_implicit(name, u, v)
    covered = sum(  # count the covered samples of each pixel's 2x2 block
        inside[:, dy::SUPERSAMPLE, dx::SUPERSAMPLE].view(np.uint8)
        for dy in range(SUPERSAMPLE) for dx in range(SUPERSAMPLE)
    )
    return covered.astype(np.float32) / SUPERSAMPLE**2


def _shape_frame(nuisances: Nuisances, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The supersampled pixel grid in the frame of each chosen image's shape: origin at its
    centre, rotation undone, outer radius 1. Two (len(chosen), 64, 64) float32 arrays."""
    fine = ((np.arange(SIDE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE).astype(np.float32)
    centres = nuisances.centres[chosen].astype(np.float32)
    x = fine[None, None, :] - centres[:, 0, None, None]
    y = fine[None, :, None] - centres[:, 1, None, None]
    angles, radii = nuisances.angles[chosen], nuisances.radii[chosen]
    cos = (np.cos(angles) / radii).astype(np.float32)[:, None, None]
    sin = (np.sin(angles) / radii).astype(np.float32)[:, None, None]
    return cos * x + sin * y, cos * y - sin * x  # rotate by -angle, divide by the radius


def render(labels: np.ndarray, nuisances: Nuisances) -> np.ndarray:
    """(N, 32, 32, 3) uint8 images: the textured background, the shape blended on top by its
    coverage, plus noise."""
    pixel = np.arange(SIDE, dtype=np.float32) + 0.5
    fx, fy, phase = (nuisances.gratings[..., i, None, None] for i in range(3))  # (N, 2, 1, 1)
    waves = np.sin(fx * pixel[None, None, None, :] + fy * pixel[None, None, :, None] + phase)
    mix = (0.5 + 0.25 * waves.sum(axis=1, dtype=np.float32))[..., None]  # (N, 32, 32, 1) in 0..1
    colours = nuisances.background_colours
    background = (1 - mix) * colours[:, None, None, 0] + mix * colours[:, None, None, 1]
    alpha = coverage(labels, nuisances)[..., None]
    image = background + alpha * (nuisances.shape_colours[:, None, None] - background)
    return np.clip(np.rint(image + nuisances.noise), 0, 255).astype(np.uint8)


def generate(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (as equal a number per class as ``count`` allows, shuffled) and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASSES)).astype(np.int64)
    nuisances = Nuisances.sample(rng, count)
    chunks = [slice(start, start + RENDER_CHUNK) for start in range(0, count, RENDER_CHUNK)]
    images = [render(labels[chunk], nuisances.rows(chunk)) for chunk in chunks]
    return np.concatenate(images), labels


def load_shapes(split: str, root=None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``split`` ("train": 5,000 or "test": 1,000); ``root`` and ``download`` are unused."""
    return generate(SPLIT_SIZES[split], SPLIT_SEEDS[split])


SHAPES = Dataset(
    info=DatasetInfo(
        name="shapes",
        description="10 procedurally drawn shapes, random colour/position/size/rotation/texture",
        splits=dict(SPLIT_SIZES),
        image_size=(SIDE, SIDE),
        classes=CLASSES,
        source="built-in",
        good_for="seeing SSL work offline in minutes: invariance to the augmented nuisances "
        "is what separates the classes",
    ),
    load=load_shapes,
    is_present=lambda root: True,
)
