"""Data-parallel helpers: the gradient-carrying all-gather behind global NT-Xent, rank queries.

Why the all-gather must carry gradients, and with which scale
-------------------------------------------------------------
With W processes each holding n samples, SimCLR's loss over the global batch is the mean over all
anchors, L = (1/W) sum_r L_r, where L_r is the mean over rank r's anchors, each contrasted against
the *global* batch (SimCLR section 2.2 trains on batches of up to 8192 over many TPU cores, and
its code concatenates every core's projections before the loss: ``tpu_cross_replica_concat`` in
google-research/simclr ``objective.py``). Rank r computes L_r
only, but L_r depends on every rank's embeddings through the gathered negatives. DDP then sets each
parameter's gradient to the *average* over ranks of what each rank back-propagated. For this to be
dL/dtheta, rank q's embeddings z_q must receive d(sum_r L_r)/dz_q: the sum over all ranks of the
gradient each rank's loss sends to the slice that came from q. The backward of the gather below
therefore all-reduces (SUMs) the gradient of the gathered tensor and returns this rank's slice;
DDP's 1/W then turns sum_r into the global mean exactly.

The two classic mistakes both fail ``tests/test_torch_ddp.py``'s negative controls:
- gathering with ``dist.all_gather`` alone (no gradient to the other ranks' slices, or only to the
  local one): the negatives' share of the gradient is lost;
- the right path with the wrong factor (averaging instead of summing in backward, or also
  multiplying the loss by W): every negative's gradient is scaled by 1/W or W.

``torch.distributed.nn.functional.all_gather`` has the same (summing) backward; the explicit
Function here keeps the argument in plain sight. Its backward all-reduces the whole gathered
gradient and keeps its own slice: W times the traffic of a reduce-scatter, negligible for (B, 128)
projections, for the plainest collective.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from common.errors import ConfigError


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGradient(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums, over ranks, the gradient of each rank's slice."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        chunks = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, local.contiguous())
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor) -> torch.Tensor:
        grad = grad_gathered.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        size = grad.shape[0] // dist.get_world_size()
        start = dist.get_rank() * size
        return grad[start : start + size]


def gather_with_gradient(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``local`` (same shape on every rank) in rank order, with gradients.

    Outside a multi-process group it returns ``local`` itself.
    """
    if not is_distributed():
        return local
    return _GatherWithGradient.apply(local)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU if there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for a GPU, but CUDA is not available here; use "
                          "--device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: this chapter trains on cpu or cuda devices")
    return device if device.type == "cpu" else _existing_gpu(device, f"--device {name}")


def _existing_gpu(device: torch.device, asked: str) -> torch.device:
    """``device`` if this machine has that GPU (CUDA would only say "invalid device ordinal")."""
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{asked} asked for GPU {device.index}, but this machine has {count} "
                          f"(cuda:0 to cuda:{count - 1}); pick one of those, or run fewer processes")
    return device


def setup_process(device_name: str) -> tuple[torch.device, int, int]:
    """``(device, rank, world_size)`` of this process; joins the process group under torchrun.

    torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a plain run is world size 1. Each
    rank takes GPU ``LOCAL_RANK`` (NCCL) or, on the CPU, the gloo backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world == 1:
        return device, 0, 1
    if device.type == "cuda":
        local_rank = os.environ.get("LOCAL_RANK", "0")
        device = _existing_gpu(torch.device("cuda", int(local_rank)), f"torchrun's LOCAL_RANK={local_rank}")
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any (one small all-reduce; no-op on one process).

    The run policy asks this after every step, so that an interrupt seen by one rank stops all of
    them at the same step boundary.
    """
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over every rank (one small all-reduce; the value itself on one process).

    What a step logs: rank r's loss is L_r, the mean over its own anchors, and the loss of the
    global batch is (1/W) sum_r L_r (module docstring), as the TensorFlow and Keras chapters
    report it.
    """
    if not is_distributed():
        return value.item()
    total = value.detach().reshape(1).to(collective_device(), torch.float32)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def collective_device() -> torch.device:
    """Where a tensor must be for a collective of this process group: NCCL reduces CUDA tensors
    only (this rank's GPU, ``setup_process``), gloo CPU ones."""
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a local process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
