"""BYOL pre-training in Keras 3 (Grill et al. 2020, algorithm 1), on TensorFlow, JAX or PyTorch.

    python -m keras_byol.train                        # the `quick` recipe: built-in data, CPU minutes
    python -m keras_byol.train --backend jax          # the same code on JAX (or torch)
    python -m keras_byol.train --recipe cifar10       # ResNet-18 on CIFAR-10 (solo-learn's BYOL)
    python -m keras_byol.train --backend jax --devices 2   # data-parallel over 2 devices

Each step (``BYOL.train_step``, byol.py): both views of the step's images (augment.py, with the
shared stream's view parameters), the online network's predictions and the target's projections,
the symmetrised loss with stop-gradient on the targets, the optimiser on the online network, then the
target's EMA step. The Keras way: one ``model.fit`` per epoch over the stream (data.py), with a
callback that reports every step to the run policy. ``--devices N`` trains data-parallel on N
devices of this machine (distributed.py: JAX and TensorFlow; not the torch backend of Keras 3.15.1).
This file is the Keras half of the chapter
contract (docs/ARCHITECTURE.md): the model, the loop and the native checkpoint; the run policy --
run directory, resume, the kNN monitor's schedule, Ctrl-C / NaN / full-disk handling, the metrics
rows and summary -- is ``common.session``'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python keras_byol/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_byol import backend  # noqa: E402  (no Keras yet)

if __name__ == "__main__":  # the backend must be chosen before anything imports Keras
    backend.choose_at_start(backend.from_command_line(sys.argv[1:]), "python -m keras_byol.train")
    backend.prepare_host_devices(backend.from_command_line(sys.argv[1:], "--devices"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from common import allocator, augment, cli, datasets  # noqa: E402
from common.arch import encoder_spec  # noqa: E402
from common.errors import ConfigError, run_main  # noqa: E402
from common.evaluate import flow  # noqa: E402
from common.schedules import ema_rise  # noqa: E402
from common.session import TrainingSession  # noqa: E402
from keras_byol import CHAPTER, distributed  # noqa: E402
from keras_byol.data import StreamDataset  # noqa: E402
from keras_byol.evaluate import WEIGHTS_FILE, KerasEncoder, build_byol  # noqa: E402
from keras_byol.model import import_encoder  # noqa: E402
from keras_byol.optim import build_optimizer  # noqa: E402
from keras_byol.target import BN_STATS_MODES  # noqa: E402

OPTIMIZER_FILE = "optimizer.npz"  # the optimizer's variables in a checkpoint folder
CHAPTER_DEFAULTS = {"target_bn_stats": "skip", "jit_compile": None, "devices": 1, "sync_bn": True,
                    "compile_views": False}


def parse_request(argv: list[str] | None = None) -> cli.RunRequest:
    """The shared CLI (common/cli.py) plus this chapter's Keras-only flags."""
    parser = cli.build_parser(CHAPTER, description=__doc__.split("\n\n")[0])
    keras_flags = parser.add_argument_group("Keras flags")
    keras_flags.add_argument("--backend", choices=backend.BACKENDS, default=None,
                             help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    keras_flags.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                             help="compile the step with XLA (default: Keras' choice per backend: "
                                  "yes on JAX, and on TensorFlow with a GPU or TPU and no tf.distribute "
                                  "strategy)")
    keras_flags.add_argument("--compile-views", action=argparse.BooleanOptionalAction, default=None,
                             help="PyTorch backend: run the views compiled by torch.compile (about "
                                  "20 s to compile, then 2x faster views; TensorFlow and JAX compile "
                                  "them with the step)")
    keras_flags.add_argument("--target-bn-stats", choices=BN_STATS_MODES, default=None,
                             help="the target's BN moving statistics: skip (its own, as the BYOL "
                                  "code), average or copy the online network's")
    keras_flags.add_argument("--devices", type=distributed.parse_devices, default=None,
                             metavar="N|all",
                             help="train data-parallel on N devices of this machine (JAX: "
                                  "keras.distribution.DataParallel; TensorFlow: MirroredStrategy; "
                                  "on a CPU they are split into N logical devices); default 1")
    keras_flags.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                             help="with several devices, BatchNorm over the global batch (default, "
                                  "as BYOL's code; JAX always); --no-sync-bn: per device "
                                  "(TensorFlow only)")
    defaults = {**CHAPTER_DEFAULTS, "backend": backend.loaded() or backend.choose(None)}
    request = cli.parse(parser, CHAPTER, argv, defaults)
    config = request.config
    if not config["sync_bn"] and config["devices"] != 1 and config["target_bn_stats"] != "skip":
        # The EMA runs in cross-replica context (distributed.py), where a per-replica variable
        # reads as one replica's copy and an assignment writes every copy.
        parser.error(f"--target-bn-stats {config['target_bn_stats']} with --no-sync-bn on several "
                     "devices: each replica's BN statistics are its own, and the target's update "
                     "would write one replica's value into every copy. Use --target-bn-stats skip "
                     "(BYOL's own), or leave --no-sync-bn out")
    return request


class SessionCallback(keras.callbacks.Callback):
    """Reports every step of ``fit`` to the run policy: the step's own loss and rate.

    On TensorFlow, ``fit`` feeds the ``StreamDataset`` through a ``tf.data`` generator dataset, whose
    first iterator switches off glibc's reuse of large buffers (30% slower steps on a CPU); by the
    first batch that iterator exists, and the callback switches the reuse back on
    (``common/allocator.py``).
    """

    def __init__(self, session: TrainingSession):
        super().__init__()
        self.session = session

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0 and keras.backend.backend() == "tensorflow":
            allocator.keep_large_buffers()
        self.session.begin_step()

    def on_train_batch_end(self, batch, logs=None):
        session = self.session
        rate = session.schedule.rate(session.position.global_step)
        session.step_done(float(logs["step_loss"]), rate)


