"""Keep glibc's malloc reusing large buffers from step to step (what a training loop needs).

glibc serves a request above its *mmap threshold* with a fresh ``mmap`` and gives it back with
``munmap`` on ``free``; every page of such a buffer is then faulted in (zeroed by the kernel) again at
its next use. By default both thresholds adapt (mallopt(3), "M_MMAP_THRESHOLD"): the mmap threshold
starts at 128 kB and rises to the size of any larger mmapped block that is freed, up to 32 MB on
64-bit, and the trim threshold (how much free memory may stay at the top of the heap) follows at
twice that. A loop that allocates the same activation and gradient buffers at every step therefore
soon takes them from the heap. Setting any of M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD or
M_MMAP_MAX switches the adaptation off for the rest of the process.

TensorFlow does that: the first iterator over a ``tf.data.Dataset.from_generator`` sets
M_TRIM_THRESHOLD to 128 kB (it logs "Memory patch applied: M_TRIM_THRESHOLD=128 kb was set"), and
Keras feeds a ``PyDataset`` to a TensorFlow ``fit`` through one. If no large buffer had been freed
before, the mmap threshold stays at 128 kB, and every feature map above it is mapped, faulted in and
unmapped at every step. On this project's 2-core CPU, forward and backward of ``resnet18_small`` on
128 images of 16 px took 698 ms instead of 255 ms; the MoCo quick step (32 px) 1.57 s instead of
1.11 s, the BYOL step on Keras' TensorFlow backend 2.94 s instead of 2.02 s, with the same losses.
The price is memory kept between steps: in the quick comparison's report, peak RSS went from 1,332
to 1,510 MB for MoCo and from 1,482 to 1,798 MB for BYOL (and, from nothing in this module, from
1,390 to 1,529 MB for SimCLR between the same two runs).

:func:`keep_large_buffers` sets both thresholds to the largest values the adaptive rule reaches
(``MMAP_THRESHOLD``, ``TRIM_THRESHOLD``). It must run *after* the library's own setting: the
TensorFlow chapters call it once the data iterator has produced its first element. Where the C
library is not glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit (4 MiB x sizeof(long)): where the adaptive rule stops."""
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
"""Twice the mmap threshold, as the adaptive rule keeps it."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``)."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no dlopen(NULL): Windows
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return libc


def keep_large_buffers() -> bool:
    """Fix glibc's mmap and trim thresholds at the adaptive rule's maxima (module docstring).

    Returns True if glibc accepted both values, False where there is no glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
