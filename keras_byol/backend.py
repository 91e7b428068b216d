"""Which Keras backend the chapter runs on: TensorFlow, JAX or PyTorch, chosen before Keras loads.

Keras 3 reads ``KERAS_BACKEND`` once, when it is first imported, and a process cannot switch
afterwards. ``python -m keras_byol.train --backend jax`` therefore sets the variable at the very
start (:func:`choose`), before any module imports Keras; inside a process that already runs Keras
(a test, a notebook) the only possible backend is the loaded one, and asking for another is refused
with a message saying how to start a process with it. This module imports no Keras (only
:func:`set_random_seed` does, when it is called).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common import runs
from common.errors import ConfigError

BACKENDS = ("tensorflow", "jax", "torch")


def loaded() -> str | None:
    """The backend of the Keras already imported in this process, or None."""
    return sys.modules["keras"].backend.backend() if "keras" in sys.modules else None


def choose(name: str | None) -> str:
    """Make ``name`` (default: ``$KERAS_BACKEND`` or tensorflow) the backend Keras will run on."""
    given = "--backend" if name else "KERAS_BACKEND"
    name = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if name not in BACKENDS:
        raise ConfigError(f"{given} {name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    current = loaded()
    if current is not None and current != name:
        raise ConfigError(f"--backend {name}: Keras already runs on {current} in this process; start a "
                          f"new one (python -m keras_byol.train --backend {name}, or "
                          f"KERAS_BACKEND={name})")
    os.environ["KERAS_BACKEND"] = name
    return name


def choose_at_start(name: str | None, program: str) -> None:
    """:func:`choose` in a program's first lines, before Keras is imported and before
    ``run_main`` can report anything: an unknown backend (from ``--backend`` or ``$KERAS_BACKEND``)
    is a usage error, one line and exit status 2, as argparse reports the other flags."""
    try:
        choose(name)
    except ConfigError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def from_argv(argv: list[str], flag: str = "--backend") -> str | None:
    """The value of ``flag`` in ``argv`` (``--backend X`` or ``--backend=X``), if any."""
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def without(argv: list[str], flag: str = "--backend") -> list[str]:
    """``argv`` less ``flag`` and its value, in either spelling :func:`from_argv` reads."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            kept.append(arg)
    return kept


def saved(run_dir: str | None, key: str) -> str | None:
    """``key`` of the configuration a run directory saved (its ``config.json``), as a flag value.

    What ``--resume RUN_DIR`` and ``python -m keras_byol.evaluate RUN_DIR`` start with when the
    command line does not say: the backend (and device count) the run was trained on, which must be
    known before Keras loads. None if ``run_dir`` is None or holds no readable configuration (the
    run policy then says what is wrong with it)."""
    if run_dir is None:
        return None
    try:
        value = json.loads((Path(run_dir) / runs.CONFIG_FILE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return None if value is None else str(value)


def from_command_line(argv: list[str], flag: str = "--backend") -> str | None:
    """``flag``'s value on the command line, else the one the resumed run saved (:func:`saved`)."""
    return from_argv(argv, flag) or saved(from_argv(argv, "--resume"), flag.removeprefix("--"))


def of_evaluation(argv: list[str]) -> str | None:
    """The backend of ``python -m keras_byol.evaluate ARGV``: ``--backend``'s value, else the one
    its run directory was trained on (:func:`saved`), read with the evaluation's own command line
    (so that an option's value is never taken for the run directory)."""
    from common.evaluate.flow import build_parser  # (imports no Keras)
    from keras_byol import CHAPTER

    known, _ = build_parser(CHAPTER).parse_known_args(without(argv))
    return from_argv(argv) or saved(known.run_dir, "backend")


HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def prepare_host_devices(devices: str | None) -> None:
    """For ``--devices N`` on JAX: let XLA's CPU platform show N devices, so that data parallelism
    can be tried on a machine without accelerators (accelerators are not affected).

    XLA reads ``XLA_FLAGS`` once, when JAX starts, so this runs before anything imports JAX, and
    leaves a device count the user already set alone. (TensorFlow splits its CPU into logical
    devices later, before its runtime starts: ``keras_byol/distributed.py``.)
    """
    if os.environ.get("KERAS_BACKEND") != "jax" or "jax" in sys.modules or not devices:
        return
    if not devices.isdigit() or int(devices) < 2:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if HOST_DEVICES_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICES_FLAG}={int(devices)}".strip()


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed`` (the networks' initialisers, Python and NumPy), without its
    import of TensorFlow on the other backends.

    Keras seeds TensorFlow too whenever it is installed, for ``tf.data`` pipelines, and so imports
    it into a JAX or PyTorch process: 6.4 s of start-up and 470 MB of memory on this 2-core CPU
    (``import keras`` on JAX: 300 MB; with TensorFlow: 770 MB; 2026-12-01), for a chapter that
    uses no ``tf.data`` on those backends (its data is a ``keras.utils.PyDataset``).
    Keras 3 decides through a lazily imported module's ``available``; it is answered "no" for the
    call when TensorFlow is not loaded yet.
    """
    import keras
    from keras.src.utils.module_utils import tensorflow

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    known, tensorflow._available = tensorflow._available, False
    try:
        keras.utils.set_random_seed(seed)
    finally:
        tensorflow._available = known