class Trainer:
    """One BYOL pre-training run: the model, the loop of ``fit`` calls, native checkpoints."""

    def __init__(self, request: cli.RunRequest):
        config = self.config = request.config
        backend.choose(config["backend"])
        if config["compile_views"]:
            if config["backend"] != "torch":
                raise ConfigError(f"--compile-views is for the PyTorch backend: on {config['backend']} "
                                  "the views are compiled with the training step already; drop the flag")
            from keras_byol.torch_views import missing_compiler

            if problem := missing_compiler():
                raise ConfigError(problem)
        # Before any TensorFlow op: a CPU is split into logical devices before its runtime starts.
        self.placement = distributed.place(config.get("devices", 1), config["batch_size"],
                                           sync_bn=config.get("sync_bn", True))
        if config["jit_compile"] and self.placement.strategy is not None:
            raise ConfigError("--jit-compile with several devices on TensorFlow: XLA cannot compile "
                              "a step across MirroredStrategy's replicas (their variables live on "
                              "other devices); drop --jit-compile (Keras leaves XLA off under "
                              "tf.distribute), or use --backend jax, which compiles the whole "
                              "data-parallel step")
        backend.set_random_seed(config["seed"])  # the networks' initialisation
        self.images, _ = datasets.load(config["dataset"], config["train_split"], root=config.get("data_dir"))
        pair_spec = augment.preset(config["augment"], config["image_size"])
        self.session = TrainingSession(CHAPTER, request, images=self.images, pair_spec=pair_spec,
                                       replicas=self.placement.count)
        schedule = self.session.schedule
        with self.placement.scope():  # TensorFlow: variables mirrored, optimizer built on them
            self.model = build_byol(config, tau=ema_rise(config["target_momentum"], schedule),
                                    sync_bn=self.placement.sync_bn)
            self.model.compile(optimizer=build_optimizer(
                config["optimizer"], schedule, weight_decay=config["weight_decay"],
                momentum=config["momentum"], eta=config["trust_coefficient"],
                lars_variant=config["lars_variant"]),
                jit_compile="auto" if config["jit_compile"] is None else config["jit_compile"])
            self.session.restore(self.load_state, self.import_encoder)
        self.encoder = KerasEncoder(self.model, config, replicas=self.placement.count)

    # -- native checkpoints (the session decides when, and where) --------------------------------

    def _sync(self) -> None:
        """On JAX, write the state ``fit`` threads through its steps back into the variables."""
        if keras.backend.backend() == "jax" and getattr(self.model, "_jax_state", None):
            self.model.jax_state_sync()

    def import_encoder(self, path: Path) -> None:
        """A new run's online encoder from a portable file (``--init-encoder``); the projector, the
        predictor and the target network keep their draws (BYOL initialises the target
        independently of the online network, ``byol.BYOL``)."""
        import_encoder(path, self.model.online_encoder, encoder_spec(self.config))

    def save_state(self, folder: Path) -> None:
        self._sync()
        self.model.save_weights(folder / WEIGHTS_FILE)
        store = {}
        self.model.optimizer.save_own_variables(store)
        with open(folder / OPTIMIZER_FILE, "wb") as handle:
            np.savez(handle, **store)

    def load_state(self, folder: Path) -> None:
        self.model.load_weights(folder / WEIGHTS_FILE)
        with np.load(folder / OPTIMIZER_FILE) as store:
            self.model.optimizer.load_own_variables(dict(store))
        step = self.session.position.global_step
        if int(ops.convert_to_numpy(self.model.optimizer.iterations)) != step:
            raise ValueError("the optimizer's step counter does not match the run's position")
        if int(ops.convert_to_numpy(self.model.ema_step)) != step:  # the target's tau reads it
            raise ValueError("the target's EMA step counter does not match the run's position")

    def weights_finite(self) -> bool:
        self._sync()
        return all(np.isfinite(ops.convert_to_numpy(v)).all() for v in self.model.weights
                   if "float" in str(v.dtype))

    # -- the run -----------------------------------------------------------------------------------

    def knn(self) -> float:
        return flow.knn_top1(self.encoder.features, self.config)

    def representation(self) -> np.ndarray:
        return flow.representation_sample(self.encoder.features, self.images, self.config)

    def fit(self) -> dict:
        session = self.session
        parameters = sum(int(np.prod(v.shape)) for v in self.model.trainable_variables)
        callbacks = [SessionCallback(session)]
        with session.training(self.save_state, self.weights_finite, parameters,
                              detail=f"Keras on {keras.backend.backend()}, {self.placement.describe()}"):
            session.initial_knn(self.knn)
            for epoch in session.epochs():
                remaining = StreamDataset(self.images, session.stream, epoch, session.position.step_in_epoch)
                session.begin_epoch(epoch)
                if len(remaining):
                    self.model.fit(remaining, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
                session.end_epoch(self.knn, representation=self.representation)
            return session.finish()


def main(argv: list[str] | None = None) -> int:
    def train() -> int:
        Trainer(parse_request(argv)).fit()
        return 0

    return run_main(CHAPTER.train_command, train)


if __name__ == "__main__":
    sys.exit(main())
