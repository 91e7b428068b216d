"""The BYOL chapter: BYOL (Grill et al. 2020) in Keras 3, one code path on TensorFlow, JAX and PyTorch.

This package module imports no Keras: the backend must be chosen first (``keras_byol/backend.py``).
"""

from common.chapter import Chapter

CHAPTER = Chapter("keras", "byol", "keras_byol", "BYOL / Keras", unused_flags=(
    ("precision", "the chapter trains in float32 (it sets no mixed-precision policy)"),
    ("device", "the Keras backend places the computation; --devices N trains on N devices"),
    ("workers", "the views are made in the training step, from the shared stream"),
    ("temperature", "BYOL's loss, the distance of normalised vectors (eq. 2), has no temperature"),
))
