"""The MoCo v2 chapter: MoCo (He et al. 2020) with the MoCo v2 improvements (Chen et al. 2020) in
TensorFlow 2, Keras 3 layers and ``tf.distribute``.

Keras 3 picks its backend when it is first imported; this chapter needs the TensorFlow backend (its
training step runs under ``tf.distribute``), which is Keras' default. Setting ``KERAS_BACKEND`` to
another backend before importing the chapter is refused by :mod:`tensorflow_moco.model`.
"""

from common.chapter import Chapter

CHAPTER = Chapter("tensorflow", "mocov2", "tensorflow_moco", "MoCo v2 / TensorFlow", unused_flags=(
    ("device", "TensorFlow places the ops; --strategy chooses the devices (CUDA_VISIBLE_DEVICES "
               "hides GPUs)"),
    ("workers", "the views are made in the training step, from the shared stream"),
))
