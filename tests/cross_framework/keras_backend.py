"""Every cross-framework check of keras_byol on one Keras backend, in this one process.

``python -m tests.cross_framework.keras_backend FOLDER`` with ``KERAS_BACKEND`` set (jax or torch;
the pytest process runs Keras on TensorFlow itself): each section of ``impl_keras`` runs once, and
the raw outputs (or the section's traceback) are pickled to ``FOLDER/keras-<backend>.pkl`` for the
tests to compare. The sections that need files from the pytest process (the portable weights, the
chapter-trained encoders) come last and wait for its ``*.ready`` markers, which it writes while
this process works through the others.
"""

from __future__ import annotations

import pickle
import sys
import time
import traceback
from pathlib import Path

import keras

from tests.cross_framework import cases, impl_keras

WAIT_SECONDS = 600


def wait_for(marker: Path) -> None:
    """Block until ``marker`` exists; raise with its text if the pytest process wrote a failure."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker} did not appear within {WAIT_SECONDS} s")
        time.sleep(0.2)
    text = marker.read_text()
    if text.strip() != "ok":
        raise RuntimeError(f"the pytest process could not prepare {marker.stem}:\n{text}")


def main(folder: Path) -> None:
    backend = keras.backend.backend()
    sections = [("losses", impl_keras.loss_outputs), ("optim", impl_keras.optim_outputs),
                ("augment", impl_keras.augment_outputs), ("sampled", impl_keras.sampled_params)]
    if backend == "jax":
        sections.append(("data_parallel", impl_keras.data_parallel_losses))
    sections += [("step", impl_keras.simclr_step),
                 ("encoders", lambda: impl_keras.encoder_outputs(folder)),
                 ("train_mode", lambda: impl_keras.train_mode_outputs(folder)),
                 ("knn", lambda: impl_keras.knn_outputs(folder))]
    needs = {"encoders": "weights", "train_mode": "weights", "knn": "trained"}
    results, seconds = {}, {}
    for name, fn in sections:
        if name in needs:
            try:
                wait_for(folder / f"{needs[name]}.ready")
            except Exception:
                results[name] = {"error": traceback.format_exc()}
                continue
        start = time.process_time()
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
        seconds[name] = round(time.process_time() - start, 1)
    results["seconds"] = seconds  # CPU seconds of this process, per section
    results["cpu_total"] = round(time.process_time(), 1)
    partial = folder / f"keras-{backend}.pkl.partial"
    with open(partial, "wb") as file:
        pickle.dump(results, file)
    partial.rename(folder / f"keras-{backend}.pkl")


if __name__ == "__main__":
    assert keras.backend.backend() in cases.KERAS_SUBPROCESS_BACKENDS
    main(Path(sys.argv[1]))
