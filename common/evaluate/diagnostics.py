"""Representation diagnostics: alignment, uniformity, per-dimension spread, effective rank.

Alignment and uniformity are Wang & Isola (2020, sec. 4.1): contrastive learning pulls positive
pairs together (low alignment) and spreads the rest over the hypersphere (low uniformity). The
per-dimension standard deviation of L2-normalised embeddings is the collapse monitor of SimSiam
(Chen & He 2021, sec. 4.1, Fig. 2) and solo-learn's ``z_std``: about ``1/sqrt(d)`` when the
embeddings are spread over all d directions, 0 when they collapse to a point. The effective rank
(Roy & Vetterli 2007) counts how many directions are in use: close to ``min(d, N)`` for an
isotropic cloud of N points (about 0.93 of it when d is N / 2 or 2 N), 1 when
all embeddings are parallel.

Every function L2-normalises rows first, so all numbers describe the hypersphere the losses act on.
"""

import numpy as np

from common.losses import l2_normalize

COLLAPSE_RATIO_WARNING = 0.03
"""Training warns when :func:`collapse_ratio` of the representation h falls below this.

h comes out of a ReLU and an average pool, so all its entries are >= 0 and its L2-normalised rows
share a large common direction: a healthy h scores well below the ~1 of a centred embedding (0.046
for the random-init ``resnet18_small`` of ``python -m pytorch_simclr.train`` on ``digits``, seed 0,
measured as docs/book/03-algorithms.md says), a collapsed one (every image mapped to nearly the
same h) close to 0. (Measured on the projection z instead, a
head ending in BatchNorm renormalises even a constant h back to a spread-looking ~1.)"""

UNIFORMITY_MAX_PAIRS = 1_000_000
"""Above this many distinct pairs, uniformity uses this many seeded random pairs instead."""


def _normalized(z: np.ndarray, name: str = "z") -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array of embeddings; got {z.shape}.")
    if not np.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or inf; check the encoder's outputs.")
    return l2_normalize(z)


def alignment(z1: np.ndarray, z2: np.ndarray, alpha: float = 2) -> float:
    """``E ||f(x) - f(y)||^alpha`` over positive pairs (rows of ``z1`` and ``z2``); 0 is perfect."""
    u1, u2 = _normalized(z1, "z1"), _normalized(z2, "z2")
    if u1.shape != u2.shape:
        raise ValueError(f"z1 and z2 must pair up row by row; got {u1.shape} and {u2.shape}.")
    return float(np.mean(np.linalg.norm(u1 - u2, axis=1) ** alpha))


def _pair_squared_distances(u: np.ndarray, max_pairs: int, seed: int) -> np.ndarray:
    """``||u_i - u_j||^2`` over all pairs ``i < j``, or ``max_pairs`` seeded random pairs ``i != j``.

    From the rows' own squared norms, not ``2 - 2 u_i . u_j``: a row the encoder mapped to zero
    stays zero after normalising, and must be at distance 0 from another zero row, 1 from a unit one.
    """
    n = u.shape[0]
    squared_norms = np.einsum("ij,ij->i", u, u)
    if n * (n - 1) // 2 <= max_pairs:
        first, second = np.triu_indices(n, k=1)
        dots = (u @ u.T)[first, second]
    else:
        rng = np.random.default_rng(seed)
        first = rng.integers(0, n, size=max_pairs)
        second = (first + rng.integers(1, n, size=max_pairs)) % n  # uniform over j != i
        block = 1 << 14  # bounds the memory of the gathered rows
        dots = np.concatenate([
            np.einsum("ij,ij->i", u[first[s : s + block]], u[second[s : s + block]])
            for s in range(0, max_pairs, block)
        ])
    return np.maximum(squared_norms[first] + squared_norms[second] - 2.0 * dots, 0.0)


def uniformity(
    z: np.ndarray, t: float = 2, max_pairs: int = UNIFORMITY_MAX_PAIRS, seed: int = 0
) -> float:
    """``log E exp(-t ||u - v||^2)`` over distinct pairs; 0 for a collapsed set, lower is spread.

    Exact over all ``N (N - 1) / 2`` pairs when there are at most ``max_pairs`` of them, otherwise
    over ``max_pairs`` pairs ``i != j`` drawn with a seeded generator (deterministic). The mean of
    exponentials is taken in log space (log-sum-exp), so large ``t`` does not underflow to log 0.
    """
    u = _normalized(z)
    if u.shape[0] < 2:
        raise ValueError("uniformity needs at least two embeddings.")
    exponent = -t * _pair_squared_distances(u, max_pairs, seed)
    peak = exponent.max()
    return float(peak + np.log(np.mean(np.exp(exponent - peak))))


def embedding_std(z: np.ndarray) -> float:
    """Mean over dimensions of the standard deviation (ddof=1) of the L2-normalised embeddings."""
    u = _normalized(z)
    if u.shape[0] < 2:
        raise ValueError("embedding_std needs at least two embeddings.")
    return float(np.mean(np.std(u, axis=0, ddof=1)))


def collapse_ratio(z: np.ndarray) -> float:
    """``embedding_std(z) * sqrt(d)``: about 1 for a healthy spread, 0 for a collapsed embedding.

    A healthy L2-normalised embedding spread over the sphere has per-dimension std about
    1/sqrt(d), so the ratio makes the collapse signal independent of the embedding width.
    """
    return embedding_std(z) * float(np.sqrt(np.asarray(z).shape[-1]))


def effective_rank(z: np.ndarray) -> float:
    """``exp(H(p))`` with ``p = sigma / sum(sigma)`` the normalised singular values of ``z``.

    Roy & Vetterli (2007), on the L2-normalised rows (not centred, as RankMe, Garrido et al.
    2023). Between 1 (all rows parallel) and ``min(N, D)`` (equal singular values).
    """
    singular_values = np.linalg.svd(_normalized(z), compute_uv=False)
    if singular_values.sum() == 0:  # every row mapped to zero: a single point
        return 1.0
    p = singular_values / singular_values.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def diagnostics(z1: np.ndarray, z2: np.ndarray | None = None) -> dict:
    """All applicable diagnostics of a batch of embeddings, as a flat dict of floats.

    Always: ``embedding_std``, ``collapse_ratio`` (= ``embedding_std * sqrt(d)``: about 1 healthy,
    0 collapsed), ``effective_rank`` and ``uniformity``, computed on ``z1``. With the second views
    ``z2`` (row i of z1 and z2 are a positive pair) also ``alignment``.
    """
    result = {
        "embedding_std": embedding_std(z1),
        "collapse_ratio": collapse_ratio(z1),
        "effective_rank": effective_rank(z1),
        "uniformity": uniformity(z1),
    }
    if z2 is not None:
        result["alignment"] = alignment(z1, z2)
    return result
