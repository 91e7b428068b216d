"""common/allocator.py: glibc's reuse of large buffers, switched off the way TensorFlow's tf.data
switches it off, and back on by ``keep_large_buffers``; and the MoCo chapter's data iterator, which
must leave it on.

Each check runs in a fresh interpreter (malloc's settings are per process and cannot be read back)
and looks at ``mallinfo2().hblkhd`` (``mallinfo`` before glibc 2.33), the bytes glibc holds in
mmapped blocks: a block that is mapped for the 8 MB array and unmapped when it is freed is what made
every training step fault its feature maps in again.
"""

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
                                reason="the mechanism is glibc's; elsewhere keep_large_buffers does nothing")

MEASURE = """
import ctypes, json
import numpy as np
from common import allocator

libc = ctypes.CDLL(None)
# mallinfo2 (glibc >= 2.33) counts in size_t; the older mallinfo in int, enough for these blocks.
info = libc.mallinfo2 if hasattr(libc, "mallinfo2") else libc.mallinfo
field = ctypes.c_size_t if hasattr(libc, "mallinfo2") else ctypes.c_int

class MallInfo(ctypes.Structure):
    _fields_ = [(name, field) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

info.restype = MallInfo

def mapped_while_alive(nbytes=8 << 20):
    before = info().hblkhd
    array = np.ones(nbytes // 8)
    mapped = info().hblkhd - before
    del array
    return mapped
"""


def run(script: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE + script], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_large_buffers_undoes_a_fixed_trim_threshold():
    result = run("""
libc.mallopt(allocator.M_TRIM_THRESHOLD, 128 * 1024)   # what tf.data's first generator iterator does
switched_off = [mapped_while_alive(), mapped_while_alive()]
accepted = allocator.keep_large_buffers()
switched_on = [mapped_while_alive(), mapped_while_alive()]
print(json.dumps({"off": switched_off, "accepted": accepted, "on": switched_on,
                  "huge": mapped_while_alive(64 << 20)}))
""")
    assert all(mapped >= 8 << 20 for mapped in result["off"])  # mapped afresh at every allocation
    assert result["accepted"]
    assert result["on"] == [0, 0]  # from the heap, reused
    assert result["huge"] >= 64 << 20  # above MMAP_THRESHOLD blocks are still mapped


def test_the_moco_data_iterator_keeps_large_buffers_after_tf_data_switched_them_off():
    result = run("""
import tensorflow as tf
from common import augment
from common.stream import DataStream
from tensorflow_moco.data import distribute_stream

plain = tf.data.Dataset.from_generator(lambda: iter([np.zeros(2)]),
                                       output_signature=tf.TensorSpec((2,), tf.float64))
list(plain)  # the first generator iterator of the process: it fixes the trim threshold
after_tf_data = [mapped_while_alive(), mapped_while_alive()]
stream = DataStream(16, (16, 16), 8, augment.preset("mocov2", 16), seed=0)
batches = distribute_stream(tf.distribute.get_strategy(), np.zeros((16, 16, 16, 3), np.uint8),
                            stream, epoch=0)
next(batches)
after_stream = [mapped_while_alive(), mapped_while_alive()]
list(batches)  # drained: no generator call of tf.data's left running at exit
print(json.dumps({"after_tf_data": after_tf_data, "after_stream": after_stream}))
""")
    assert all(mapped >= 8 << 20 for mapped in result["after_tf_data"])  # TensorFlow's patch, alive
    assert result["after_stream"] == [0, 0]
