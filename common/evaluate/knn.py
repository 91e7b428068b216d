"""Weighted k-nearest-neighbour classification of frozen features (the SSL "kNN monitor").

The protocol of InstDisc (Wu et al. 2018, sec. 3.4) as implemented in ``knn_predict`` of the MoCo
CIFAR-10 demo (facebookresearch/moco, ``colab/moco_cifar10_demo.ipynb``), with its defaults
``k = 200`` and ``T = 0.1``:

1. L2-normalise train and test features; similarity = cosine = dot product.
2. For each test sample take the k most similar training samples.
3. Each neighbour votes for its class with weight ``exp(similarity / T)``; a class's score is the
   sum of its neighbours' weights. Classes are ranked by score (top-1, top-5).

Differences from the colab, all deliberate: k is clipped to the number of training samples (the
colab's ``topk`` would fail); ties are broken by a fixed rule (a neighbour whose computed float32
similarity equals the k-th one's: the lower training index is kept; classes tied on score: the
lower class index ranks first), where ``torch.topk``/``argsort`` leave them unspecified; the test
set is processed in chunks so that 10,000 x 50,000 similarities never exist at once.

The rule applies to the similarities as computed: the float32 matmul can round a dot product
differently in the last bit for another chunk size (BLAS picks its kernel by the chunk's rows), so
neighbours tied in exact arithmetic (duplicate training images, or vectors of small integers) may
fall on either side of the k-th place, and top-1 can change with ``chunk_size`` in such cases.
"""

import numpy as np

from common.losses import NORM_EPS

KNN_K = 200
KNN_TEMPERATURE = 0.1


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty (num_samples, dim) array; got {features.shape}."
        )
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or inf; check the encoder's outputs first.")
    return features


def _as_labels(labels: np.ndarray, num_samples: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num_samples,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must be {num_samples} integer class indices (int64); got dtype {labels.dtype} "
            f"and shape {labels.shape}."
        )
    if labels.min() < 0:
        raise ValueError(f"{name} must be class indices >= 0; found {labels.min()}.")
    return labels.astype(np.int64)


def _normalized_float32(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, np.float32(NORM_EPS))


def _top_k_neighbours(
    similarity: np.ndarray, k: int, scratch: np.ndarray, selected: np.ndarray
) -> np.ndarray:
    """Column indices of the k largest entries of each row (ties: lower index first), (m, k).

    ``np.partition`` (in place, in the float buffer ``scratch``) finds each row's k-th largest
    value; the entries at least that large (marked in the bool buffer ``selected``) are then read
    off in index order. This is several times faster than ``np.argpartition``. Rows where a tie
    straddles the k-th place keep every strictly larger entry and the lowest-indexed tied ones.
    """
    num_columns = similarity.shape[1]
    np.copyto(scratch, similarity)
    scratch.partition(num_columns - k, axis=1)
    kth_largest = scratch[:, num_columns - k, None]
    np.greater_equal(similarity, kth_largest, out=selected)
    if np.all(np.count_nonzero(selected, axis=1) == k):
        return np.nonzero(selected)[1].reshape(-1, k)
    neighbours = np.empty((similarity.shape[0], k), dtype=np.int64)
    for row, (values, threshold) in enumerate(zip(similarity, kth_largest[:, 0], strict=True)):
        above = np.flatnonzero(values > threshold)
        tied = np.flatnonzero(values == threshold)[: k - above.size]
        neighbours[row] = np.sort(np.concatenate([above, tied]))
    return neighbours


