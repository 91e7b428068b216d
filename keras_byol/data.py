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
    """The steps of ``epochs`` epochs from ``first_epoch`` on, in order: item i is step ``i % S`` of
    epoch ``first_epoch + i // S``, with S = ``stream.steps_per_epoch``.

    Fit with ``model.fit(dataset, **dataset.fit_kwargs())``, which passes

    - ``shuffle=False``: ``fit`` shuffles a PyDataset's items by default, which would feed the
      stream's steps in a random order;
    - ``steps_per_epoch=S``: Keras then keeps one iterator over the dataset across its epochs, so
      item i is exactly the step above. (The epoch is not a counter bumped by Keras' epoch hooks:
      ``on_epoch_end`` also runs when ``fit`` resets its iterator, and on TensorFlow the next
      epoch's ``tf.data`` iterator is created, and may prefetch, before the hook runs.)
    - ``initial_epoch`` and ``epochs`` matching ``first_epoch`` and ``epochs``.

    ``images`` are the training split, uint8 NHWC, indexed by the stream. Each item is a dict (``x``
    only: BYOL has no labels), so ``fit`` passes it whole to ``BYOL.call``.
    """

    def __init__(self, images: np.ndarray, stream: DataStream, epochs: int, first_epoch: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != stream.num_images:
            raise ValueError(f"expected the stream's {stream.num_images} uint8 NHWC images, got "
                             f"{images.dtype} {images.shape}")
        self.images, self.stream, self.epochs, self.first_epoch = images, stream, epochs, first_epoch

    def position(self, index: int) -> tuple[int, int]:
        """``(epoch, step)`` of item ``index``."""
        epoch, step = divmod(index, self.stream.steps_per_epoch)
        return self.first_epoch + epoch, step

    def fit_kwargs(self) -> dict:
        """The arguments of ``model.fit`` that feed this dataset's steps in order (class docstring)."""
        return {"epochs": self.first_epoch + self.epochs, "initial_epoch": self.first_epoch,
                "steps_per_epoch": self.stream.steps_per_epoch, "shuffle": False}

    def __len__(self) -> int:
        return self.epochs * self.stream.steps_per_epoch

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} is outside the dataset's {len(self)} steps")
        return step_inputs(self.images, self.stream.step(*self.position(index)))
