"""SimCLR pre-training in PyTorch (Chen et al., 2020, "A Simple Framework for Contrastive Learning
of Visual Representations", algorithm 1).

    python -m pytorch_simclr.train                       # the `quick` recipe: built-in data, CPU minutes
    python -m pytorch_simclr.train --recipe cifar10      # ResNet-18 on CIFAR-10
    torchrun --nproc-per-node 2 -m pytorch_simclr.train  # DDP: NT-Xent negatives from the global batch

Each step: two augmented views of every image (augment.py), one forward pass of encoder + projection
head over both views, NT-Xent over the 2N projections (losses.py), one optimiser step and one
scheduler step (optim.py). The run directory (common/runs.py) gets config.json, metrics.jsonl,
summary.json, TensorBoard events and an atomic checkpoint every epoch; ``--resume RUN_DIR`` continues
from it and, on CPU with a fixed seed, reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import types
from pathlib import Path

if __package__ in (None, ""):  # run as `python pytorch_simclr/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

# TensorBoard would import TensorFlow when it is installed (it is, for the other chapters): slow, and
# TensorFlow loaded before Triton crashes the process. tensorboard's own "no TensorFlow" switch is the
# presence of the module `tensorboard.compat.notf`; with it, event files are written by its TF stub.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import augment, cli, runs  # noqa: E402
from common.arch import resnet_spec  # noqa: E402
from common.evaluate import collapse_ratio  # noqa: E402
from common.schedules import scaled_lr  # noqa: E402
from pytorch_simclr import data  # noqa: E402
from pytorch_simclr.augment import BatchAugmenter  # noqa: E402
from pytorch_simclr.evaluate import knn_monitor  # noqa: E402
from pytorch_simclr.losses import nt_xent  # noqa: E402
from pytorch_simclr.model import ProjectionHead, SimCLRModel, build_encoder  # noqa: E402
from pytorch_simclr.optim import build_optimizer, build_scheduler  # noqa: E402

FRAMEWORK, METHOD = "pytorch", "simclr"
CHAPTER_DEFAULTS = {
    "augment_backend": "batched",
    "channels_last": False,
    "compile": False,
    "sync_bn": False,
}
COLLAPSE_RATIO_WARNING = 0.2  # warn when embedding std * sqrt(d) falls below this (1 = healthy)


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


def parse_config(argv: list[str] | None = None) -> dict:
    """The shared CLI (common/cli.py) plus this chapter's PyTorch-only flags."""
    parser = cli.build_parser(METHOD, "python -m pytorch_simclr.train", description=__doc__.split("\n\n")[0])
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
                             help="SyncBatchNorm across ranks under torchrun")
    args = parser.parse_args(argv)
    try:
        return cli.resolve_config(METHOD, args, CHAPTER_DEFAULTS)
    except cli.ConfigError as error:
        parser.error(str(error))


# ---------------------------------------------------------------------------------------------
# Distributed set-up: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain run is world size 1.


