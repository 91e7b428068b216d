"""Evaluate a MoCo run: frozen features -> kNN, linear probe, label efficiency, diagnostics.

    python -m tensorflow_moco.evaluate RUN_DIR                       # the run's latest checkpoint
    python -m tensorflow_moco.evaluate RUN_DIR --encoder OTHER.safetensors   # any chapter's encoder

The TensorFlow part is only :class:`TFEncoder`: the query encoder in inference mode on the images
``common/evaluate/flow.py`` hands it, and both views through the query network for the diagnostics.
The flow (splits, protocols, ``evaluation.json``, the command line) is common, so the numbers compare
across the chapters. MoCo evaluates the *query* encoder (He et al. 2020, section 4): it is the one
trained by back-propagation, and the one exported to RUN_DIR/encoder.safetensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python tensorflow_moco/evaluate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.arch import encoder_spec  # noqa: E402
from common.augment import preset  # noqa: E402
from common.augment.dense import dense_view_params  # noqa: E402
from common.evaluate import flow  # noqa: E402
from tensorflow_moco import CHAPTER  # noqa: E402
from tensorflow_moco.augment import apply_view  # noqa: E402
from tensorflow_moco.model import BatchNorm, MoCo, export_encoder, import_encoder  # noqa: E402

CHECKPOINT_PREFIX = "moco"  # tf.train.Checkpoint files in a checkpoint folder: moco.index, moco.data-*


def build_moco(config: dict, dtype=None) -> MoCo:
    """The query/key networks and queue of a run's configuration (call inside ``strategy.scope()``)."""
    return MoCo(encoder_spec(config),
                projection_dim=config["projection_dim"], hidden_dim=config["projection_hidden_dim"],
                head_layers=config["projection_layers"], queue_size=config["queue_size"],
                bn_splits=config["bn_splits"], key_bn_stats=config["key_bn_stats"], dtype=dtype,
                seed=config["seed"])


def checkpoint_of(moco: MoCo, optimizer=None) -> tf.train.Checkpoint:
    """What a checkpoint holds: both networks, the queue and its pointer (all in ``moco``), and the
    optimizer with its step counter and momentum buffers."""
    return tf.train.Checkpoint(moco=moco) if optimizer is None else \
        tf.train.Checkpoint(moco=moco, optimizer=optimizer)


class TFEncoder:
    """A MoCo's query network seen by ``common/evaluate/flow.py`` (its ``Encoder`` protocol)."""

    def __init__(self, moco: MoCo, config: dict):
        self.moco, self.config = moco, config
        self._features = tf.function(lambda x: moco.query_encoder(x, training=False),
                                     reduce_retracing=True)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """h of a float32 NHWC batch, the query encoder in inference mode (BN moving statistics)."""
        return np.asarray(self._features(tf.constant(batch)), np.float32)

    def views(self, images: np.ndarray, params1, params2) -> tuple[np.ndarray, ...]:
        """(h1, h2, z1, z2) of two augmented views through the query network, inference mode."""
        pair = preset(self.config["augment"], self.config["image_size"])
        outputs = []
        for params, spec in zip((params1, params2), pair.views, strict=True):
            x = apply_view(tf.constant(images), dense_view_params(params), spec)
            h = self.moco.query_encoder(x, training=False)
            outputs.append((h, self.moco.query_head(h, training=False)))
        (h1, z1), (h2, z2) = outputs
        return tuple(np.asarray(t, np.float64) for t in (h1, h2, z1, z2))

    def recalibrate_bn(self, batches) -> None:
        """The query encoder's BN moving statistics := the mean of its batch statistics over
        ``batches`` (``flow.average_batch_statistics``; Keras' ``momentum`` is the weight of the old
        value). Split BN is switched off meanwhile: the statistics of a whole batch, whatever its
        size, are the mean the splits' would estimate."""
        encoder = self.moco.query_encoder
        norms = [layer for layer in encoder.layers if isinstance(layer, BatchNorm)]
        saved = [(layer.momentum, layer.num_splits) for layer in norms]

        def set_keep(keep: float) -> None:
            for layer in norms:
                layer.momentum, layer.num_splits = keep, 1

        flow.average_batch_statistics(batches, lambda batch: encoder(tf.constant(batch), training=True),
                                      set_keep)
        for layer, (momentum, splits) in zip(norms, saved, strict=True):
            layer.momentum, layer.num_splits = momentum, splits

    def export(self, path: Path) -> None:
        config = self.config
        export_encoder(path, self.moco.query_encoder, encoder_spec(config),
                       config["image_size"])


def load_encoder(config: dict, device: str, checkpoint: Path | None, portable: Path | None) -> TFEncoder:
    """The run's query network from its checkpoint folder, or its encoder from a portable file, or
    (neither) freshly initialised with the run's seed.

    ``device`` is accepted for the common command line; TensorFlow places the ops itself.
    """
    keras.utils.set_random_seed(config["seed"])
    moco = build_moco(config)
    if portable is not None:
        import_encoder(portable, moco.query_encoder, encoder_spec(config))
    elif checkpoint is not None:
        checkpoint_of(moco).read(str(checkpoint / CHECKPOINT_PREFIX)).expect_partial()
    return TFEncoder(moco, config)


def main(argv: list[str] | None = None) -> int:
    return flow.main(CHAPTER, load_encoder, argv)


if __name__ == "__main__":
    sys.exit(main())
