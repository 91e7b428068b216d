"""The evaluation flow every chapter's ``evaluate.py`` (and its training's kNN monitor) runs.

A chapter supplies only its framework half, an :class:`Encoder`:

- ``features(batch)``: float32 NHWC images, already preprocessed here (:func:`evaluation_batches`),
  -> the encoder's representation h as a NumPy array (eval mode, no gradient);
- ``views(images, params1, params2)``: uint8 NHWC images and two views' ``ViewParams`` -> the
  NumPy arrays ``(h1, h2, z1, z2)`` of both views (representation and projection), for the
  diagnostics;
- ``export(path)``: write the encoder in the portable layout (``common/weights.py``).

Everything else is here, once: which labelled splits are used (the run's ``knn_train_split`` /
``knn_test_split``, capped by ``knn_max_*`` with a seeded subset), how evaluation images are
prepared (the whole image; resized with PIL's antialiased bilinear filter to the training size if
its side differs; normalised with the training augmentation's statistics), the kNN monitor,
the linear probe, label efficiency, the diagnostics, ``evaluation.json`` and the command line.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from common import augment, datasets, runs
from common.chapter import Chapter
from common.checkpoints import CheckpointStore
from common.cli import cap_problem
from common.errors import ConfigError, UserError, brief, run_main
from common.evaluate.diagnostics import diagnostics
from common.evaluate.knn import knn_accuracy
from common.evaluate.linear_probe import (
    PREPROCESSINGS,
    VAL_FRACTION,
    can_select_c,
    label_efficiency,
    linear_probe,
)
from common.weights import EncoderWeightsError

EVAL_BATCH_SIZE = 512
DIAGNOSTIC_IMAGES = 1024
MIN_TRAIN_IMAGES = 3
"""The fewest training images an evaluation can use: the probe chooses C on held-out images, so it
needs two classes and a second image of one of them to hold out (a draw of 3 may still lack them)."""
MIN_TEST_IMAGES = 2
"""The fewest test images an evaluation can use: the diagnostics measure their embeddings' spread."""


class Encoder(Protocol):
    """What a chapter's ``evaluate.py`` hands to this module (module docstring)."""

    def features(self, batch: np.ndarray) -> np.ndarray: ...

    def views(self, images: np.ndarray, params1, params2) -> tuple[np.ndarray, ...]: ...

    def export(self, path: Path) -> None: ...

    def recalibrate_bn(self, batches: Iterable[np.ndarray]) -> None: ...


class PixelEncoder:
    """The normalised pixels themselves as the representation, h = z = the flattened image (or
    view): the baseline any encoder has to beat (``--pixels``). It has no BatchNorm and no weights,
    so neither ``recalibrate_bn`` nor ``export`` applies; it needs no framework, so it lives here.
    """

    def __init__(self, config: dict):
        self.pair = augment.preset(config["augment"], config["image_size"])

    def features(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1)

    def views(self, images: np.ndarray, params1, params2) -> tuple[np.ndarray, ...]:
        """Both views by the NumPy reference (``common/augment/ops.py``), flattened."""
        view1, view2 = (augment.apply_view_batch(images, params, spec).reshape(len(images), -1)
                        for params, spec in ((params1, self.pair.view1), (params2, self.pair.view2)))
        return view1, view2, view1, view2


def spread_sample(count: int, limit: int | None, seed: int) -> np.ndarray:
    """The indices of ``limit`` of ``count`` items, drawn without replacement from ``seed`` and kept
    in their order (all of them when ``limit`` is None or not smaller than ``count``).

    Never the first ``limit``: an image folder stores its splits class by class, so the first
    1,024 test images of CIFAR-10 as JPEGs are all aeroplanes.
    """
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit])


