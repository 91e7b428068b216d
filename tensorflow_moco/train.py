"""MoCo v2 pre-training in TensorFlow (He et al. 2020, algorithm 1; Chen et al. 2020).

    python -m tensorflow_moco.train                       # the `quick` recipe: built-in data, CPU minutes
    python -m tensorflow_moco.train --recipe cifar10      # ResNet-18 on CIFAR-10 (the MoCo CIFAR demo)
    python -m tensorflow_moco.train --strategy mirrored   # every local GPU, one process
    TF_CONFIG=... python -m tensorflow_moco.train --strategy multiworker   # one process per machine

Each step (step.py, under the chosen ``tf.distribute`` strategy): both views of every image of the
replica's shard (augment.py, with the shared stream's view parameters), the keys of view 2 from the
key network with Shuffle BN, the queries of view 1, InfoNCE against the queue (losses.py), the
optimiser on the query network only, then the momentum update of the key network and the enqueue of
the step's keys. This file is the TensorFlow half of the chapter contract (docs/ARCHITECTURE.md): the
networks, the step, the epoch loop and the native ``tf.train.Checkpoint``. The run policy -- run
directory, resume, the kNN monitor's schedule, Ctrl-C / NaN / full-disk handling, the metrics rows
and summary -- is ``common.session``'s.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python tensorflow_moco/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import augment, cli  # noqa: E402
from common.arch import encoder_spec  # noqa: E402
from common.errors import run_main  # noqa: E402
from common.evaluate import flow  # noqa: E402
from common.schedules import ema_rise  # noqa: E402
from common.session import TrainingSession  # noqa: E402
from tensorflow_moco import CHAPTER, data, distributed  # noqa: E402
from tensorflow_moco.evaluate import CHECKPOINT_PREFIX, TFEncoder, build_moco, checkpoint_of  # noqa: E402
from tensorflow_moco.model import KEY_BN_STATS, import_encoder  # noqa: E402
from tensorflow_moco.optim import build_optimizer  # noqa: E402
from tensorflow_moco.step import StepConfig, make_train_step  # noqa: E402

CHAPTER_DEFAULTS = {
    "strategy": "auto",
    "jit_compile": False,
    "key_bn_stats": "skip",
}
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
OP_ERRNO = {tf.errors.ResourceExhaustedError: errno.ENOSPC, tf.errors.PermissionDeniedError: errno.EACCES}
"""The OS error a TensorFlow error met while writing a checkpoint stands for (a full disk is a
ResourceExhaustedError there), so the session's message says what to fix; any other is EIO."""


def parse_request(argv: list[str] | None = None) -> cli.RunRequest:
    """The shared CLI (common/cli.py) plus this chapter's TensorFlow-only flags."""
    parser = cli.build_parser(CHAPTER, description=__doc__.split("\n\n")[0])
    tf_flags = parser.add_argument_group("TensorFlow flags")
    tf_flags.add_argument("--strategy", choices=distributed.STRATEGIES, default=None,
                          help="auto: MirroredStrategy over the local GPUs, else one device; "
                               "multiworker reads TF_CONFIG; tpu connects to the TPU of the "
                               "environment")
    tf_flags.add_argument("--jit-compile", action="store_true", default=None,
                          help="compile each step with XLA (one replica; on the CPU only with the "
                               "default strategy)")
    tf_flags.add_argument("--key-bn-stats", choices=KEY_BN_STATS, default=None,
                          help="the key encoder's BN moving statistics: skip (its own, as MoCo's "
                               "code), copy or average the query encoder's")
    return cli.parse(parser, CHAPTER, argv, CHAPTER_DEFAULTS)


