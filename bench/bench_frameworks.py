"""Augmentation views/s, training steps/s and peak memory of every chapter and Keras backend (CPU).

Run from the repository root: ``.venv/bin/python -m bench.bench_frameworks`` (2 CPU cores: the
steps table alone, ``--only steps``, took 8 min 12 s on 2026-12-02). Targets (issues 10 and
11): the TensorFlow and the Keras augmentation at least 5x the torchvision per-image path in
views/s, on every backend. Measured (keras_byol/README.md,
docs/book/05-2-moco-tensorflow.md): met with ``jax.jit``, and with XLA on TensorFlow on some
machines and runs: the MoCo chapter's 6.3x on 2026-12-01, 3.3-4.3x on 2026-12-02's CPU, and
4.9-5.6x there once its colour jitter ran the hue once per image, 7.4x later against a slower
baseline (its hue without ``tf.math.floormod``); Keras' 4.2-7.7x and 5.5x that
day, the per-image baseline moving the most; Keras on PyTorch meets it only under
``torch.compile`` (``--compile-views``, 6.3-7.3x), not eager (3.0x), and TensorFlow's views
without XLA reach 1.6-3.4x (the MoCo chapter's) and 2.6-3.6x (Keras'). The
table prints the ratios; it passes no verdict.

Every measurement runs in its own subprocess (``--part NAME``, printing one JSON line), so the
frameworks never share a process (TensorFlow before torchvision crashes the latter) and each Keras
backend is a fresh interpreter.

- **views/s**: 32 px uint8 images, batches of ``--batch-size`` images, both views of each chapter's
  own CIFAR preset (``simclr``, ``mocov2``, ``byol``) with parameters drawn by ``common.augment`` as
  the shared stream draws them. The baseline is torchvision's per-image path
  (``pytorch_simclr.augment.TwoViewDataset``, a plain loop with one thread, the better of that and
  a 2-worker DataLoader as in ``bench_simclr_views``) on the same preset; the batched paths are
  ``pytorch_simclr.augment_batched``, ``tensorflow_moco.augment.apply_view`` in a ``tf.function``
  compiled by XLA (as ``tensorflow_moco/step.py`` makes the views; ``tensorflow-graph``: the same
  function without XLA) and
  ``keras_byol.augment.apply_view`` compiled the backend's way (``jax.jit`` and eager on torch, as
  ``model.fit`` runs it by default; ``tf.function`` with XLA, as ``fit`` runs it with
  ``--jit-compile``, and by default only with an accelerator; ``keras-graph``: without XLA, what
  ``fit`` runs on a CPU by default), and on torch also under
  ``torch.compile`` (``keras_byol/torch_views.py``: what ``train.py --compile-views`` runs).
  Images are random pixels: no op's cost depends on the content.
- **steps/s**: each chapter's own ``train.py`` as a user runs it (its quick recipe on
  ``colordigits``, ``resnet18_small`` at 32 px, the same ``--batch-size``), one epoch of
  ``--steps`` steps; the figure is the median over the steps after the first ``WARMUP_STEPS``
  (tracing and compilation) of the step rows in the run's ``metrics.jsonl``. The methods differ in
  work per step (MoCo and BYOL also run a key / target network; BYOL a predictor): the table says
  what a step of each method costs here, not which framework is faster at the same maths.
- **peak RSS**: the same runs' ``summary.json`` ``peak_rss_mib``, the largest resident memory of the
  training process (``common/session.py``): the framework, the data set, the model and its
  optimizer state, the views and activations of a step, and the kNN monitor that ``--knn-every 0``
  still runs before and after training. ``--only views`` or ``--only steps`` measures one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
WARMUP_STEPS = 3
PRESET_OF = {"pytorch": "simclr", "tensorflow": "mocov2", "keras": "byol"}
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
CHAPTERS = {  # part -> (module, extra flags)
    "train-pytorch": ("pytorch_simclr.train", []),
    "train-tensorflow": ("tensorflow_moco.train", []),
    **{f"train-keras-{b}": ("keras_byol.train", ["--backend", b]) for b in KERAS_BACKENDS},
}


def median_seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def images_and_params(preset_name: str, batch: int, seed: int = 0):
    """Random uint8 images and a generator of both views' fresh ``ViewParams`` per call."""
    from common.augment import preset, sample_view_params

    pair = preset(preset_name, SIZE)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)

    def draw():
        return [sample_view_params(spec, batch, (SIZE, SIZE), rng) for spec in pair.views]

    return pair, images, draw