@functools.lru_cache(maxsize=4)
def _labelled_split(dataset: str, split: str, data_dir: str | None, limit: int | None, seed: int):
    try:
        images, labels = datasets.load(dataset, split, root=data_dir)
    except datasets.DatasetError as error:
        if "has no split" not in str(error):
            raise
        raise ConfigError(f"{error}. The kNN monitor and the probes need two different labelled "
                          "splits (an image folder: PATH/<split>/<class>/*.jpg); a run names them "
                          "with train's --knn-train-split and --knn-test-split (to change them, "
                          "start a new run)") from error
    keep = spread_sample(len(images), limit, seed)
    images, labels = images[keep], labels[keep]
    if (labels < 0).any():
        raise ConfigError(f"split {split!r} of {dataset} has no labels; the kNN monitor and the "
                          "probes need labelled splits (a new run with train's --knn-train-split / "
                          "--knn-test-split)")
    return images, labels


def cap_problems(train_flag: str, max_train: int | None, test_flag: str,
                 max_test: int | None) -> list[str]:
    """:func:`common.cli.cap_problem` of an evaluation's caps (``evaluate --max-train/--max-test``,
    ``common.compare --eval-max-train/--eval-max-test``): below ``MIN_*_IMAGES`` no draw works."""
    problems = (cap_problem(train_flag, max_train, MIN_TRAIN_IMAGES,
                            "the probe needs two classes and a second image of one to hold out"),
                cap_problem(test_flag, max_test, MIN_TEST_IMAGES,
                            "the diagnostics measure the spread of the test images' embeddings"))
    return [problem for problem in problems if problem]


def check_draw(train_labels: np.ndarray, test_labels: np.ndarray, config: dict,
               max_train: int | None, max_test: int | None) -> None:
    """Refuse capped splits that the probe or the diagnostics cannot use, naming the cap to raise:
    ``max_*`` (``--max-train``/``--max-test``), else the run's ``knn_max_*``, else none (the
    split itself is that small)."""
    def advice(flag: str, compare_flag: str, given: int | None, run_key: str) -> str:
        if given is not None:
            return f"raise {flag} (common.compare's {compare_flag}), or leave it out"
        if config.get(run_key) is not None:
            return (f"the run's --{run_key.replace('_', '-')} {config[run_key]} caps it: give "
                    f"{flag} N with a larger N")
        return "evaluate on a larger labelled split"

    if not can_select_c(train_labels, VAL_FRACTION, config["seed"]):
        counts = np.unique(train_labels, return_counts=True)[1]
        raise ConfigError(f"the {len(train_labels)} training images evaluated hold {counts.size} class(es), "
                          f"at most {counts.max()} image(s) of one: the linear probe needs two classes "
                          "and a second image of one of them to hold out for choosing C; "
                          + advice("--max-train", "--eval-max-train", max_train, "knn_max_train"))
    if len(test_labels) < MIN_TEST_IMAGES:
        raise ConfigError(f"only {len(test_labels)} test image(s): the diagnostics need at least "
                          f"{MIN_TEST_IMAGES}; "
                          + advice("--max-test", "--eval-max-test", max_test, "knn_max_test"))


def evaluation_splits(config: dict, max_train: int | None = None, max_test: int | None = None):
    """``(train_images, train_labels, test_images, test_labels)`` the run is evaluated on."""
    def split(key: str, limit: int | None):
        return _labelled_split(config["dataset"], config[key], config.get("data_dir"), limit,
                               config["seed"])

    return (*split("knn_train_split", max_train or config.get("knn_max_train")),
            *split("knn_test_split", max_test or config.get("knn_max_test")))


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
                     for image in images])


def evaluation_batches(images: np.ndarray, config: dict,
                       batch_size: int = EVAL_BATCH_SIZE) -> Iterator[np.ndarray]:
    """float32 NHWC batches of whole images, resized to the training size if needed, normalised."""
    normalize = augment.preset(config["augment"], config["image_size"]).view1.normalize
    mean, std = np.float32(normalize.mean), np.float32(normalize.std)
    size = config["image_size"]
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.shape[1:3] != (size, size):
            batch = _resized(batch, size)
        yield (batch.astype(np.float32) / np.float32(255.0) - mean) / std


def extract_features(features: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                     config: dict) -> np.ndarray:
    """The encoder's features of ``images`` (uint8 NHWC), batch by batch."""
    return np.concatenate([np.asarray(features(batch), np.float32)
                           for batch in evaluation_batches(images, config)])


