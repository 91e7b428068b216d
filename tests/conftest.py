"""Shared test set-up.

PyTorch and torchvision are imported before anything else: pytest imports every test module of a
worker into one process, and `import torchvision` after TensorFlow segfaults the process (torch
first, TensorFlow second works; tests/test_environment.py runs that order). The chapters themselves
never share a process (pytorch_simclr never imports TensorFlow).
"""

import os  # noqa: E402

import torch  # noqa: F401
import torchvision  # noqa: F401

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker gets one core's worth of threads: with every worker's libraries spreading
    # over all cores, the workers would only take turns on them (and pay for the switching).
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                     "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(variable, "1")
    torch.set_num_threads(1)