# -- the parts, each in its own process --------------------------------------------------------------
def views_torchvision(preset_name: str, batch: int, repeats: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    from pytorch_simclr.augment import TwoViewDataset

    pair, images, _ = images_and_params(preset_name, batch)
    dataset = TwoViewDataset(np.concatenate([images] * 2), pair)
    torch.set_num_threads(1)  # as in a DataLoader worker: 32 px tensors are too small to split
    loop = median_seconds(lambda: [dataset[i] for i in range(batch)], max(repeats // 3, 2))
    torch.set_num_threads(2)
    loader = DataLoader(dataset, batch_size=batch, num_workers=2, persistent_workers=True)
    workers = median_seconds(lambda: sum(1 for _ in loader) and None, max(repeats // 3, 2)) / 2
    return 2 * batch / min(loop, workers)


def views_torch_batched(preset_name: str, batch: int, repeats: int) -> float:
    import torch

    from pytorch_simclr.augment_batched import BatchAugmenter

    pair, images, draw = images_and_params(preset_name, batch)
    augmenter, uint8 = BatchAugmenter(pair, "cpu"), torch.from_numpy(images)
    return 2 * batch / median_seconds(lambda: augmenter(uint8, *draw()), repeats)


def views_tensorflow(preset_name: str, batch: int, repeats: int, xla: bool = True) -> float:
    """Both views in one ``tf.function``: compiled by XLA as ``tensorflow_moco/step.py`` makes them,
    or (``xla=False``) the plain graph, one kernel per op."""
    import tensorflow as tf

    from common.augment.dense import dense_view_params
    from tensorflow_moco.augment import apply_view

    pair, images, draw = images_and_params(preset_name, batch)
    spec1, spec2 = pair.views

    @tf.function(jit_compile=xla)
    def both_views(uint8, params1, params2):
        return apply_view(uint8, params1, spec1), apply_view(uint8, params2, spec2)

    uint8 = tf.constant(images)

    def call():
        params = [{k: tf.constant(v) for k, v in dense_view_params(p).items()} for p in draw()]
        return [v.numpy() for v in both_views(uint8, *params)]

    return 2 * batch / median_seconds(call, repeats)


def views_keras(preset_name: str, batch: int, repeats: int, torch_compile: bool = False,
                xla: bool = True) -> float:
    import keras

    from keras_byol.augment import apply_view, dense_params

    pair, images, draw = images_and_params(preset_name, batch)
    spec1, spec2 = pair.views

    def both_views(uint8, params1, params2):
        return apply_view(uint8, params1, spec1), apply_view(uint8, params2, spec2)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        both_views = jax.jit(both_views)
    elif backend == "tensorflow":
        import tensorflow as tf
        both_views = tf.function(both_views, jit_compile=xla)  # fit's default on a CPU: no XLA
    elif torch_compile:
        from keras_byol.torch_views import compiled_view

        def both_views(uint8, params1, params2):
            return compiled_view(spec1)(uint8, params1), compiled_view(spec2)(uint8, params2)
    uint8 = keras.ops.convert_to_tensor(images)

    def call():
        params = [keras.ops.convert_to_tensor(dense_params(p)) for p in draw()]
        return [keras.ops.convert_to_numpy(v) for v in both_views(uint8, *params)]

    return 2 * batch / median_seconds(call, repeats)


def training_run(part: str, batch: int, steps: int) -> dict:
    """One epoch of a chapter's ``train.py``: its median steps/s (its step rows, warm-up excluded)
    and its peak memory (``summary.json``'s ``peak_rss_mib``)."""
    module, flags = CHAPTERS[part]
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", module, *flags, "--dataset", "colordigits",
                   "--arch", "resnet18_small", "--image-size", str(SIZE), "--batch-size", str(batch),
                   "--epochs", "1", "--max-steps-per-epoch", str(steps), "--knn-every", "0",
                   "--log-every", "1", "--output-dir", folder]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        [run_dir] = Path(folder).iterdir()
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
    steps_run = [r["images_per_sec"] / batch for r in rows if r.get("kind") == "step"]
    if len(steps_run) < steps:  # one epoch of colordigits holds fewer steps at this batch
        raise RuntimeError(f"{part}: one epoch has only {len(steps_run)} steps of {batch} images; "
                           f"lower --steps (or --batch-size)")
    rates = steps_run[WARMUP_STEPS:]
    if not rates:
        raise RuntimeError(f"{part}: no step rows after the {WARMUP_STEPS} warm-up steps")
    return {"steps_per_sec": float(np.median(rates)), "peak_rss_mib": summary["peak_rss_mib"]}


def run_part(part: str, args) -> float | dict:
    if part.startswith("train-"):
        return training_run(part, args.batch_size, args.steps)
    kind, _, preset_name = part.partition(":")
    views = {"torchvision": views_torchvision, "torch-batched": views_torch_batched,
             "tensorflow": views_tensorflow,
             "tensorflow-graph": lambda *a: views_tensorflow(*a, xla=False), "keras": views_keras,
             "keras-compiled": lambda *a: views_keras(*a, torch_compile=True),
             "keras-graph": lambda *a: views_keras(*a, xla=False)}[kind]
    return views(preset_name, args.batch_size, args.repeats)


# -- the table -----------------------------------------------------------------------------------------
def in_subprocess(part: str, args, keras_backend: str | None = None) -> float | dict | str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    command = [sys.executable, "-m", "bench.bench_frameworks", "--part", part,
               "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
               "--steps", str(args.steps)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        return f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])["value"]


def views_table(args) -> None:
    """The views/s table: every chapter's batched views against torchvision's per-image path."""
    def show(value, fmt):
        return format(value, fmt) if isinstance(value, float) else value

    n = args.batch_size
    print(f"views/s: batches of {n} images (both views, {2 * n} views), {SIZE} px, medians of "
          f"{args.repeats} calls (torchvision's per-image baseline: {max(args.repeats // 3, 2)}, "
          "measured again just before each row: this machine's speed moves within minutes)\n")
    print(f"{'chapter path':<34}{'preset':>8}{'torchvision':>13}{'batched':>10}{'ratio':>8}")
    paths = [("pytorch", "torch-batched", None), ("tensorflow", "tensorflow", None),
             ("tensorflow", "tensorflow-graph", None),
             *[("keras", "keras", b) for b in KERAS_BACKENDS], ("keras", "keras-graph", "tensorflow"),
             ("keras", "keras-compiled", "torch")]
    for chapter, kind, backend in paths:
        preset_name = PRESET_OF[chapter]
        baseline = in_subprocess(f"torchvision:{preset_name}", args)
        batched = in_subprocess(f"{kind}:{preset_name}", args, backend)
        ratio = (f"{batched / baseline:.1f}x"
                 if isinstance(batched, float) and isinstance(baseline, float) else "-")
        name = f"{kind}" + (f" on {backend}" if backend else "")
        print(f"{name:<34}{preset_name:>8}{show(baseline, '13.0f'):>13}"
              f"{show(batched, '10.0f'):>10}{ratio:>8}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10, help="timed augmentation calls")
    parser.add_argument("--steps", type=int, default=12, help="training steps per chapter")
    parser.add_argument("--only", choices=("views", "steps"), help="measure one of the two tables")
    parser.add_argument("--part", help="measure one part in this process and print it as JSON (the "
                        "tables run each part so, e.g. tensorflow:mocov2 or train-pytorch)")
    args = parser.parse_args(argv)
    if args.part:
        print(json.dumps({"part": args.part, "value": run_part(args.part, args)}))
        return 0

    n = args.batch_size
    if args.only != "steps":
        views_table(args)
    if args.only != "views":
        print(f"\nsteps/s: each chapter's train.py, quick recipe on colordigits, resnet18_small, batch {n}, "
              f"median of steps {WARMUP_STEPS + 1}..{args.steps}; peak memory: the training "
              "process's resident set (summary.json)\n")
        print(f"{'chapter':<34}{'steps/s':>10}{'images/s':>10}{'peak RSS MiB':>14}")
        for part in CHAPTERS:
            run = in_subprocess(part, args)
            if isinstance(run, str):
                print(f"{part.removeprefix('train-'):<34}{run}", flush=True)
                continue
            print(f"{part.removeprefix('train-'):<34}{run['steps_per_sec']:10.2f}"
                  f"{run['steps_per_sec'] * n:10.0f}{run['peak_rss_mib']:14.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