def average_batch_statistics(batches: Iterable[np.ndarray], forward_in_training_mode: Callable,
                             set_keep: Callable[[float], None]) -> int:
    """Set every BatchNorm's moving statistics to the mean of its batch statistics over ``batches``,
    each batch weighted by its number of images (a short last batch counts for what it holds).

    A BN layer updates ``moving <- keep * moving + (1 - keep) * batch_statistic``. With ``keep =
    S / (S + n)`` for a batch of n images after S earlier ones, the first batch replaces the initial
    value and then the moving value is the image-weighted mean of the batch statistics so far (with
    equal batches, ``keep = k / (k + 1)`` at the k-th batch, k = 0, 1, ...). ``set_keep(keep)``
    sets that weight on every BN layer of the encoder in the framework's convention (Keras'
    ``momentum`` is ``keep``, PyTorch's is ``1 - keep``); ``forward_in_training_mode(batch)`` runs
    the encoder on a float32 NHWC batch with batch statistics. Returns the number of batches.

    Why (``--recalibrate-bn``): a freshly initialised encoder normalises with moving statistics of
    0 and 1, which match no layer's real activations. Estimating them on unlabelled images is no
    learning, yet on ``digits`` it lifts the random-init ``resnet18_small``'s kNN from 0.62 to 0.77
    (docs/evaluation.md): a baseline without it credits pre-training with what BN statistics alone
    buy.
    """
    count = seen = 0
    for batch in batches:
        set_keep(seen / (seen + len(batch)))
        forward_in_training_mode(batch)
        count, seen = count + 1, seen + len(batch)
    return count


def knn_top1(features: Callable[[np.ndarray], np.ndarray], config: dict) -> float:
    """The kNN monitor: weighted kNN top-1 of the run's evaluation splits (k, T from the config)."""
    train_x, train_y, test_x, test_y = evaluation_splits(config)
    return knn_accuracy(extract_features(features, train_x, config), train_y,
                        extract_features(features, test_x, config), test_y,
                        k=config["knn_k"], temperature=config["knn_temperature"])["top1"]


def diagnostics_of_views(encoder: Encoder, images: np.ndarray, config: dict, seed: int = 0) -> dict:
    """Alignment, uniformity, collapse and effective rank of h and z on two augmented views."""
    pair = augment.preset(config["augment"], config["image_size"])
    rng = np.random.default_rng(seed)
    hw = images.shape[1:3]
    params = (augment.sample_view_params(pair.view1, len(images), hw, rng),
              augment.sample_view_params(pair.view2, len(images), hw, rng))
    h1, h2, z1, z2 = encoder.views(images, *params)
    return {"representation": diagnostics(h1, h2), "projection": diagnostics(z1, z2)}


def evaluate(encoder: Encoder, config: dict, **options) -> dict:
    """kNN, linear probe, label efficiency and diagnostics of ``encoder`` on the run's splits
    (the options of :func:`evaluate_with_features`)."""
    return evaluate_with_features(encoder, config, **options)[0]


