"""Evaluate a BYOL run: frozen features -> kNN, linear probe, label efficiency, diagnostics.

    python -m keras_byol.evaluate RUN_DIR                            # the run's latest checkpoint
    python -m keras_byol.evaluate RUN_DIR --encoder OTHER.safetensors   # any chapter's encoder

It runs on the Keras backend the run was trained on (its ``config.json``): the random-init baseline
is the seed's draw by that backend's generator.

The Keras part is only :class:`KerasEncoder`: the online encoder in inference mode on the images
``common/evaluate/flow.py`` hands it, and both views through the online encoder and projector for
the diagnostics. BYOL evaluates the *online* encoder (Grill et al. 2020, section 3.1: "at the end of
training we only keep the encoder f_theta"), exported to RUN_DIR/encoder.safetensors (portable, for
every chapter) and RUN_DIR/encoder.keras (Keras' own format).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python keras_byol/evaluate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_byol import backend  # noqa: E402  (no Keras yet)

if __name__ == "__main__":  # the backend must be chosen before anything imports Keras
    backend.choose_at_start(backend.of_evaluation(sys.argv[1:]), "python -m keras_byol.evaluate")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from common.arch import encoder_spec  # noqa: E402
from common.augment import preset  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from common.evaluate import flow  # noqa: E402
from common.schedules import EmaRise  # noqa: E402
from keras_byol import CHAPTER  # noqa: E402
from keras_byol.augment import apply_view, dense_params  # noqa: E402
from keras_byol.byol import BYOL  # noqa: E402
from keras_byol.model import export_encoder, import_encoder  # noqa: E402

WEIGHTS_FILE = "byol.weights.h5"  # the model's weights in a checkpoint folder (Keras' own format)


def build_byol(config: dict, tau: EmaRise | None = None, sync_bn: bool = False) -> BYOL:
    """The online and target networks of a run's configuration. ``tau``: the target's EMA rate
    (a training run's ``common.schedules.ema_rise``; default: the base rate over one step, enough
    to evaluate); ``sync_bn``: BatchNorm over the replicas of a ``tf.distribute`` strategy
    (``keras_byol/distributed.py``)."""
    tau = tau or EmaRise(config["target_momentum"], 1)
    return BYOL(encoder_spec(config),
                preset(config["augment"], config["image_size"]), total_steps=tau.total_steps,
                base_tau=tau.base, start_step=tau.start_step,
                projector_hidden=config["projection_hidden_dim"],
                projection_dim=config["projection_dim"],
                predictor_hidden=config["predictor_hidden_dim"], bn_stats=config["target_bn_stats"],
                sync_bn=sync_bn, compiled_views=config.get("compile_views", False))


class KerasEncoder:
    """A BYOL model's online network seen by ``common/evaluate/flow.py`` (its ``Encoder`` protocol)."""

    def __init__(self, model: BYOL, config: dict, replicas: int = 1):
        self.model, self.config, self.replicas = model, config, replicas

    def features(self, batch: np.ndarray) -> np.ndarray:
        """h of a float32 NHWC batch, the online encoder in inference mode (BN moving statistics).

        Every batch is padded with copies of its last image (whose features are then dropped) to a
        power of two that is also a multiple of the number of devices (``replicas``): the compiled
        inference function then sees a handful of shapes, not one per length of a split's last
        batch (each new shape is a new trace on TensorFlow, a new compilation on JAX). JAX splits
        the batch over its devices; under ``MirroredStrategy`` Keras' ``predict_on_batch`` gives
        every replica the whole batch and concatenates their outputs, so the first ``count`` rows
        are replica 0's (with the BN statistics a checkpoint saves), at N times the work.
        """
        count = len(batch)
        padded = 1 << (count - 1).bit_length()
        padded += -padded % self.replicas
        padding = padded - count
        if padding:
            batch = np.concatenate([batch, np.repeat(batch[-1:], padding, axis=0)])
        return np.asarray(self.model.online_encoder.predict_on_batch(batch), np.float32)[:count]

    def views(self, images: np.ndarray, params1, params2) -> tuple[np.ndarray, ...]:
        """(h1, h2, z1, z2) of two augmented views through the online encoder and projector."""
        pair = preset(self.config["augment"], self.config["image_size"])
        outputs = []
        for params, spec in zip((params1, params2), pair.views, strict=True):
            x = apply_view(ops.convert_to_tensor(images), ops.convert_to_tensor(dense_params(params)), spec)
            h = self.model.online_encoder(x, training=False)
            outputs.append((h, self.model.online_projector(h, training=False)))
        (h1, z1), (h2, z2) = outputs
        return tuple(np.asarray(ops.convert_to_numpy(t), np.float64) for t in (h1, h2, z1, z2))

    def recalibrate_bn(self, batches) -> None:
        """The online encoder's BN moving statistics := the mean of its batch statistics over
        ``batches`` (``flow.average_batch_statistics``; Keras' ``momentum`` is the weight of the old
        value). Eager calls in training mode: each updates the moving statistics on every backend."""
        encoder = self.model.online_encoder
        norms = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
        momenta = [layer.momentum for layer in norms]

        def set_keep(keep: float) -> None:
            for layer in norms:
                layer.momentum = keep

        flow.average_batch_statistics(
            batches, lambda batch: encoder(ops.convert_to_tensor(batch), training=True), set_keep)
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum

    def export(self, path: Path) -> None:
        """The portable file at ``path`` and the Keras model beside it (``.keras``), each written
        whole or not at all: Keras saves straight into its destination, so it saves to a
        temporary name first (a Ctrl-C or a full disk would leave a cut file in place of the
        good one)."""
        config = self.config
        export_encoder(path, self.model.online_encoder,
                       encoder_spec(config), config["image_size"])
        final = Path(path).with_suffix(".keras")
        partial = final.with_name(f".{final.stem}-{os.getpid()}.keras")
        try:
            self.model.online_encoder.save(partial)
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)


def load_encoder(config: dict, device: str, checkpoint: Path | None, portable: Path | None
                 ) -> KerasEncoder:
    """The run's online network from its checkpoint folder, or its encoder from a portable file, or
    (neither) freshly initialised with the run's seed.

    ``device`` is accepted for the common command line; the backend places the computation itself.
    """
    if backend.loaded() not in (None, config["backend"]):
        raise ConfigError(
            f"this run was trained on Keras' {config['backend']} backend and this process runs "
            f"{backend.loaded()}: evaluate it on {config['backend']} (leave --backend out, or "
            f"--backend {config['backend']}), whose generator draws the run's random-init encoder")
    backend.choose(config["backend"])
    backend.set_random_seed(config["seed"])
    model = build_byol(config)
    if portable is not None:
        import_encoder(portable, model.online_encoder, encoder_spec(config))
    elif checkpoint is not None:
        model.load_weights(checkpoint / WEIGHTS_FILE)
    return KerasEncoder(model, config)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the backend is chosen at start-up (see above); common's command line does not take it
    return flow.main(CHAPTER, load_encoder, backend.without(argv))


if __name__ == "__main__":
    sys.exit(main())
