"""Two gloo processes with DDP and ``nt_xent(gather=True)`` take the single-process step exactly.

The model has BatchNorm. PyTorch's SyncBatchNorm raises on CPU tensors ("expected input tensor to be
on GPU"), so each rank normalises its own 2n views, and the single-process reference does the same:
it runs each rank's half of the global batch through the model separately (same BN statistics), then
computes one NT-Xent over the whole global batch. Everything else (negatives from the global batch,
gradient averaging, the SGD step) must then agree to round-off. Float64 keeps round-off far below
the 1e-10 tolerance, and the negative controls (a gather without gradient, a gather whose backward
averages instead of sums) fail it by orders of magnitude.
"""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.arch import feature_dim, resnet_spec
from common.errors import ConfigError
from pytorch_simclr import distributed
from pytorch_simclr.losses import nt_xent
from pytorch_simclr.model import ProjectionHead, SimCLRModel, build_encoder

pytestmark = pytest.mark.xdist_group("torch-ddp")  # one worker builds the module's fixtures

WORLD = 2
PER_RANK = 4  # images per rank: 8 views per rank, 16 in the global batch
IMAGE_SIZE = 16
TEMPERATURE = 0.5
LR = 0.5
TOL = 1e-10  # float64: the same sums split over two processes differ by round-off alone
WRONG = 1e-3  # what a wrong gather's gradients miss by, at least (the largest are above 1e-2)


def _model() -> SimCLRModel:
    torch.manual_seed(0)
    spec = resnet_spec("resnet18_small", IMAGE_SIZE)
    return SimCLRModel(build_encoder(spec), ProjectionHead(feature_dim(spec), 32, 16)).double()


def _global_views() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    shape = (WORLD * PER_RANK, 3, IMAGE_SIZE, IMAGE_SIZE)
    return (torch.rand(shape, generator=gen, dtype=torch.float64),
            torch.rand(shape, generator=gen, dtype=torch.float64))


def _rank_slice(rank: int) -> slice:
    return slice(rank * PER_RANK, (rank + 1) * PER_RANK)


def _projections(model, x1, x2):
    """Both views of one rank in one forward pass (BN sees its 2n views), as train.py does."""
    _, z = model(torch.cat([x1, x2]))
    return z.chunk(2)


def _step_result(model, loss) -> dict:
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=LR).step()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"grads": grads, "weights": weights}


# --- buggy gathers for the negative controls ---------------------------------------------------


def _gather_without_gradient(local):
    """The classic bug: dist.all_gather, then only the local slice keeps its gradient."""
    chunks = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(chunks, local.detach().contiguous())
    chunks[dist.get_rank()] = local
    return torch.cat(chunks)


class _GatherAveragingGradients(torch.autograd.Function):
    """The right path with the wrong factor: the backward averages over ranks instead of summing."""

    @staticmethod
    def forward(ctx, local):
        chunks = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, local.contiguous())
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        grad /= dist.get_world_size()
        size = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * size : (dist.get_rank() + 1) * size]


GATHERS = {
    "correct": distributed.gather_with_gradient,
    "without_gradient": _gather_without_gradient,
    "averaging": _GatherAveragingGradients.apply,
}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        x1, x2 = (x[_rank_slice(rank)] for x in _global_views())
        results = {}
        for variant, gather in GATHERS.items():
            distributed.gather_with_gradient = gather  # what nt_xent(gather=True) calls
            model = torch.nn.parallel.DistributedDataParallel(_model())
            z1, z2 = _projections(model, x1, x2)
            loss = nt_xent(z1, z2, TEMPERATURE, gather=True)
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)  # what a training loop logs: the mean over ranks
            results[variant] = {"loss": (mean_loss / WORLD).item(),
                                **_step_result(model.module, loss)}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _single_process_reference() -> dict:
    model = _model()
    x1, x2 = _global_views()
    halves = [_projections(model, x1[_rank_slice(r)], x2[_rank_slice(r)]) for r in range(WORLD)]
    z1 = torch.cat([h[0] for h in halves])
    z2 = torch.cat([h[1] for h in halves])
    loss = nt_xent(z1, z2, TEMPERATURE)
    return {"loss": loss.item(), **_step_result(model, loss)}


def _max_difference(a: dict, b: dict) -> float:
    """The largest ``|a - b|`` over every tensor; NaN if any is NaN (Python's ``max`` would drop it)."""
    return torch.stack([(a[name] - b[name]).abs().max() for name in a]).max().item()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(distributed.find_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)], _single_process_reference()


def test_ddp_with_global_negatives_equals_one_process_on_the_global_batch(runs):
    ranks, reference = runs
    for result in (r["correct"] for r in ranks):
        assert result["loss"] == pytest.approx(reference["loss"], abs=TOL, rel=0)
        assert _max_difference(result["grads"], reference["grads"]) < TOL
        assert _max_difference(result["weights"], reference["weights"]) < TOL
    # The comparison has teeth: the gradients are far from zero and the step moved the weights.
    assert max(g.abs().max().item() for g in reference["grads"].values()) > 1e-2
    assert _max_difference(reference["weights"], dict(_model().named_parameters())) > 1e-3


@pytest.mark.parametrize("variant", ["without_gradient", "averaging"])
def test_wrong_gathers_give_the_same_loss_but_wrong_gradients(runs, variant):
    ranks, reference = runs
    result = ranks[0][variant]
    assert result["loss"] == pytest.approx(reference["loss"], abs=TOL, rel=0)  # forward is fine
    assert _max_difference(result["grads"], reference["grads"]) > WRONG
    assert _max_difference(result["weights"], reference["weights"]) > WRONG * LR


def test_the_stop_vote_sits_where_the_backend_can_reduce_it(monkeypatch):
    """``any_rank`` runs after every step: its tensor must be on this rank's GPU under NCCL, which
    reduces CUDA tensors only (a CPU tensor fails there at the first step), and on the CPU under
    gloo (what the torchrun test of tests/test_torch_train.py runs)."""
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert distributed.collective_device() == torch.device("cpu")


def test_a_gpu_this_machine_lacks_is_refused_with_what_it_has(monkeypatch):
    """``--device cuda:5`` on a 2-GPU machine, or a torchrun rank past the GPUs, would fail in CUDA
    as "invalid device ordinal", reported as a bug; it is a configuration to change."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"--device cuda:5 asked for GPU 5, but this machine has 2 "
                                          r"\(cuda:0 to cuda:1\)"):
        distributed.resolve_device("cuda:5")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device was reached"))
    with pytest.raises(ConfigError, match="torchrun's LOCAL_RANK=3 asked for GPU 3, but this machine "
                                          "has 2 .* run fewer processes"):
        distributed.setup_process("cuda")
