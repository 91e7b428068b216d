"""Shared test set-up.

PyTorch and torchvision are imported before anything else: pytest imports every test module of a
worker into one process, and `import torchvision` after TensorFlow segfaults the process (torch
first, TensorFlow second works; tests/test_environment.py runs that order). The chapters themselves
never share a process (pytorch_simclr never imports TensorFlow).
"""

import torch  # noqa: F401
import torchvision  # noqa: F401
