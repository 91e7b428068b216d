"""The input of ``BYOL.fit``: the shared data stream as a ``keras.utils.PyDataset``.

``common.stream.DataStream.step(epoch, step)`` says which images a step trains on and with which
views' parameters, as NumPy, identically for every chapter. This file turns one step into the
model's input dict -- uint8 images and the two views' dense parameter matrices
(``augment.dense_params``) -- and wraps the stream for ``model.fit``: the augmentation itself runs
inside the model's traced step, on the device.
"""

from __future__ import annotations

import keras
import numpy as np

from common.stream import DataStream, StepData
from keras_byol.augment import dense_params


def step_inputs(images: np.ndarray, data: StepData) -> dict[str, np.ndarray]:
    """``{"images": uint8 (B, H, W, 3), "view1": (B, P), "view2": (B, P)}`` for one step."""
    return {"images": images[data.indices], "view1": dense_params(data.view1),
            "view2": dense_params(data.view2)}


class StreamDataset(keras.utils.PyDataset):
    """The steps ``first_step ..`` of one ``epoch`` of the stream, in order: what one
    ``model.fit(dataset, epochs=1, shuffle=False)`` trains on.

    The training loop calls ``fit`` once per epoch (``keras_byol/train.py``), so an epoch resumed in
    its middle is simply a shorter dataset. ``shuffle=False`` matters: ``fit`` shuffles a
    PyDataset's items by default, which would feed the stream's steps out of order. ``images`` are
    the training split, uint8 NHWC, indexed by the stream; each item is a dict (``x`` only: BYOL has
    no labels), so ``fit`` passes it whole to ``BYOL.call``.
    """

    def __init__(self, images: np.ndarray, stream: DataStream, epoch: int, first_step: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != stream.num_images:
            raise ValueError(f"expected the stream's {stream.num_images} uint8 NHWC images, got "
                             f"{images.dtype} {images.shape}")
        self.images, self.stream, self.epoch, self.first_step = images, stream, epoch, first_step

    def __len__(self) -> int:
        return self.stream.steps_per_epoch - self.first_step

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} is outside the epoch's {len(self)} remaining steps")
        return step_inputs(self.images, self.stream.step(self.epoch, self.first_step + index))
