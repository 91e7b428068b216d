"""TensorFlow set-up shared by the tests/test_tf_*.py modules: import this before any TF op runs.

TensorFlow fixes its devices when it first initialises its runtime (the first op, or a device
query), and ``tf.config.set_logical_device_configuration`` must come before that. Every
``test_tf_*`` module imports this module at collection time, before any test runs, so the host CPU
is split into :data:`LOGICAL_CPUS` logical devices once per test process, for the
``MirroredStrategy`` tests (``test_tf_distributed.py``). Everything else keeps running on
``/CPU:0`` as usual (the default strategy places ops there). If the runtime was already initialised
by something else, the split is skipped and :func:`logical_cpus` says so; the tests that need two
devices then fail with that reason (a skip would let them pass unseen).
"""

import os

import tensorflow as tf

LOGICAL_CPUS = 2

# XLA compiles for the CPU at LLVM's optimisation level 2 by default; level 0 compiles the tests'
# jit_compile=True step several times faster and computes the same numbers (read when XLA starts).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"

# Grappler's graph rewrites take longer than the tests' tiny graphs run (a BYOL step traces in about
# 15 s instead of 23 s without them); the numbers compared within a test are computed one way.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration() for _ in range(LOGICAL_CPUS)],
    )
except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
    pass


def logical_cpus() -> list[str]:
    """Names of the logical CPU devices this process has (initialises the runtime)."""
    return [device.name for device in tf.config.list_logical_devices("CPU")]
