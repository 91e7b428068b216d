"""A logistic-regression probe on frozen features, and the label-efficiency curve built from it.

What it is, exactly: multinomial logistic regression (scikit-learn, L-BFGS, L2 penalty) on the frozen
encoder's features of the whole, un-augmented images; the inverse regularisation strength C is
chosen from a log-spaced grid on a held-out, class-stratified part of the training set, then the
probe is refitted on the whole training set with that C and scored on the test set.

Two feature preprocessings (``preprocessing=``):

- ``"standardized"`` (the default): each feature dimension scaled to zero mean and unit variance
  (``StandardScaler``, fitted on the data the classifier is fitted on, never on validation or test
  features), so one C grid suits every encoder whatever the scale of its features.
- ``"raw"``: the features as the encoder gives them, as in the linear-probe example of CLIP's README
  (openai/CLIP, ``LogisticRegression(C=0.316)`` fitted on ``encode_image`` outputs; the CLIP paper,
  appendix A.3, sweeps C on a validation split with a parametric binary search, where we scan a grid).

What it is not: SimCLR's linear evaluation (a linear layer trained with SGD on the frozen encoder,
on augmented crops and flips, for 90-100 epochs), nor solo-learn's online classifier (trained on the
augmented pre-training views during pre-training). Its numbers are close to those protocols' but
not the same: docs/evaluation.md says which published numbers each protocol compares with.
"""

import numpy as np

from common.evaluate.knn import top_k_accuracy

DEFAULT_CS = tuple(10.0**power for power in range(-4, 3))
"""C grid of the probe: 1e-4, 1e-3, ..., 1e2 (C = 1 / L2 strength, on standardised features)."""
VAL_FRACTION = 0.1
"""The part of each class's training labels held out to choose C (:func:`stratified_holdout`)."""


def _check_split(features, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],) or features.shape[0] == 0:
        raise ValueError(
            f"{name} features must be (N, D) with N integer labels; got {features.shape} and "
            f"{labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} labels must be integer class indices; got {labels.dtype}.")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} features contain NaN or inf; check the encoder's outputs.")
    return features, labels


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, held_out)`` holding out ``round(fraction * n_c)`` samples of every class.

    Each class with at least two samples gives at least one and keeps at least one; a class with a
    single sample stays entirely in the fitting part. Seeded, so the split is reproducible.
    """
    rng = np.random.default_rng(seed)
    fit, held_out = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(max(1, round(fraction * members.size)), members.size - 1)
        held_out.append(members[:count])
        fit.append(members[count:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held_out))


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset with the same number of labels from every class.

    Every class contributes ``max(1, round(fraction * N / C))`` samples (all it has if fewer), so
    a 1% subset of CIFAR-10 holds 50 images of each class. ``fraction = 1`` is the whole set.
    For one seed the subsets are nested: the 1% subset is part of the 10% subset.
    """
    labels = np.asarray(labels)
    if not 0 < fraction <= 1:
        raise ValueError(f"label fractions must be in (0, 1]; got {fraction}.")
    if fraction == 1:
        return np.arange(labels.size)
    classes = np.unique(labels)
    per_class = max(1, round(fraction * labels.size / classes.size))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(chosen))


def can_select_c(labels: np.ndarray, val_fraction: float, seed: int) -> bool:
    """Whether ``labels`` leave a non-empty stratified validation part and >= 2 classes to fit."""
    fit, held_out = stratified_holdout(labels, val_fraction, seed)
    return held_out.size > 0 and np.unique(labels[fit]).size >= 2


PREPROCESSINGS = ("standardized", "raw")


def _fit_probe(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int, preprocessing: str):
    """The scaler and the fitted classifier, fitted with one BLAS thread.

    On problems this small (thousands of rows, hundreds of features) more threads only add
    synchronisation: a whole evaluation on 2 cores took 39 s with two threads, 18 s with one. One
    thread also makes the result independent of the machine: the sums' order, hence L-BFGS's
    path where it stops short of the optimum at large C, followed the number of threads (two test
    images in 355 changed class between one thread and two).
    """
    # scikit-learn takes 2 s to import: only when a probe is fitted, not on every import of common
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer, StandardScaler
    from threadpoolctl import threadpool_limits

    scaler = (StandardScaler() if preprocessing == "standardized" else FunctionTransformer()).fit(features)
    classifier = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
    with threadpool_limits(limits=1):
        classifier.fit(scaler.transform(features), labels)
    return scaler, classifier


