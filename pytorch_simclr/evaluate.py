"""Evaluate a SimCLR run: frozen features -> kNN, linear probe, label efficiency, diagnostics.

    python -m pytorch_simclr.evaluate RUN_DIR

The framework part is only feature extraction (the encoder in eval mode on un-augmented, normalised
images); everything else is common/evaluate, so the numbers are comparable across the chapters.
Results go to RUN_DIR/evaluation.json; the encoder is exported in the portable layout
(common/weights.py) to RUN_DIR/encoder.safetensors, ready for the other frameworks.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python pytorch_simclr/evaluate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import augment, datasets, evaluate, runs  # noqa: E402
from common.arch import resnet_spec  # noqa: E402
from pytorch_simclr.augment import BatchAugmenter, normalize_, to_float_nchw  # noqa: E402


@functools.lru_cache(maxsize=4)
def _labelled_split(dataset: str, split: str, data_dir: str | None, limit: int | None, seed: int):
    """A split for evaluation, subsampled to ``limit`` images with a seeded permutation."""
    images, labels = datasets.load(dataset, split, root=data_dir)
    if limit is not None and limit < len(images):
        keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
        images, labels = images[keep], labels[keep]
    return images, labels


def evaluation_splits(config: dict, max_train: int | None = None, max_test: int | None = None):
    """(train_images, train_labels, test_images, test_labels) of the run's kNN / probe splits."""
    def split(name: str, limit: int | None):
        return _labelled_split(config["dataset"], config[name], config.get("data_dir"), limit,
                               config["seed"])

    train = split("knn_train_split", max_train or config.get("knn_max_train"))
    test = split("knn_test_split", max_test or config.get("knn_max_test"))
    return (*train, *test)


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images: np.ndarray, config: dict,
                     device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Encoder features (the pre-head representation h) of uint8 NHWC images, as float32 NumPy.

    Evaluation views are the whole image, resized (bilinear, antialiased) to the training size if
    needed, and normalised with the training augmentation's statistics.
    """
    normalize = augment.preset(config["augment"], config["image_size"]).view1.normalize
    was_training = encoder.training
    encoder.eval()
    features = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        x = to_float_nchw(batch.to(device))
        if x.shape[-1] != config["image_size"] or x.shape[-2] != config["image_size"]:
            x = F.interpolate(x, size=(config["image_size"],) * 2, mode="bilinear",
                              align_corners=False, antialias=True)
        features.append(encoder(normalize_(x, normalize.mean, normalize.std)).float().cpu())
    encoder.train(was_training)
    return torch.cat(features).numpy()


def knn_monitor(encoder: torch.nn.Module, config: dict, device: torch.device) -> dict:
    """Weighted kNN accuracy (common/evaluate) of the encoder on the run's held-out split."""
    train_x, train_y, test_x, test_y = evaluation_splits(config)
    return evaluate.knn_accuracy(
        extract_features(encoder, train_x, config, device), train_y,
        extract_features(encoder, test_x, config, device), test_y,
        k=config["knn_k"], temperature=config["knn_temperature"],
    )


@torch.no_grad()
def embedding_diagnostics(model, images: np.ndarray, config: dict, device: torch.device,
                          seed: int = 0) -> dict:
    """Alignment, uniformity, collapse and effective rank on two augmented views of ``images``."""
    model.eval()
    augmenter = BatchAugmenter(augment.preset(config["augment"], config["image_size"]), device)
    view1, view2 = augmenter(torch.from_numpy(np.ascontiguousarray(images)).to(device),
                             np.random.default_rng(seed))
    h1, z1 = model(view1)
    h2, z2 = model(view2)
    return {
        "representation": evaluate.diagnostics(h1.double().cpu().numpy(), h2.double().cpu().numpy()),
        "projection": evaluate.diagnostics(z1.double().cpu().numpy(), z2.double().cpu().numpy()),
    }


def main(argv: list[str] | None = None) -> int:
    from pytorch_simclr.model import export_encoder
    from pytorch_simclr.train import build_model

    parser = argparse.ArgumentParser(
        prog="python -m pytorch_simclr.evaluate",
        description="kNN, linear probe, label efficiency and diagnostics of a SimCLR run's encoder.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory written by pytorch_simclr.train")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--max-train", type=int, default=None,
                        help="cap the labelled training images (faster probes)")
    parser.add_argument("--max-test", type=int, default=None, help="cap the test images")
    parser.add_argument("--no-label-efficiency", action="store_true",
                        help="skip the 1%%/10%%/100%% label-efficiency probes")
    args = parser.parse_args(argv)

    checkpoint = args.run_dir / "checkpoints" / "last.pt"
    if not (args.run_dir / "config.json").is_file() or not checkpoint.is_file():
        parser.error(f"{args.run_dir} is not a finished run directory: it needs config.json and "
                     "checkpoints/last.pt (train with python -m pytorch_simclr.train first)")
    config = json.loads((args.run_dir / "config.json").read_text())
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    model = build_model(config).to(device)
    model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True)["model"])

    train_x, train_y, test_x, test_y = evaluation_splits(config, args.max_train, args.max_test)
    print(f"features: {len(train_x)} train / {len(test_x)} test images of {config['dataset']}")
    train_f = extract_features(model.encoder, train_x, config, device)
    test_f = extract_features(model.encoder, test_x, config, device)
    results = {
        "dataset": config["dataset"],
        "train_images": len(train_x),
        "test_images": len(test_x),
        "knn": evaluate.knn_accuracy(train_f, train_y, test_f, test_y, k=config["knn_k"],
                                     temperature=config["knn_temperature"]),
        "linear_probe": evaluate.linear_probe(train_f, train_y, test_f, test_y,
                                              seed=config["seed"]),
        "diagnostics": embedding_diagnostics(model, test_x[:1024], config, device),
    }
    if not args.no_label_efficiency:
        efficiency = evaluate.label_efficiency(train_f, train_y, test_f, test_y,
                                               seed=config["seed"])
        results["label_efficiency"] = {str(k): v for k, v in efficiency.items()}
    runs.atomic_write_json(args.run_dir / "evaluation.json", results)
    export_encoder(args.run_dir / "encoder.safetensors", model.encoder,
                   resnet_spec(config["arch"], config["image_size"]), config["image_size"])

    print(f"kNN (k={config['knn_k']}): top-1 {results['knn']['top1']:.4f}, "
          f"top-5 {results['knn']['top5']:.4f}")
    print(f"linear probe: top-1 {results['linear_probe']['top1']:.4f} "
          f"(C={results['linear_probe']['C']:g})")
    for fraction, probe in results.get("label_efficiency", {}).items():
        print(f"  {float(fraction):>6.0%} of the labels: top-1 {probe['top1']:.4f}")
    for space, values in results["diagnostics"].items():
        print(f"{space}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    print(f"saved {args.run_dir / 'evaluation.json'} and {args.run_dir / 'encoder.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
