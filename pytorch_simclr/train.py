"""SimCLR pre-training in PyTorch (Chen et al., 2020, "A Simple Framework for Contrastive Learning
of Visual Representations", algorithm 1).

    python -m pytorch_simclr.train                       # the `quick` recipe: built-in data, CPU minutes
    python -m pytorch_simclr.train --recipe cifar10      # ResNet-18 on CIFAR-10
    torchrun --nproc-per-node 2 -m pytorch_simclr.train  # DDP: NT-Xent negatives from the global batch

Each step: two augmented views of every image (augment_batched.py, with the view parameters of the
shared data stream), one forward pass of encoder + projection head over both views, NT-Xent over
the 2N projections (losses.py), one optimiser step and one scheduler step (optim.py). This file is
the PyTorch half of the chapter contract (docs/ARCHITECTURE.md): the model, the step, the epoch loop
and the native checkpoint. The run policy -- run directory, resume, the kNN monitor's schedule,
Ctrl-C / NaN / full-disk handling, the metrics rows and summary -- is ``common.session``'s.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python pytorch_simclr/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from common import augment, cli  # noqa: E402
from common.arch import encoder_spec  # noqa: E402
from common.chapter import Chapter  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.evaluate import flow  # noqa: E402
from common.session import TrainingSession  # noqa: E402
from common.stream import process_seed  # noqa: E402
from pytorch_simclr import CHAPTER, data, distributed  # noqa: E402
from pytorch_simclr.augment_batched import BatchAugmenter  # noqa: E402
from pytorch_simclr.evaluate import STATE_FILE, TorchEncoder  # noqa: E402
from pytorch_simclr.losses import nt_xent  # noqa: E402
from pytorch_simclr.model import build_model, import_encoder  # noqa: E402
from pytorch_simclr.optim import build_optimizer, build_scheduler  # noqa: E402

CHAPTER_DEFAULTS = {
    "augment_backend": "batched",
    "channels_last": False,
    "compile": False,
    "sync_bn": False,
}


def parse_request(argv: list[str] | None = None, chapter: Chapter = CHAPTER) -> cli.RunRequest:
    """The shared CLI (common/cli.py) plus this chapter's PyTorch-only flags."""
    parser = cli.build_parser(chapter, description=__doc__.split("\n\n")[0])
    torch_flags = parser.add_argument_group("PyTorch flags")
    torch_flags.add_argument(
        "--augment-backend", choices=("batched", "per-image"), default=None,
        help="batched: views made on the training device from uint8 batches (default); "
        "per-image: torchvision.transforms.v2 in DataLoader workers",
    )
    torch_flags.add_argument("--channels-last", action="store_true", default=None,
                             help="NHWC memory format for the convolutions")
    torch_flags.add_argument("--compile", action="store_true", default=None,
                             help="torch.compile the model")
    torch_flags.add_argument("--sync-bn", action="store_true", default=None,
                             help="SyncBatchNorm across ranks under torchrun (GPU)")
    request = cli.parse(parser, chapter, argv, CHAPTER_DEFAULTS)
    config = request.config
    if config["augment_backend"] == "batched" and "workers" in request.given:  # typed, even as 2
        way_on = ("leave --workers out: a resumed run keeps its --augment-backend" if request.resume
                  else "add --augment-backend per-image to make them in worker processes")
        parser.error(f"--workers {config['workers']} has no effect with --augment-backend batched "
                     "(the default): the views are made on the training device and no DataLoader "
                     f"runs; {way_on}")
    return request