def _probe_scores(probe, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler, classifier = probe
    return classifier.predict_proba(scaler.transform(features)), classifier.classes_


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    Cs=DEFAULT_CS,  # noqa: N803 (scikit-learn's name for the grid)
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    max_iter: int = 1000,
    preprocessing: str = "standardized",
) -> dict:
    """Test accuracy of a logistic-regression probe: ``{"top1", "top5", "C", "val_top1",
    "preprocessing"}``.

    With more than one C, each is fitted on the training set minus a stratified ``val_fraction``
    and scored (top-1) on that held-out part; the best (ties: the smaller C, i.e. the stronger
    regularisation) is refitted on the whole training set and scored on the test set. With a
    single C there is no selection and ``val_top1`` is None. Accuracies are fractions in [0, 1].
    """
    train_features, train_labels = _check_split(train_features, train_labels, "train")
    test_features, test_labels = _check_split(test_features, test_labels, "test")
    if np.unique(train_labels).size < 2:
        raise ValueError("the training labels hold a single class; a probe needs at least two.")
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}; got {preprocessing!r}.")
    Cs = sorted(float(c) for c in Cs)  # noqa: N806
    if not Cs or Cs[0] <= 0:
        raise ValueError(f"Cs must be a non-empty sequence of positive numbers; got {Cs}.")

    best_c, best_val_top1 = Cs[0], None
    if len(Cs) > 1:
        if not can_select_c(train_labels, val_fraction, seed):
            raise ValueError(
                "too few labelled samples per class to hold out a validation part for choosing C; "
                "pass a single value, e.g. Cs=(1.0,), or more labels."
            )
        fit, held_out = stratified_holdout(train_labels, val_fraction, seed)
        for c in Cs:
            probe = _fit_probe(train_features[fit], train_labels[fit], c, max_iter, preprocessing)
            scores, classes = _probe_scores(probe, train_features[held_out])
            val_top1 = top_k_accuracy(scores, train_labels[held_out], 1, classes)
            if best_val_top1 is None or val_top1 > best_val_top1:
                best_c, best_val_top1 = c, val_top1

    probe = _fit_probe(train_features, train_labels, best_c, max_iter, preprocessing)
    scores, classes = _probe_scores(probe, test_features)
    return {
        "top1": top_k_accuracy(scores, test_labels, 1, classes),
        "top5": top_k_accuracy(scores, test_labels, 5, classes),
        "C": best_c,
        "val_top1": best_val_top1,
        "preprocessing": preprocessing,
    }


def label_efficiency(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    fractions=(0.01, 0.1, 1.0),
    seed: int = 0,
    few_label_c: float = 1.0,
    full_probe: dict | None = None,
    **probe_kw,
) -> dict:
    """Linear-probe results when only a fraction of the training labels is available.

    For each fraction, a class-balanced seeded subset (:func:`class_balanced_subset`, at least
    one label per class) is probed with :func:`linear_probe` and evaluated on the full test set.
    A subset too small to hold out a validation part (e.g. 1% of a small dataset: one label per
    class) is probed with the fixed C ``few_label_c`` instead of a selected one; its result then has
    ``val_top1`` None. Returns ``{fraction: probe result + {"num_labels": subset size}}``.
    ``full_probe``: the :func:`linear_probe` result of all the labels with the same seed and
    options, if already computed; it is then the fraction 1 entry instead of being fitted again.
    """
    train_features, train_labels = _check_split(train_features, train_labels, "train")
    results = {}
    for fraction in fractions:
        subset = class_balanced_subset(train_labels, fraction, seed)
        if fraction == 1 and full_probe is not None:
            results[fraction] = {**full_probe, "num_labels": int(subset.size)}
            continue
        kwargs = dict(probe_kw)
        if not can_select_c(train_labels[subset], kwargs.get("val_fraction", VAL_FRACTION), seed):
            kwargs["Cs"] = (few_label_c,)
        result = linear_probe(
            train_features[subset], train_labels[subset], test_features, test_labels,
            seed=seed, **kwargs,
        )
        results[fraction] = {**result, "num_labels": int(subset.size)}
    return results
