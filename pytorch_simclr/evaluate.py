"""Evaluate a SimCLR run: frozen features -> kNN, linear probe, label efficiency, diagnostics.

    python -m pytorch_simclr.evaluate RUN_DIR                       # the run's latest checkpoint
    python -m pytorch_simclr.evaluate RUN_DIR --encoder OTHER.safetensors   # any chapter's encoder

The PyTorch part is only :class:`TorchEncoder`: the encoder in eval mode on the preprocessed images
``common/evaluate/flow.py`` hands it, and both views through the model for the diagnostics. The flow
(splits, protocols, ``evaluation.json``, the command line) is common, so the numbers compare across
the chapters. The encoder is exported in the portable layout (``common/weights.py``) to
RUN_DIR/encoder.safetensors, ready for the other frameworks.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python pytorch_simclr/evaluate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from common import datasets  # noqa: E402
from common.arch import encoder_spec  # noqa: E402
from common.augment import preset  # noqa: E402
from common.evaluate import flow  # noqa: E402
from pytorch_simclr import CHAPTER  # noqa: E402
from pytorch_simclr.augment_batched import BatchAugmenter  # noqa: E402
from pytorch_simclr.distributed import resolve_device  # noqa: E402
from pytorch_simclr.model import (  # noqa: E402
    SimCLRModel,
    build_classifier,
    build_model,
    export_encoder,
    import_encoder,
)

STATE_FILE = "state.pt"  # the chapter's checkpoint file in a checkpoint folder


class TorchEncoder:
    """A SimCLR model seen by ``common/evaluate/flow.py`` (its ``Encoder`` protocol)."""

    def __init__(self, model: SimCLRModel, config: dict, device: torch.device):
        self.model, self.config, self.device = model, config, device

    @torch.no_grad()
    def features(self, batch: np.ndarray) -> np.ndarray:
        """h of a float32 NHWC batch, with the encoder in eval mode (BN running statistics)."""
        encoder = self.model.encoder
        was_training = encoder.training
        encoder.eval()
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2)
        h = encoder(x).float().cpu().numpy()
        encoder.train(was_training)
        return h

    @torch.no_grad()
    def views(self, images: np.ndarray, params1, params2) -> tuple[np.ndarray, ...]:
        """(h1, h2, z1, z2) of two augmented views, model in eval mode."""
        was_training = self.model.training
        self.model.eval()
        augmenter = BatchAugmenter(preset(self.config["augment"], self.config["image_size"]), self.device)
        view1, view2 = augmenter(torch.from_numpy(np.ascontiguousarray(images)).to(self.device),
                                 params1, params2)
        (h1, z1), (h2, z2) = self.model(view1), self.model(view2)
        self.model.train(was_training)
        return tuple(t.double().cpu().numpy() for t in (h1, h2, z1, z2))

    @torch.no_grad()
    def recalibrate_bn(self, batches) -> None:
        """The encoder's BN running statistics := the mean of its batch statistics over ``batches``
        (``flow.average_batch_statistics``; PyTorch's ``momentum`` is the weight of the new value)."""
        encoder = self.model.encoder
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta, was_training = [m.momentum for m in norms], encoder.training

        def set_keep(keep: float) -> None:
            for m in norms:
                m.momentum = 1.0 - keep

        encoder.train()
        flow.average_batch_statistics(
            batches, lambda batch: encoder(torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2)),
            set_keep)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        encoder.train(was_training)

    def export(self, path: Path) -> None:
        config = self.config
        export_encoder(path, self.model.encoder, encoder_spec(config),
                       config["image_size"])


def load_encoder(config: dict, device: str, checkpoint: Path | None, portable: Path | None
                 ) -> TorchEncoder:
    """The run's model from its checkpoint folder, or its encoder replaced by a portable file, or
    (neither) freshly initialised with the run's seed. A supervised baseline's run
    (``supervised.py``) is its encoder and classifier."""
    device = resolve_device(device)
    state = None if checkpoint is None else torch.load(checkpoint / STATE_FILE, map_location=device,
                                                      weights_only=True)
    torch.manual_seed(config["seed"])
    if config.get("method") == "supervised":
        classes = (state["model"]["head.weight"].shape[0] if state is not None else
                   len(datasets.info(config["dataset"], config.get("data_dir")).classes))
        model = build_classifier(config, classes).to(device)
    else:
        model = build_model(config).to(device)
    if portable is not None:
        import_encoder(portable, model.encoder, encoder_spec(config))
    elif state is not None:
        model.load_state_dict(state["model"])
    return TorchEncoder(model, config, device)


def main(argv: list[str] | None = None) -> int:
    return flow.main(CHAPTER, load_encoder, argv)


if __name__ == "__main__":
    sys.exit(main())