def autocast(precision: str, device: torch.device):
    """bf16/fp16 autocast for the forward pass; a no-op context in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise cli.ConfigError("--precision fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Trainer:
    """One SimCLR pre-training run: the model, one step, the epoch loop, native checkpoints.

    The objective is two methods, :meth:`build_network` and :meth:`loss`; ``supervised.py`` trains
    the same encoder on the labels by overriding just those.
    """

    chapter = CHAPTER

    def __init__(self, request: cli.RunRequest):
        config = self.config = request.config
        self.device, self.rank, self.world_size = distributed.setup_process(config["device"])
        if config["sync_bn"] and self.world_size > 1 and self.device.type != "cuda":
            raise cli.ConfigError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm has no CPU "
                                  "implementation. Leave it out on the CPU: each process then "
                                  "normalises over its own shard of the batch")
        self.autocast = autocast(config["precision"], self.device)
        torch.manual_seed(config["seed"])
        self.images, _ = data.load_images(config, config["train_split"])
        self.pair_spec = augment.preset(config["augment"], config["image_size"])

        self.model = self.build_network(config)
        if config["sync_bn"] and self.world_size > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        if config["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.session = TrainingSession(self.chapter, request, images=self.images, pair_spec=self.pair_spec,
                                       rank=self.rank, world_size=self.world_size,
                                       agree=distributed.any_rank)
        schedule = self.session.schedule
        self.optimizer = build_optimizer(config["optimizer"], self.model, schedule.base_lr,
                                         config["weight_decay"], config["momentum"],
                                         config["trust_coefficient"], config["lars_variant"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config["precision"] == "fp16")
        self.session.restore(self.load_state, self.import_encoder)
        self.scheduler = build_scheduler(self.optimizer, schedule, self.session.position.global_step)

        wrapped = self.model
        if self.world_size > 1:
            wrapped = DistributedDataParallel(self.model, device_ids=None if self.device.index
                                              is None else [self.device.index])
        self.forward = torch.compile(wrapped) if config["compile"] else wrapped
        self.augmenter = BatchAugmenter(self.pair_spec, self.device, channels_last=config["channels_last"])
        self.encoder = TorchEncoder(self.model, config, self.device)

    # -- native checkpoints (the session decides when, and where) --------------------------------

    def save_state(self, folder: Path) -> None:
        buffer = io.BytesIO()  # serialised first, so a full disk is an OSError of the write below
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict()}, buffer)
        (folder / STATE_FILE).write_bytes(buffer.getvalue())

    def load_state(self, folder: Path) -> None:
        state = torch.load(folder / STATE_FILE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def import_encoder(self, path: Path) -> None:
        """A new run's encoder from a portable file (``--init-encoder``); the head keeps its draw."""
        import_encoder(path, self.model.encoder, encoder_spec(self.config))

    def weights_finite(self) -> bool:
        return all(torch.isfinite(t).all() for t in self.model.state_dict().values()
                   if t.is_floating_point())

    # -- one step ----------------------------------------------------------------------------------

    def build_network(self, config: dict) -> torch.nn.Module:
        """Encoder + SimCLR's projection head (model.py)."""
        return build_model(config)

    def loss(self, batch, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Both views in one forward pass (BN sees the 2N batch), NT-Xent over the projections."""
        with self.autocast:
            _, z = self.forward(torch.cat([view1, view2]))
        z1, z2 = z.float().chunk(2)
        return nt_xent(z1, z2, self.config["temperature"], gather=self.world_size > 1)

    def train_step(self, batch, view1: torch.Tensor, view2: torch.Tensor) -> float:
        """The loss of the step's ``batch`` (its indices and views), one optimiser step."""
        loss = self.loss(batch, view1, view2)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()  # per optimisation step: the schedule's horizon is in steps
        return distributed.mean_over_ranks(loss)  # the global batch's loss, on every rank

    def views(self, epoch: int):
        """``(batch, view1, view2)`` for the remaining steps of ``epoch``, on the device."""
        config, session = self.config, self.session
        if config["augment_backend"] == "per-image":
            seed = process_seed(config["seed"], epoch, self.rank)  # each rank and epoch its own draws
            loader = data.per_image_loader(self.images, self.pair_spec, session.remaining_batches(epoch),
                                           config["workers"], seed=seed)
            layout = torch.channels_last if config["channels_last"] else torch.contiguous_format
            for (_, batch), (view1, view2) in zip(session.steps(epoch), loader, strict=True):
                yield (batch, view1.to(self.device, memory_format=layout, non_blocking=True),
                       view2.to(self.device, memory_format=layout, non_blocking=True))
            return
        for _, batch in session.steps(epoch):
            uint8_batch = torch.from_numpy(self.images[batch.indices]).to(self.device, non_blocking=True)
            yield (batch, *self.augmenter(uint8_batch, batch.view1, batch.view2))

    # -- the run -----------------------------------------------------------------------------------

    def knn(self) -> float:
        return flow.knn_top1(self.encoder.features, self.config)

    def representation(self) -> np.ndarray:
        return flow.representation_sample(self.encoder.features, self.images, self.config)

    def fit(self) -> dict:
        session = self.session
        parameters = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        try:
            with session.training(self.save_state, self.weights_finite, parameters,
                                  detail=f"device {self.device}"):
                session.initial_knn(self.knn)
                for epoch in session.epochs():
                    self.model.train()
                    for batch, view1, view2 in self.views(epoch):
                        lr = self.optimizer.param_groups[0]["lr"]  # this step's rate
                        session.step_done(self.train_step(batch, view1, view2), lr)
                    session.end_epoch(self.knn, representation=self.representation)
                return session.finish()
        finally:
            distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    def train() -> int:
        Trainer(parse_request(argv)).fit()
        return 0

    return run_main(Trainer.chapter.train_command, train)


if __name__ == "__main__":
    sys.exit(main())
