"""The supervised baseline: the same encoder trained on the labels, the upper reference of a
comparison of self-supervised methods.

    python -m pytorch_simclr.supervised                    # the `quick` recipe (common/recipes/supervised.py)
    python -m pytorch_simclr.supervised --recipe cifar10   # kuangliu/pytorch-cifar's ResNet-18 recipe

The encoder of ``common/arch.py`` followed by one linear layer to the classes, cross-entropy on one
view per image (a random resized crop and a flip: the ``supervised`` augmentation preset), SGD. Only
the objective differs from SimCLR's :class:`~pytorch_simclr.train.Trainer`: the same data stream,
run policy, checkpoints and evaluation (``python -m pytorch_simclr.evaluate RUN_DIR`` evaluates the
encoder; its "projection" diagnostics are then those of the class scores).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python pytorch_simclr/supervised.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import cli, datasets  # noqa: E402
from common.errors import run_main  # noqa: E402
from pytorch_simclr import SUPERVISED  # noqa: E402
from pytorch_simclr.model import build_classifier  # noqa: E402
from pytorch_simclr.train import Trainer, parse_request  # noqa: E402


class SupervisedTrainer(Trainer):
    """Cross-entropy of a linear classifier on the encoder: :meth:`build_network` and :meth:`loss`."""

    chapter = SUPERVISED

    def __init__(self, request: cli.RunRequest):
        config = request.config
        _, labels = datasets.load(config["dataset"], config["train_split"], root=config.get("data_dir"))
        if (labels < 0).any():
            raise cli.ConfigError(f"the {config['train_split']!r} split of {config['dataset']} has no "
                                  "labels; the supervised baseline needs labelled training images (another "
                                  "--dataset or --recipe)")
        self.labels = torch.from_numpy(labels)
        self.num_classes = int(labels.max()) + 1
        super().__init__(request)

    def build_network(self, config: dict) -> torch.nn.Module:
        """The encoder and a linear classifier; ``forward`` returns ``(h, class scores)``."""
        return build_classifier(config, self.num_classes)

    def loss(self, batch, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the classes of the step's images, on their first view."""
        with self.autocast:
            _, scores = self.forward(view1)
        return F.cross_entropy(scores.float(), self.labels[batch.indices].to(scores.device))


def main(argv: list[str] | None = None) -> int:
    def train() -> int:
        SupervisedTrainer(parse_request(argv, SUPERVISED)).fit()
        return 0

    return run_main(SUPERVISED.train_command, train)


if __name__ == "__main__":
    sys.exit(main())
