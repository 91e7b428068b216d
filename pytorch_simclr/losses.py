"""The three canonical losses in PyTorch, value-for-value equal to ``common/losses.py``.

Each takes raw embeddings, L2-normalises them inside (``F.normalize``, norms clamped at
``common.losses.NORM_EPS`` as the reference does) and uses the reference's one reduction; autograd
supplies the gradients, which ``tests/test_torch_losses.py`` checks against the reference's
hand-derived ones in float64. Any floating dtype works; the computation stays in the inputs' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.losses import NORM_EPS
from pytorch_simclr import distributed


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, norms clamped at ``common.losses.NORM_EPS`` as the reference."""
    return F.normalize(x, dim=1, eps=NORM_EPS)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (SimCLR uses 0.1-0.5)")


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = False
) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1), the mean over the 2N anchors.

    ``z1[i]`` and ``z2[i]`` are the projections of two views of image ``i``. Every anchor's positive
    is its other view; its negatives are all the other samples of both views, itself excluded.

    With ``gather=True`` inside a process group, the candidates (positives and negatives) come from
    the *global* batch via ``distributed.gather_with_gradient``: this rank's 2n anchors are scored
    against all 2nW samples (a local x global similarity matrix) and the loss is the mean over the
    local anchors. DDP's gradient averaging then makes the update exactly that of the single-process
    loss over the global batch; ``pytorch_simclr/distributed.py`` gives the scale argument. Outside
    a process group ``gather`` changes nothing.
    """
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] == 0:
        raise ValueError(
            f"z1 and z2 must be two non-empty (N, D) tensors of the same shape; got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    _check_temperature(temperature)
    n = z1.shape[0]
    anchors = _unit(torch.cat([z1, z2]))  # this rank's [view 1; view 2], 2n rows
    candidates = distributed.gather_with_gradient(anchors) if gather else anchors
    # In the candidates, rank r's block [z1_r; z2_r] starts at row 2n * r.
    offset = 2 * n * (distributed.rank() if gather else 0)
    logits = anchors @ candidates.T / temperature
    rows = torch.arange(2 * n, device=anchors.device)
    logits[rows, offset + rows] = float("-inf")  # an anchor is never its own negative
    positives = offset + (rows + n) % (2 * n)
    return F.cross_entropy(logits, positives)


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1): the mean over the N queries.

    ``k[n]`` is ``q[n]``'s positive key, the K rows of ``queue`` (K, D) the negatives (a constant:
    detached here). ``k`` is not detached: MoCo computes it under ``torch.no_grad()``.
    """
    if q.ndim != 2 or q.shape != k.shape or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"q and k must be (N, D) and queue (K, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(queue.shape)} (a (D, K) queue as in facebookresearch/moco needs a transpose)"
        )
    _check_temperature(temperature)
    u, v = _unit(q), _unit(k)
    w = _unit(queue.detach())
    positive = (u * v).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, u @ w.T], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
    return F.cross_entropy(logits, labels)


def byol(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetrised loss (Grill et al. 2020, eq. 2): mean over pairs of both directions summed.

    ``L = mean_n [(2 - 2 cos(p1_n, z2_n)) + (2 - 2 cos(p2_n, z1_n))]``, in [0, 8]. The targets ``z``
    are detached (stop-gradient): only the online network learns from this loss.
    """
    if not p1.shape == p2.shape == z1.shape == z2.shape or p1.ndim != 2:
        raise ValueError("p1, p2, z1 and z2 must be (N, D) tensors of one shape")

    def regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return 2 - 2 * (_unit(p) * _unit(z.detach())).sum(dim=1)

    return (regression(p1, z2) + regression(p2, z1)).mean()
