"""Evaluation of frozen features (NumPy in, plain floats out).

- :mod:`common.evaluate.knn`: the weighted kNN monitor (InstDisc / MoCo CIFAR-10 demo protocol).
- :mod:`common.evaluate.linear_probe`: logistic-regression probe on frozen features (standardized,
  or raw as CLIP's README) and the label-efficiency curve (1% / 10% / 100% of the labels).
- :mod:`common.evaluate.diagnostics`: alignment, uniformity, embedding std, effective rank.
- :mod:`common.evaluate.flow`: the evaluation flow and command line every chapter's ``evaluate.py``
  runs (splits, preprocessing, the kNN monitor, ``evaluation.json``).

Each chapter's ``evaluate.py`` only supplies its encoder's forward pass.
"""

from common.evaluate.diagnostics import (
    COLLAPSE_RATIO_WARNING,
    alignment,
    collapse_ratio,
    diagnostics,
    effective_rank,
    embedding_std,
    uniformity,
)
from common.evaluate.knn import knn_accuracy, knn_predict, top_k_accuracy
from common.evaluate.linear_probe import label_efficiency, linear_probe

__all__ = [
    "COLLAPSE_RATIO_WARNING",
    "alignment",
    "diagnostics",
    "effective_rank",
    "collapse_ratio",
    "embedding_std",
    "knn_accuracy",
    "knn_predict",
    "label_efficiency",
    "linear_probe",
    "top_k_accuracy",
    "uniformity",
]