class Trainer:
    """One MoCo v2 pre-training run: the networks, one step, the epoch loop, native checkpoints."""

    def __init__(self, request: cli.RunRequest):
        config = self.config = request.config
        # The strategy first: MultiWorkerMirroredStrategy sets up the collective runtime, which must
        # happen before any other TensorFlow op.
        self.strategy = distributed.build_strategy(config["strategy"])
        if note := distributed.check_batch_split(config["batch_size"], self.strategy.num_replicas_in_sync,
                                                 config["bn_splits"]):
            print(note, file=sys.stderr)
        keras.utils.set_random_seed(config["seed"])  # the networks' initialisation
        self.images, _ = data.load_images(config, config["train_split"])
        if config["queue_size"] >= len(self.images):
            raise cli.ConfigError(
                f"--queue-size {config['queue_size']} is not smaller than the {len(self.images)} "
                "training images: the queue would hold keys of the very images it contrasts (MoCo's "
                "65,536 is 5% of ImageNet, the CIFAR demo's 4,096 is 8% of CIFAR-10)")
        self.pair_spec = augment.preset(config["augment"], config["image_size"])
        rank, workers = distributed.worker_position(self.strategy)
        self.session = TrainingSession(
            CHAPTER, request, images=self.images, pair_spec=self.pair_spec, rank=rank,
            world_size=workers, replicas=self.strategy.num_replicas_in_sync,
            agree=lambda flag: distributed.any_replica(self.strategy, flag))
        schedule = self.session.schedule
        policy = POLICIES[config["precision"]]
        with self.strategy.scope():
            self.moco = build_moco(config, dtype=policy)
            self.optimizer = build_optimizer(
                config["optimizer"], self.moco.query_variables, schedule,
                weight_decay=config["weight_decay"], momentum=config["momentum"],
                eta=config["trust_coefficient"], lars_variant=config["lars_variant"],
                loss_scaling=policy == "mixed_float16")
        self.checkpoint = checkpoint_of(self.moco, self.optimizer)
        self.session.restore(self.load_state, self.import_encoder)
        step_config = StepConfig(self.pair_spec, config["batch_size"], config["temperature"],
                                 config["shuffle_bn"], config["symmetric_loss"], config["jit_compile"])
        self.train_step = make_train_step(self.strategy, self.moco, self.optimizer, step_config)
        self.encoder = TFEncoder(self.moco, config)

    # -- native checkpoints (the session decides when, and where) --------------------------------

    def save_state(self, folder: Path) -> None:
        try:
            self.checkpoint.write(str(folder / CHECKPOINT_PREFIX))
        except tf.errors.OpError as error:  # TensorFlow's own errors, not OSErrors: name the cause
            raise OSError(OP_ERRNO.get(type(error), errno.EIO), error.message) from error

    def load_state(self, folder: Path) -> None:
        self.checkpoint.read(str(folder / CHECKPOINT_PREFIX)).assert_consumed()
        if int(self.optimizer.iterations) != self.session.position.global_step:
            raise ValueError(f"the optimizer has taken {int(self.optimizer.iterations)} steps, the run "
                             f"{self.session.position.global_step}")

    def import_encoder(self, path: Path) -> None:
        """A new run's query encoder from a portable file (``--init-encoder``), copied to the key
        network as at construction; the heads and the queue keep their draw."""
        with self.strategy.scope():
            import_encoder(path, self.moco.query_encoder, encoder_spec(self.config))
            self.moco.copy_query_to_key()

    def weights_finite(self) -> bool:
        return all(np.isfinite(np.asarray(weight)).all() for weight in self.moco.weights)

    # -- the run -----------------------------------------------------------------------------------

    def key_momentum(self, step: int) -> tf.Tensor:
        """m of step ``step``: the recipe's constant, or rising to 1 along a cosine (continued
        without a jump when the run is extended, ``common.schedules.ema_rise``)."""
        config = self.config
        m = config["key_momentum"]
        if config["key_momentum_schedule"] == "cosine":
            m = ema_rise(m, self.session.schedule).rate(step)
        return tf.constant(m, tf.float32)

    def knn(self) -> float:
        return flow.knn_top1(self.encoder.features, self.config)

    def representation(self) -> np.ndarray:
        return flow.representation_sample(self.encoder.features, self.images, self.config)

    def fit(self) -> dict:
        session, schedule = self.session, self.session.schedule
        parameters = sum(int(np.prod(v.shape)) for v in self.moco.query_variables)
        detail = f"{self.strategy.num_replicas_in_sync} replica(s) ({type(self.strategy).__name__})"
        with session.training(self.save_state, self.weights_finite, parameters, detail=detail):
            session.initial_knn(self.knn)
            for epoch in session.epochs():
                inputs = data.distribute_stream(self.strategy, self.images, session.stream, epoch,
                                                session.position.step_in_epoch)
                for _, element in zip(session.steps(epoch), inputs, strict=True):
                    global_step = session.position.global_step
                    outputs = self.train_step(*element, self.key_momentum(global_step))
                    session.step_done(float(outputs["loss"]), schedule.rate(global_step))
                session.end_epoch(self.knn, representation=self.representation)
            return session.finish()


def main(argv: list[str] | None = None) -> int:
    def train() -> int:
        Trainer(parse_request(argv)).fit()
        return 0

    return run_main(CHAPTER.train_command, train)


if __name__ == "__main__":
    sys.exit(main())
