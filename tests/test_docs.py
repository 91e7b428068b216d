"""The book builds and its notebooks run, inside the normal test command.

- The site: ``mkdocs build --strict`` of ``mkdocs.yml`` into a temporary folder (a broken link or
  anchor, or a page missing from the nav, fails it), every page of the nav rendered, and
  ``docs/check_code_refs.py``: every reference from a page into the code resolves.
- The notebooks (``docs/notebooks/*.md``, Jupytext Markdown): each executed end to end by
  ``docs/notebooks/run.py`` (nbclient) in a Jupyter kernel of its own, so the PyTorch and TensorFlow
  notebooks never share a process, at a handful of steps on small batches of the built-in ``digits``
  (the ``SSL_NOTEBOOK_*`` settings). A notebook's own ``assert`` cells must hold (its forward pass
  before the run leaves the run's BatchNorm statistics as they were; the loss written by hand equals
  the chapter's loss function, and the loss the run logged at step 0; one momentum or target update
  equals its equation; the kNN vote written by hand in NumPy gives the top-1 of ``common.evaluate``'s
  kNN, which equals the run's), and the values it collected in ``results`` are checked here. The
  Keras notebook runs on Keras' torch backend here and the MoCo notebook's ``tf.function``s run
  eagerly: the same ``keras.ops`` and TensorFlow code with the same numbers, without tracing a graph
  (the trace alone takes longer than the rest of a notebook; the traced steps are tested by
  tests/test_keras_train.py and tests/test_tf_train.py).

No test shares a fixture with another, so none is done twice however xdist spreads them.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from docs import check_code_refs
from docs.notebooks import run as notebooks

REPO = Path(__file__).resolve().parents[1]
SMALL = {"SSL_NOTEBOOK_STEPS": "3", "SSL_NOTEBOOK_BATCH": "16", "SSL_NOTEBOOK_KNN_IMAGES": "100",
         "SSL_NOTEBOOK_DATASET": "digits", "SSL_NOTEBOOK_ARCH": "resnet10_small"}
"""The notebooks' settings in the suite: 3 steps of 16 images of ResNet-10 (half of the default
ResNet-18's layers to trace); kNN of 50 test images among 100."""
EAGER = "import tensorflow as tf\n\ntf.config.run_functions_eagerly(True)"


def test_the_site_builds_strictly_with_every_page_of_the_nav(tmp_path):
    from mkdocs.config import load_config

    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path)],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    def pages(nav):
        for entry in nav:
            for value in entry.values():
                yield from pages(value) if isinstance(value, list) else [value]

    listed = list(pages(load_config(str(REPO / "mkdocs.yml"))["nav"]))
    assert len(listed) >= 20 and all(page.endswith(".md") for page in listed)
    for page in listed:
        html = tmp_path / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), f"{page} was not rendered"
    for notebook in notebooks.notebooks():  # every notebook is a page, linked from its chapter
        assert f"notebooks/{notebook.name}" in listed
    chapter = (tmp_path / "book/05-1-simclr-pytorch/index.html").read_text(encoding="utf-8")
    assert 'href="../../notebooks/5.1-simclr-pytorch/"' in chapter


def test_every_reference_from_the_docs_into_the_code_resolves():
    assert check_code_refs.problems(REPO) == []
    references = [ref for page in check_code_refs.pages(REPO) for ref in check_code_refs.references(page)]
    assert len(references) > 300
    cited = {ref.text for ref in references}
    assert {"pytorch_simclr/losses.py::nt_xent", "tensorflow_moco/losses.py::info_nce",
            "keras_byol/losses.py::byol"} <= cited


def execute(name: str, tmp_path: Path, setup: str = "", **env: str) -> dict:
    path = REPO / "docs" / "notebooks" / f"{name}.md"
    kernel_env = {**os.environ, **SMALL, "SSL_NOTEBOOK_OUTPUT_DIR": str(tmp_path), **env}
    _, results = notebooks.execute(path, env=kernel_env, timeout=600, setup=setup)
    assert results["steps"] == int(SMALL["SSL_NOTEBOOK_STEPS"])
    assert len(results["step_losses"]) == results["steps"]
    assert all(math.isfinite(loss) for loss in results["step_losses"])
    assert results["bn_untouched"] is True  # the forward pass of section 2 left BatchNorm as it was
    assert results["loss_by_hand"] == pytest.approx(results["loss_library"], rel=1e-5)
    assert results["loss_library"] == pytest.approx(results["loss_reference"], abs=1e-4)
    # Step 0 of the run is section 2's pass on section 1's views from the same weights: the same
    # float32 computation (here the MoCo step runs eagerly too), measured equal to the last bit;
    # 1e-6 allows a few float32 ulps (2**-23 = 1.2e-7), far below what a wrong temperature or a
    # BatchNorm in inference mode would change.
    assert results["step_losses"][0] == pytest.approx(results["loss_library"], rel=1e-6)
    assert 0.0 <= results["knn_top1_init"] <= 1.0 and 0.0 <= results["knn_top1"] <= 1.0
    assert results["knn_top1"] * 50 == pytest.approx(round(results["knn_top1"] * 50))  # of 50 images
    assert results["knn_top1_by_hand"] == results["knn_top1"]  # the vote written out in NumPy agrees
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]  # the chapter's run directory
    assert (run_dir / "summary.json").is_file()
    return results


@pytest.mark.slow
def test_the_simclr_notebook_runs(tmp_path):
    results = execute("5.1-simclr-pytorch", tmp_path)
    # NT-Xent of 2N = 32 views at the quick recipe's T = 0.2 lies in (0, log(2N - 1) + 2/T]
    assert 0.0 < results["loss_library"] < math.log(31) + 2 / 0.2


@pytest.mark.slow
def test_the_moco_notebook_runs(tmp_path):
    results = execute("5.2-moco-tensorflow", tmp_path, setup=EAGER)
    batch = int(SMALL["SSL_NOTEBOOK_BATCH"])
    # one batch of keys per step, modulo the notebook's moco.queue_size
    assert results["queue_pointer"] == results["steps"] * batch % results["queue_size"]
    assert 0.0 < results["key_moved"] < results["query_moved"]  # the key network lags (m = 0.99)
    # One momentum_update against m k + (1 - m) q: float32 rounding (measured 9e-8), while a wrong m
    # or a swapped update misses by a multiple of the update's size (measured 4e-5 at these settings)
    assert results["momentum_error"] < 1e-6 < results["momentum_step"]


@pytest.mark.slow
def test_the_byol_notebook_runs(tmp_path):
    results = execute("5.3-byol-keras", tmp_path, KERAS_BACKEND="torch")
    assert results["backend"] == "torch"
    assert 0.0 <= results["loss_library"] <= 8.0
    assert results["ema_steps"] == results["steps"]
    assert results["tau_difference"] < 1e-6  # the model's tau_at is common.schedules.ema_momentum
    # One update_target against xi + (1 - tau_0)(theta - xi): float32 rounding (measured 4e-8) against
    # an update of 0.12
    assert results["ema_error"] < 1e-6 < results["ema_update_step"]
    assert results["gap_after"] < results["gap_before"]  # the target moved towards the online network
