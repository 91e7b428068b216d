"""Speed of the kNN monitor at CIFAR scale: 50,000 x 512 training and 10,000 test features.

Run from the repository root: ``.venv/bin/python -m bench.bench_knn`` (target: under 10 s per
evaluation on 2 CPU cores; the script prints min / median / max seconds over repeats).

Two feature sets: isotropic random features with random labels (accuracy must sit at chance, 0.10)
and clustered features (10 overlapping Gaussian clusters, top-1 about 0.8: an accuracy that means
something). The timing covers ``knn_accuracy`` as a chapter calls it: normalisation, chunked
similarities, top-k, voting.
"""

import argparse
import time

import numpy as np

from common.evaluate import knn_accuracy


def random_features(num_train, num_test, dim, num_classes, rng):
    train = rng.standard_normal((num_train, dim), dtype=np.float32)
    test = rng.standard_normal((num_test, dim), dtype=np.float32)
    train_labels = rng.integers(0, num_classes, num_train)
    return train, train_labels, test, rng.integers(0, num_classes, num_test)


def clustered_features(num_train, num_test, dim, num_classes, rng, noise=8.0):
    """Class centres on the unit sphere plus isotropic noise of norm about ``noise``.

    ``noise = 8`` makes the classes overlap enough for a CIFAR-like kNN top-1 of about 0.8.
    """
    centres = rng.standard_normal((num_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def sample(count):
        labels = rng.integers(0, num_classes, count)
        scatter = rng.standard_normal((count, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        return centres[labels] + scatter, labels

    train, train_labels = sample(num_train)
    test, test_labels = sample(num_test)
    return train, train_labels, test, test_labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for name, make in [("random", random_features), ("clustered", clustered_features)]:
        data = make(args.train, args.test, args.dim, 10, rng)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = knn_accuracy(*data, k=200, temperature=0.1)
            seconds.append(time.perf_counter() - start)
        print(
            f"{name:9s} {args.train}x{args.dim} train, {args.test} test: "
            f"top1 {result['top1']:.4f} top5 {result['top5']:.4f}  "
            f"seconds min {min(seconds):.2f} median {np.median(seconds):.2f} max {max(seconds):.2f}"
        )


if __name__ == "__main__":
    main()