def setup_device(config: dict) -> tuple[torch.device, int, int]:
    """(device, rank, world_size); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = config["device"]
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {config['device']} asked for a GPU, but CUDA is not "
                            "available here; use --device cpu")
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if wanted.startswith("cuda"):
            wanted = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if wanted.startswith("cuda") else "gloo")
    device = torch.device(wanted)
    if config["precision"] == "fp16" and device.type != "cuda":
        raise TrainingError("--precision fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    return device, rank, world_size


def autocast(config: dict, device: torch.device):
    """bf16/fp16 autocast for the forward pass; a no-op context in fp32."""
    if config["precision"] == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config["precision"] == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Model and checkpoints


def build_model(config: dict) -> SimCLRModel:
    """Encoder (common/arch.py spec, torchvision blocks) + SimCLR projection head."""
    spec = resnet_spec(config["arch"], config["image_size"])
    encoder = build_encoder(spec)
    head = ProjectionHead(
        encoder.feature_dim, config["projection_hidden_dim"], config["projection_dim"],
        config["projection_layers"],
    )
    return SimCLRModel(encoder, head)


def new_position() -> dict:
    """Where a run stands; saved in every checkpoint so --resume continues at the exact step."""
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "wall_s": 0.0,
            "knn_init": None, "epoch_losses": []}


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One SimCLR pre-training run: set-up, the step, the epoch, checkpoints and logging."""

    def __init__(self, config: dict):
        self.config = config
        self.device, self.rank, self.world_size = setup_device(config)
        self.is_main = self.rank == 0
        if config["batch_size"] % self.world_size:
            raise TrainingError(f"--batch-size {config['batch_size']} must be divisible by the "
                                f"number of processes ({self.world_size})")
        torch.manual_seed(config["seed"])

        resuming = "run_dir" in config
        self.run_dir = Path(config["run_dir"]) if resuming else cli.new_run_dir(config, FRAMEWORK, METHOD)
        config["run_dir"] = str(self.run_dir)
        self.checkpoint_path = self.run_dir / runs.CHECKPOINTS_DIR / "last.pt"

        self.images, _ = data.load_images(config, config["train_split"])
        self.pair_spec = augment.preset(config["augment"], config["image_size"])
        self.steps = data.steps_per_epoch(len(self.images), config["batch_size"],
                                          config["max_steps_per_epoch"])
        lr = scaled_lr(config["lr"], config["batch_size"], config["lr_scaling"])

        self.model = build_model(config)
        if config["sync_bn"] and self.world_size > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        if config["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(config["optimizer"], self.model, lr,
                                         config["weight_decay"], config["momentum"],
                                         config["trust_coefficient"])
        self.scheduler = build_scheduler(self.optimizer, self.steps * config["epochs"],
                                         round(config["warmup_epochs"] * self.steps))
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=config["precision"] == "fp16")
        self.position = new_position()
        if resuming:
            self._restore()

        wrapped = self.model
        if self.world_size > 1:
            wrapped = DistributedDataParallel(self.model, device_ids=None if self.device.index
                                              is None else [self.device.index])
        self.forward = torch.compile(wrapped) if config["compile"] else wrapped
        self.augmenter = BatchAugmenter(self.pair_spec, self.device,
                                        channels_last=config["channels_last"])
        self.images_on_host = torch.from_numpy(np.ascontiguousarray(self.images))
        self.writer = self.tensorboard = None
        if self.is_main:
            self.writer = runs.RunWriter(self.run_dir, config, framework=FRAMEWORK,
                                         method=METHOD, resume=resuming)
            self.tensorboard = SummaryWriter(self.run_dir / runs.TENSORBOARD_DIR)

    # -- checkpoints ---------------------------------------------------------------------------

    def _restore(self) -> None:
        if not self.checkpoint_path.is_file():
            raise TrainingError(f"--resume {self.run_dir}: there is no checkpoint at "
                                f"{self.checkpoint_path} yet (the run stopped before its first "
                                "one); start a new run")
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state.pop("model"))
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.scaler.load_state_dict(state.pop("scaler"))
        self.position.update(state)
        if self.position["epoch"] >= self.config["epochs"]:
            raise TrainingError(f"the run in {self.run_dir} has finished its "
                                f"{self.config['epochs']} epochs; pass a larger --epochs with "
                                "--resume to train it further")

    def save_checkpoint(self) -> None:
        """One atomic file (temp + rename): a crash or a full disk never corrupts the last one."""
        self.position["wall_s"] = time.perf_counter() - self.start_wall
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    **self.position}, buffer)
        try:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            runs.atomic_write_bytes(self.checkpoint_path, buffer.getvalue())
        except OSError as error:
            raise TrainingError(
                f"could not write the checkpoint {self.checkpoint_path} "
                f"({error.strerror or error}); the previous checkpoint is intact. Free disk "
                "space or pick another --output-dir, then --resume."
            ) from error

    # -- one step --------------------------------------------------------------------------------

    def train_step(self, view1: torch.Tensor, view2: torch.Tensor) -> float:
        """Both views in one forward pass (BN sees the 2N batch), NT-Xent, one optimiser step."""
        with autocast(self.config, self.device):
            _, z = self.forward(torch.cat([view1, view2]))
        z1, z2 = z.float().chunk(2)
        loss = nt_xent(z1, z2, self.config["temperature"], gather=self.world_size > 1)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at epoch {self.position['epoch'] + 1}, step "
                f"{self.position['step_in_epoch'] + 1}. The last good checkpoint is kept at "
                f"{self.checkpoint_path}. Lower --lr, use --precision fp32, or check the data; "
                f"then --resume {self.run_dir}."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()  # per optimisation step: the schedule's horizon is in steps
        self.last_embeddings = z1.detach()
        return loss.item()

    # -- one epoch -------------------------------------------------------------------------------

    def view_batches(self, epoch: int, first_step: int):
        """Yield (view1, view2) on the device for the steps ``first_step..`` of ``epoch``."""
        config = self.config
        batches = data.epoch_batches(len(self.images), config["batch_size"] // self.world_size,
                                     epoch, config["seed"], self.rank, self.world_size)
        batches = batches[first_step: self.steps]
        if config["augment_backend"] == "per-image":
            loader = data.per_image_loader(self.images, self.pair_spec, batches,
                                           config["workers"], seed=config["seed"] + epoch)
            memory_format = (torch.channels_last if config["channels_last"]
                             else torch.contiguous_format)
            for view1, view2 in loader:
                yield (view1.to(self.device, memory_format=memory_format, non_blocking=True),
                       view2.to(self.device, memory_format=memory_format, non_blocking=True))
            return
        for step, indices in enumerate(batches, start=first_step):
            # One generator per (seed, epoch, step, rank): a resumed run draws the same views.
            rng = np.random.default_rng((config["seed"], epoch, step, self.rank))
            uint8_batch = self.images_on_host[indices].to(self.device, non_blocking=True)
            yield self.augmenter(uint8_batch, rng)

    def run_epoch(self, epoch: int) -> None:
        config, position = self.config, self.position
        self.model.train()
        first = position["step_in_epoch"]
        progress = tqdm(self.view_batches(epoch, first), total=self.steps, initial=first,
                        desc=f"epoch {epoch + 1}/{config['epochs']}", disable=not self.is_main,
                        dynamic_ncols=True, leave=False)
        tick = time.perf_counter()
        for view1, view2 in progress:
            loss = self.train_step(view1, view2)
            position["global_step"] += 1
            position["step_in_epoch"] += 1
            position["epoch_losses"].append(loss)
            now = time.perf_counter()
            images_per_sec, tick = config["batch_size"] / max(now - tick, 1e-9), now
            lr = self.scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_sec:.0f}")
            if self.is_main and position["global_step"] % config["log_every"] == 0:
                self.log(epoch=epoch + 1, loss=loss, lr=lr, images_per_sec=images_per_sec)
        progress.close()

    def end_epoch(self, epoch: int) -> float | None:
        """kNN monitor, collapse diagnostic, epoch metrics and the checkpoint (rank 0 only)."""
        config, position = self.config, self.position
        mean_loss = float(np.mean(position["epoch_losses"]))
        position.update(epoch=epoch + 1, step_in_epoch=0, epoch_losses=[])
        if not self.is_main:
            return None
        last = epoch + 1 == config["epochs"]
        every = config["knn_every"]
        knn_top1 = None
        if last or (every and (epoch + 1) % every == 0):
            knn_top1 = knn_monitor(self.model.encoder, config, self.device)["top1"]
        z = self.last_embeddings.double().cpu().numpy()
        ratio = collapse_ratio(z)
        self.log(epoch=epoch + 1, loss=mean_loss, lr=self.scheduler.get_last_lr()[0],
                 knn_top1=knn_top1, collapse_ratio=ratio, tag="epoch")
        knn_text = f", kNN top-1 {knn_top1:.4f}" if knn_top1 is not None else ""
        print(f"epoch {epoch + 1}/{config['epochs']}: loss {mean_loss:.4f}{knn_text}, "
              f"{time.perf_counter() - self.start_wall:.0f} s")
        if ratio < COLLAPSE_RATIO_WARNING:
            print(f"warning: the embeddings are collapsing (std x sqrt(d) = {ratio:.3f};"
                  " 1 is healthy, 0 is a constant embedding). Try a lower --lr or a higher "
                  "--temperature.")
        self.save_checkpoint()
        return knn_top1

    def log(self, *, epoch: int, tag: str = "train", **metrics) -> None:
        """One metrics.jsonl row and the matching TensorBoard scalars."""
        step = self.position["global_step"]
        self.writer.log(epoch=epoch, step=step, wall_s=time.perf_counter() - self.start_wall,
                        **metrics)
        for name, value in metrics.items():
            if value is not None:
                self.tensorboard.add_scalar(f"{tag}/{name}", value, step)

    # -- the whole run ---------------------------------------------------------------------------

    def fit(self) -> dict:
        config, position = self.config, self.position
        self.start_wall = time.perf_counter() - position["wall_s"]
        if self.is_main:
            print(f"SimCLR / PyTorch, recipe {config['recipe']!r}; resolved configuration:")
            print(cli.format_config(config))
            print(f"run directory: {self.run_dir}")
            print(f"{len(self.images)} training images, {self.steps} steps/epoch, "
                  f"{self.world_size} process(es), device {self.device}, "
                  f"{sum(p.numel() for p in self.model.parameters()):,} parameters")
            if position["knn_init"] is None:
                position["knn_init"] = knn_monitor(self.model.encoder, config,
                                                   self.device)["top1"]
                self.log(epoch=0, knn_top1=position["knn_init"], tag="epoch")
                print(f"kNN top-1 of the random-init encoder: {position['knn_init']:.4f}")
        knn_top1, final_loss = None, None
        try:
            for epoch in range(position["epoch"], config["epochs"]):
                self.run_epoch(epoch)
                final_loss = float(np.mean(position["epoch_losses"]))
                knn_top1 = self.end_epoch(epoch)
        except KeyboardInterrupt:
            if self.is_main:
                self.save_checkpoint()
                print(f"\ninterrupted: checkpoint saved at epoch {position['epoch'] + 1}, step "
                      f"{position['step_in_epoch']}. Continue with: python -m "
                      f"pytorch_simclr.train --resume {self.run_dir}")
            raise
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
            if self.world_size > 1 and dist.is_initialized():
                dist.destroy_process_group()
        summary = {"framework": FRAMEWORK, "method": METHOD, "recipe": config["recipe"],
                   "epochs": config["epochs"], "steps": position["global_step"],
                   "final_loss": final_loss, "knn_top1_init": position["knn_init"],
                   "knn_top1": knn_top1, "wall_s": time.perf_counter() - self.start_wall}
        if self.is_main:
            self.writer.write_summary(summary)
            self.writer.close()
            print(f"kNN top-1: random-init encoder {position['knn_init']:.4f} -> trained encoder "
                  f"{knn_top1:.4f}")
            print(f"run directory: {self.run_dir}  (evaluate: python -m pytorch_simclr.evaluate "
                  f"{self.run_dir})")
        return summary


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        Trainer(config).fit()
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
