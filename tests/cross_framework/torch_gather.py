"""NT-Xent with the gradient-carrying all-gather over 2 gloo processes (``python -m
tests.cross_framework.torch_gather OUT``): each rank's loss over its half of the global batch
against the gathered candidates, and the gradient with respect to its own embeddings, pickled to
OUT as ``{rank: (loss, dz1, dz2)}``. The test compares the ranks' mean loss and their gradients
(divided by the world size, as DDP averages) with the single-process reference on the global batch.

The ranks are forked from this small process (only torch imported, no op run yet), so neither pays
for a second interpreter start.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pytorch_simclr import losses
from tests.cross_framework import cases


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=cases.WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        inputs = cases.distributed_inputs()
        n = cases.DIST_N // cases.WORLD
        z1, z2 = (torch.tensor(inputs[k][rank * n:(rank + 1) * n], requires_grad=True) for k in ("z1", "z2"))
        loss = losses.nt_xent(z1, z2, cases.DIST_T, gather=True)
        loss.backward()
        results.put((rank, (float(loss), z1.grad.numpy(), z2.grad.numpy())))
    finally:
        dist.destroy_process_group()


def main(out: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("fork")
    results = context.SimpleQueue()
    ranks = [context.Process(target=_rank, args=(r, port, results)) for r in range(cases.WORLD)]
    for process in ranks:
        process.start()
    collected = dict(results.get() for _ in ranks)
    for process in ranks:
        process.join(60)
    with open(out, "wb") as file:
        pickle.dump(collected, file)


if __name__ == "__main__":
    main(sys.argv[1])