def images_digest(*arrays: np.ndarray) -> str:
    """A short SHA-256 of the evaluated images and labels (their shapes and bytes): two evaluations
    with the same counts may still differ in their images (a capped subset is drawn from each run's
    seed; another data folder), and ``python -m common.compare --runs`` must tell them apart."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


def evaluate_with_features(encoder: Encoder, config: dict, *, max_train: int | None = None,
                           max_test: int | None = None, with_label_efficiency: bool = True,
                           probe_features: str = "standardized", recalibrate_bn: bool = False
                           ) -> tuple[dict, np.ndarray, np.ndarray]:
    """:func:`evaluate`'s results, and the test features and labels they were measured on.

    ``recalibrate_bn``: first set the encoder's BatchNorm statistics to those of the training
    images (:func:`average_batch_statistics`, through the encoder's ``recalibrate_bn``).
    """
    train_x, train_y, test_x, test_y = evaluation_splits(config, max_train, max_test)
    check_draw(train_y, test_y, config, max_train, max_test)
    print(f"features: {len(train_x)} train / {len(test_x)} test images of {config['dataset']}")
    if recalibrate_bn:
        encoder.recalibrate_bn(evaluation_batches(train_x, config))
        print(f"BatchNorm statistics re-estimated on the {len(train_x)} training images")
    train_f = extract_features(encoder.features, train_x, config)
    test_f = extract_features(encoder.features, test_x, config)
    results = {
        "dataset": config["dataset"],
        "train_images": len(train_x),
        "test_images": len(test_x),
        "images_digest": images_digest(train_x, train_y, test_x, test_y),
        "bn_statistics": "training images" if recalibrate_bn else "model",
        "knn": {**knn_accuracy(train_f, train_y, test_f, test_y, k=config["knn_k"],
                               temperature=config["knn_temperature"]),
                "k": config["knn_k"], "temperature": config["knn_temperature"]},
        "linear_probe": linear_probe(train_f, train_y, test_f, test_y, seed=config["seed"],
                                     preprocessing=probe_features),
        "diagnostics": diagnostics_of_views(
            encoder, test_x[spread_sample(len(test_x), DIAGNOSTIC_IMAGES, config["seed"])], config),
    }
    if with_label_efficiency:
        efficiency = label_efficiency(train_f, train_y, test_f, test_y, seed=config["seed"],
                                      preprocessing=probe_features, full_probe=results["linear_probe"])
        results["label_efficiency"] = {str(k): v for k, v in efficiency.items()}
    return results, test_f, test_y


def print_results(results: dict, config: dict) -> None:
    print(f"kNN (k={config['knn_k']}): top-1 {results['knn']['top1']:.4f}, "
          f"top-5 {results['knn']['top5']:.4f}")
    probe = results["linear_probe"]
    print(f"linear probe ({probe['preprocessing']} features): top-1 {probe['top1']:.4f} "
          f"(C={probe['C']:g})")
    for fraction, result in results.get("label_efficiency", {}).items():
        print(f"  {float(fraction):>6.0%} of the labels: top-1 {result['top1']:.4f}")
    for space, values in results["diagnostics"].items():
        print(f"{space}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))


LoadEncoder = Callable[[dict, str, "Path | None", "Path | None"], Encoder]
"""``load(config, device, checkpoint_folder, portable_file) -> Encoder``: the encoder of the run's
checkpoint folder, or, when ``portable_file`` is given, that portable encoder file instead."""


def build_parser(chapter: Chapter) -> argparse.ArgumentParser:
    """The command line of ``<chapter>.evaluate`` (the same in every chapter)."""
    parser = argparse.ArgumentParser(
        prog=chapter.evaluate_command,
        description=f"kNN, linear probe, label efficiency and diagnostics of a {chapter.title} run's "
                    "encoder (or of any chapter's portable encoder file, with --encoder).")
    parser.add_argument("run_dir", type=Path, help=f"a run directory written by {chapter.train_command}")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--encoder", type=Path, default=None,
                       help="evaluate this portable encoder file (written by any chapter) on the "
                            "run's data and protocol, instead of the run's own checkpoint")
    which.add_argument("--random-init", action="store_true",
                       help="evaluate the run's encoder as it started, freshly initialised with "
                            "its seed (or from the run's --init-encoder file): the baseline that "
                            "pre-training has to beat. Also writes it, portable, to "
                            f"RUN_DIR/{runs.RANDOM_INIT_ENCODER_FILE} (for train --init-encoder)")
    which.add_argument("--pixels", action="store_true",
                       help="evaluate the normalised pixels themselves, no encoder: what the "
                            "images alone give on the run's protocol")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--max-train", type=int, default=None,
                        help="cap the labelled training images (faster probes; default: the "
                             "run's --knn-max-train, else all)")
    parser.add_argument("--max-test", type=int, default=None,
                        help="cap the test images (default: the run's --knn-max-test, else all)")
    parser.add_argument("--no-label-efficiency", action="store_true",
                        help="skip the 1%%/10%%/100%% label-efficiency probes")
    parser.add_argument("--recalibrate-bn", action="store_true",
                        help="first re-estimate the encoder's BatchNorm statistics on the training "
                             "images (no labels, no training): with --random-init, the fair "
                             "random-features baseline. Exports no encoder: the run's "
                             "encoder.safetensors keeps the statistics it trained with")
    parser.add_argument("--probe-features", choices=PREPROCESSINGS, default="standardized",
                        help="standardized (default): zero mean, unit variance per dimension; raw: "
                             "the encoder's features as they are, as CLIP's README probe")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the results (default: RUN_DIR/evaluation.json, "
                             "RUN_DIR/evaluation-random-init.json with --random-init, "
                             "RUN_DIR/evaluation-pixels.json with --pixels, or "
                             "RUN_DIR/evaluation-encoder-FOLDER-NAME.json with --encoder "
                             "FOLDER/NAME.safetensors; -recalibrated-bn before .json with "
                             "--recalibrate-bn, then -raw-probe with --probe-features raw)")
    parser.add_argument("--save-features", action="store_true",
                        help="also save the test features and labels next to the results "
                             "(OUTPUT with .features.npz), e.g. for a 2-D embedding plot")
    return parser


def main(chapter: Chapter, load: LoadEncoder, argv: list[str] | None = None) -> int:
    """Run ``<chapter>.evaluate``'s command line (:func:`build_parser`) with the chapter's loader."""
    parser = build_parser(chapter)
    args = parser.parse_args(argv)
    for problem in cap_problems("--max-train", args.max_train, "--max-test", args.max_test):
        parser.error(problem)
    if args.pixels and args.recalibrate_bn:
        parser.error("--recalibrate-bn: the pixels (--pixels) have no BatchNorm statistics")
    return run_main(chapter.evaluate_command, lambda: _evaluate_run(chapter, load, args))


def _evaluate_run(chapter: Chapter, load: LoadEncoder, args: argparse.Namespace) -> int:
    run = runs.read_run(args.run_dir) if (args.run_dir / runs.CONFIG_FILE).is_file() else None
    if run is None:
        raise ConfigError(f"{args.run_dir} is not a run directory (no {runs.CONFIG_FILE}); pass the "
                          f"directory {chapter.train_command} printed")
    config = {k: v for k, v in run.config.items() if k not in runs.BOOKKEEPING_KEYS}
    config["method"] = run.config.get("method")  # which network the run trained (its checkpoint's)
    own_checkpoint = args.encoder is None and baseline_of(args) is None
    trained_by = run.config.get("framework")
    if (own_checkpoint or args.random_init) and trained_by != chapter.framework:
        raise ConfigError(f"{args.run_dir} was trained by the {trained_by} chapter: evaluate its "
                          f"checkpoint and its random init with that chapter's evaluate program "
                          f"(here, --encoder FILE and --pixels work on any chapter's run)")
    if args.encoder is not None and not args.encoder.is_file():
        raise ConfigError(f"--encoder {args.encoder}: no such file; every chapter's `evaluate "
                          f"RUN_DIR` writes RUN_DIR/{runs.ENCODER_FILE}")
    output = args.output or default_output(args)
    target, run_dir = output.resolve(), args.run_dir.resolve()
    inside = target.relative_to(run_dir).parts if target.is_relative_to(run_dir) else ()
    if inside[:1] and inside[0] in runs.TRAINING_FILES or (
            args.encoder is not None and target == args.encoder.resolve()):
        raise ConfigError(f"--output {args.output}: that is one of the run's own files (or the "
                          "encoder being evaluated); write the results to another file")
    store = CheckpointStore(args.run_dir)
    folder = store.latest() if own_checkpoint else None
    if own_checkpoint and folder is None:
        raise ConfigError(f"{args.run_dir} has no checkpoint: its training stopped before the first "
                          f"one. Start a new run ({chapter.train_command} ...) and delete "
                          f"{args.run_dir}")
    checkpoint = None
    if own_checkpoint:
        position = store.position(folder)
        checkpoint = {"epoch": position["epoch"], "global_step": position["global_step"],
                      "finished": position["epoch"] >= config["epochs"]}
        if not checkpoint["finished"]:
            print(f"note: the run is unfinished (epoch {position['epoch']} of {config['epochs']}); "
                  "evaluating its latest checkpoint")
    portable = args.encoder
    if args.random_init and config.get("init_encoder"):  # the run started from that file, not a draw
        portable = Path(config["init_encoder"])
        if not portable.is_file():
            raise ConfigError(f"--random-init: the run started from --init-encoder {portable}, which "
                              "no longer exists; put that file back to evaluate the run's start")
    try:
        encoder = PixelEncoder(config) if args.pixels else load(config, args.device, folder, portable)
    except (UserError, EncoderWeightsError):
        raise
    except Exception as error:  # a damaged or foreign checkpoint file
        if folder is not None and not folder.exists():  # the run, still training, replaced it
            raise ConfigError(f"{folder} was replaced by a newer checkpoint while it was being read "
                              "(the run is still training): run the evaluation again") from error
        raise ConfigError(f"{folder or portable} cannot be loaded ({brief(error)}); it is damaged "
                          "or from another version") from error
    results, test_features, test_labels = evaluate_with_features(
        encoder, config, max_train=args.max_train, max_test=args.max_test,
        with_label_efficiency=not args.no_label_efficiency, probe_features=args.probe_features,
        recalibrate_bn=args.recalibrate_bn)
    results["encoder"] = str(args.encoder) if args.encoder else baseline_of(args) or "checkpoint"
    results["checkpoint"] = checkpoint
    runs.atomic_write_json(output, results)
    saved = [output]
    if args.save_features:
        features_path = output.with_suffix(".features.npz")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, features=test_features, labels=test_labels)
        runs.atomic_write_bytes(features_path, buffer.getvalue())
        saved.append(features_path)
    print_results(results, config)
    exported = (None if args.recalibrate_bn else  # statistics the run did not learn: not its encoder
                runs.ENCODER_FILE if own_checkpoint else
                runs.RANDOM_INIT_ENCODER_FILE if args.random_init else None)
    if exported:  # what any chapter imports (evaluate --encoder, train --init-encoder)
        encoder.export(args.run_dir / exported)
        saved.append(args.run_dir / exported)
    print("saved " + " and ".join(map(str, saved)))
    return 0


def baseline_of(args: argparse.Namespace) -> str | None:
    """"random-init" (``--random-init``), "pixels" (``--pixels``), or None: the run's own checkpoint
    or ``--encoder FILE``."""
    return "random-init" if args.random_init else "pixels" if args.pixels else None


def default_output(args: argparse.Namespace) -> Path:
    """RUN_DIR/evaluation.json, RUN_DIR/evaluation-random-init.json (``--random-init``),
    RUN_DIR/evaluation-pixels.json (``--pixels``) or RUN_DIR/evaluation-encoder-FOLDER-NAME.json
    (``--encoder FOLDER/NAME.safetensors``); ``-recalibrated-bn`` before ``.json`` with
    ``--recalibrate-bn``, then ``-raw-probe`` with ``--probe-features raw``: an evaluation with
    either never replaces the default one, which ``python -m common.compare --runs`` reads.

    The results of ``--encoder`` stay with the run whose data and protocol measured them (not
    beside the file, which may be another run's or read-only); the file's folder is in the name
    because every run's file is called ``encoder.safetensors``."""
    if args.encoder:
        encoder = args.encoder.resolve()
        path = args.run_dir / f"evaluation-encoder-{encoder.parent.name}-{encoder.stem}.json"
    else:
        baseline = baseline_of(args)
        path = args.run_dir / (f"evaluation-{baseline}.json" if baseline else runs.EVALUATION_FILE)
    suffixes = ("-recalibrated-bn" if args.recalibrate_bn else "") + (
        "" if args.probe_features == "standardized" else f"-{args.probe_features}-probe")
    return path.with_name(path.stem + suffixes + ".json")


REPRESENTATION_SAMPLE = 512


def representation_sample(features: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                          config: dict) -> np.ndarray:
    """The representation of ``REPRESENTATION_SAMPLE`` of the training images, the same ones at
    every epoch (:func:`spread_sample` from the run's seed), for the collapse check."""
    sample = spread_sample(len(images), REPRESENTATION_SAMPLE, config["seed"])
    return extract_features(features, images[sample], config)
