"""The BYOL chapter: BYOL (Grill et al. 2020) in Keras 3, one code path on TensorFlow, JAX and PyTorch.

This package module imports no Keras: the backend must be chosen first (``keras_byol/backend.py``).
"""

from common.chapter import Chapter

CHAPTER = Chapter("keras", "byol", "keras_byol", "BYOL / Keras")