def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Class scores ``(M, C)`` of the weighted kNN vote for each of the M test features.

    ``score[i, c]`` is the sum of ``exp(cos(x_i, t_j) / T)`` over those of the k nearest training
    samples ``t_j`` that belong to class c. ``C`` is ``num_classes`` or ``max(train_labels) + 1``.
    Similarities are float32 (one matmul per chunk of ``chunk_size`` test rows); the weights and
    scores are float64, so they overflow for T below about 1/709 (the ranking of
    :func:`knn_accuracy` does not: it ranks their logarithms).
    """
    return _votes(train_features, train_labels, test_features, k, temperature, num_classes,
                  chunk_size, log_space=False)


def _votes(train_features, train_labels, test_features, k, temperature, num_classes, chunk_size,
           log_space: bool):
    """:func:`knn_predict`'s class scores ``(M, C)``, or with ``log_space`` their logarithms:
    ``log score[i, c] = m + log sum_j exp(s_j / T - m)``, m the largest ``s_j / T`` of class c's
    neighbours: a class's own nearest neighbour adds exp(0) = 1, so at any normal float64 T
    (>= 2.2e-308; s / T then stays finite) nothing overflows and no voted class underflows to 0
    (its score stays above every unvoted class's); -inf for a class no neighbour voted for."""
    train_features = _as_features(train_features, "train_features")
    test_features = _as_features(test_features, "test_features")
    train_labels = _as_labels(train_labels, train_features.shape[0], "train_labels")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension ({train_features.shape[1]} vs "
            f"{test_features.shape[1]}); extract both with the same encoder."
        )
    if k < 1 or not temperature > 0 or chunk_size < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0, chunk_size >= 1; got {k}, {temperature}, {chunk_size}."
        )
    num_classes = int(train_labels.max()) + 1 if num_classes is None else int(num_classes)
    if train_labels.max() >= num_classes:
        raise ValueError(
            f"train_labels go up to {train_labels.max()} but num_classes={num_classes}."
        )
    k = min(int(k), train_features.shape[0])

    bank = _normalized_float32(train_features)
    queries = _normalized_float32(test_features)
    scores = np.empty((queries.shape[0], num_classes), dtype=np.float64)
    # (chunk, N) buffers reused by every chunk: fresh allocations of this size are page-faulted
    # anew each time, which costs more than the partition itself.
    similarity_buffer = np.empty((min(chunk_size, queries.shape[0]), bank.shape[0]), np.float32)
    scratch = np.empty_like(similarity_buffer)
    selected = np.empty(similarity_buffer.shape, dtype=bool)
    for start in range(0, queries.shape[0], chunk_size):
        chunk = queries[start : start + chunk_size]
        end = start + chunk.shape[0]
        similarity = np.matmul(chunk, bank.T, out=similarity_buffer[: chunk.shape[0]])
        neighbours = _top_k_neighbours(
            similarity, k, scratch[: chunk.shape[0]], selected[: chunk.shape[0]]
        )
        rows = np.arange(similarity.shape[0])[:, None]
        logits = (similarity[rows, neighbours].astype(np.float64) / temperature).ravel()
        votes = (rows * num_classes + train_labels[neighbours]).ravel()  # flat index into the chunk
        shape, size = (-1, num_classes), similarity.shape[0] * num_classes
        if not log_space:
            scores[start:end] = np.bincount(votes, weights=np.exp(logits), minlength=size).reshape(shape)
            continue
        largest = np.full(size, -np.inf)
        np.maximum.at(largest, votes, logits)
        sums = np.bincount(votes, weights=np.exp(logits - largest[votes]), minlength=size)
        with np.errstate(divide="ignore"):  # log 0 = -inf: no vote
            scores[start:end] = (largest + np.log(sums)).reshape(shape)
    return scores


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int, classes=None,
                   voted: np.ndarray | None = None) -> float:
    """Fraction of rows whose true label is among the k best-scored classes (ties: lower column).

    ``scores`` is ``(M, C)``; column ``j`` stands for class ``classes[j]`` (default: ``j``). With
    fewer than k classes every label that has a column counts as a hit. ``voted`` ``(M, C)``: a
    column that is False there (a class no kNN neighbour voted for) is never a hit.
    """
    scores = np.asarray(scores)
    classes = np.arange(scores.shape[1]) if classes is None else np.asarray(classes)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = classes[ranked] == np.asarray(labels)[:, None]
    if voted is not None:
        hits &= np.take_along_axis(voted, ranked, axis=1)
    return float(np.mean(np.any(hits, axis=1)))


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 1024,
) -> dict:
    """Top-1 and top-5 accuracy of the weighted kNN classifier: ``{"top1", "top5"}`` in [0, 1].

    Only the classes that received a vote are predictions: a test image counts as a top-5 hit if
    its class is among the (at most five) best-scored classes its k neighbours voted for. So a
    label that no training sample carries is always a miss, and a class no neighbour voted for is
    never a hit by filling the top 5. The classes are ranked by the logarithms of
    :func:`knn_predict`'s scores (``_votes``), which rank them alike and cannot overflow at any
    normal float64 T, nor lose a voted class to underflow.
    """
    log_scores = _votes(train_features, train_labels, test_features, k, temperature, None,
                        chunk_size, log_space=True)
    test_labels = _as_labels(test_labels, log_scores.shape[0], "test_labels")
    voted = np.isfinite(log_scores)
    return {"top1": top_k_accuracy(log_scores, test_labels, 1, voted=voted),
            "top5": top_k_accuracy(log_scores, test_labels, 5, voted=voted)}
