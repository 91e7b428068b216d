"""common/evaluate: weighted kNN, linear probe, label efficiency, representation diagnostics."""

import math
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from common.evaluate import (
    alignment,
    diagnostics,
    effective_rank,
    embedding_std,
    flow,
    knn_accuracy,
    knn_predict,
    label_efficiency,
    linear_probe,
    top_k_accuracy,
    uniformity,
)
from common.evaluate.flow import average_batch_statistics, evaluation_splits, images_digest
from common.evaluate.linear_probe import DEFAULT_CS, class_balanced_subset, stratified_holdout


def clusters(num_classes, per_class, dim, spread, seed):
    """Gaussian blobs around orthogonal unit directions (one per class); int64 labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:num_classes] * 5.0
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    features = centres[labels] + spread * rng.normal(size=(labels.size, dim))
    return features.astype(np.float32), labels


def naive_knn_scores(train, train_labels, test, k, temperature, num_classes):
    """The MoCo colab's knn_predict written out: full sort, top-k, one-hot weighted sum."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    scores = np.zeros((len(test), num_classes))
    for i, x in enumerate(test):
        similarity = train.astype(np.float64) @ x
        for j in np.argsort(-similarity, kind="stable")[:k]:
            scores[i, train_labels[j]] += math.exp(similarity[j] / temperature)
    return scores


# ----- kNN --------------------------------------------------------------------------------------
def test_knn_scores_of_a_tiny_case_computed_by_hand():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosines to (2, 0): 1, 0, 1/sqrt 2
    labels = np.array([0, 1, 1])
    scores = knn_predict(train, labels, np.array([[2.0, 0.0]]), k=2, temperature=0.5, num_classes=3)
    expected = [[math.exp(1 / 0.5), math.exp((1 / math.sqrt(2)) / 0.5), 0.0]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_knn_predicts_every_point_of_separated_clusters():
    train, train_labels = clusters(4, 30, 8, 0.3, seed=0)
    test, test_labels = clusters(4, 10, 8, 0.3, seed=1)
    scores = knn_predict(train, train_labels, test, k=20)
    np.testing.assert_array_equal(scores.argmax(axis=1), test_labels)
    assert knn_accuracy(train, train_labels, test, test_labels, k=20) == {"top1": 1.0, "top5": 1.0}


def test_knn_matches_the_colab_protocol_written_naively():
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(300, 16)), rng.normal(size=(40, 16))
    labels = rng.integers(0, 7, size=300)
    ours = knn_predict(train, labels, test, k=25, temperature=0.1, num_classes=7)
    np.testing.assert_allclose(ours, naive_knn_scores(train, labels, test, 25, 0.1, 7), rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_scores_equal_unchunked(chunk_size):
    rng = np.random.default_rng(3)
    train, test = rng.normal(size=(500, 12)), rng.normal(size=(100, 12))
    labels = rng.integers(0, 5, size=500)
    whole = knn_predict(train, labels, test, k=50, chunk_size=1000)
    chunked = knn_predict(train, labels, test, k=50, chunk_size=chunk_size)
    # float32 similarities: BLAS may round a dot product differently for another chunk shape,
    # and exp(s / T) turns an error of ~1e-7 in s into ~1e-6 relative in the weight.
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
    np.testing.assert_array_equal(chunked.argmax(axis=1), whole.argmax(axis=1))


def test_k_larger_than_the_training_set_uses_every_sample():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    scores = knn_predict(train, np.array([0, 1, 1]), np.array([[1.0, 0.0]]), k=200, temperature=1)
    np.testing.assert_allclose(scores, [[math.e, 1.0 + math.exp(-1.0)]], rtol=1e-6)


def test_neighbours_tied_at_the_kth_place_keep_the_lower_training_index():
    train = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([2, 1, 0, 0])
    scores = knn_predict(train, labels, np.array([[1.0, 0.0], [3.0, 0.0]]), k=2, temperature=1)
    np.testing.assert_allclose(scores, [[0.0, math.e, math.e]] * 2, rtol=1e-6)


def test_top_k_accuracy_ranks_ties_by_class_index_and_maps_columns_to_classes():
    scores = np.array([[0.1, 0.5, 0.5], [0.9, 0.0, 0.1]])
    assert top_k_accuracy(scores, np.array([1, 0]), 1) == 1.0
    assert top_k_accuracy(scores, np.array([2, 0]), 1) == 0.5
    assert top_k_accuracy(scores, np.array([2, 2]), 2) == 1.0
    assert top_k_accuracy(scores, np.array([7, 3]), 1, classes=np.array([3, 7, 9])) == 1.0


def test_knn_top5_counts_a_label_ranked_fifth():
    # Test point sees 6 classes at decreasing similarity; its label (4) is ranked 5th.
    angles = np.linspace(0.0, 1.0, 6)
    train = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    result = knn_accuracy(train, np.arange(6), np.array([[1.0, 0.0]]), np.array([4]), k=6)
    assert result == {"top1": 0.0, "top5": 1.0}


def test_knn_top5_never_counts_a_class_without_a_vote():
    """Class 3 has no training sample, and the neighbours vote for 0 and 1 only: the zero-score
    columns 2, 3 and 4 do not fill the top 5 (ranked by index, they would make both hits)."""
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 1, 2, 4])
    result = knn_accuracy(train, labels, np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([3, 4]), k=2)
    assert result == {"top1": 0.0, "top5": 0.0}


def test_knn_accuracy_holds_at_a_temperature_where_the_weights_overflow():
    """At T = 1e-3 a cosine of 0.9 weighs exp(900), past float64's 1.8e308, and -0.5 weighs 0: the
    raw scores tie at inf (the lower class would win) or at 0 (a vote would not count). Ranked by
    their logarithms, the classes come in the order any T < 0.05 gives here."""
    train = np.array([[0.9, np.sqrt(1 - 0.81)], [0.8, 0.6], [0.8, -0.6], [-0.5, np.sqrt(0.75)]])
    labels = np.array([1, 0, 0, 2])
    test = np.array([[1.0, 0.0]])
    with np.errstate(over="ignore"):
        assert np.isinf(knn_predict(train, labels, test, k=4, temperature=1e-3)).any()  # the trap
    for temperature in (1e-3, 1e-2):
        assert knn_accuracy(train, labels, test, np.array([1]), k=4, temperature=temperature) == {
            "top1": 1.0, "top5": 1.0}
        # the farthest neighbour's weight underflows to 0, and its vote still ranks class 2
        assert knn_accuracy(train, labels, test, np.array([2]), k=4, temperature=temperature) == {
            "top1": 0.0, "top5": 1.0}


def test_knn_top5_keeps_a_voted_class_whose_weight_underflows_ahead_of_unvoted_ones():
    """Classes 7, 8, 9 get one vote each at cosines 1, 0.6, 0; at T = 1e-4, 8's and 9's weights
    relative to the nearest neighbour, exp(-4000) and exp(-10000), are 0: tied with the seven
    classes nobody voted for, the lower columns 0-6 pushed them out of the top 5."""
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels, test = np.array([7, 8, 9]), np.array([[1.0, 0.0]])
    for label in (8, 9):
        assert knn_accuracy(train, labels, test, np.array([label]), k=3, temperature=1e-4) == {
            "top1": 0.0, "top5": 1.0}


def test_knn_rejects_bad_input_with_clear_messages():
    train, labels = np.ones((4, 3)), np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match="dimension"):
        knn_predict(train, labels, np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        knn_predict(train, labels, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="integer"):
        knn_predict(train, labels.astype(float), np.ones((2, 3)))


# ----- linear probe and label efficiency ---------------------------------------------------------
def test_linear_probe_separates_separable_classes():
    train, train_labels = clusters(5, 40, 10, 0.5, seed=4)
    test, test_labels = clusters(5, 20, 10, 0.5, seed=5)
    result = linear_probe(train, train_labels, test, test_labels, Cs=(0.01, 1.0, 100.0))
    assert result["top1"] == 1.0 and result["top5"] == 1.0 and result["val_top1"] == 1.0
    assert result["C"] == 0.01  # every C is perfect on validation: the strongest penalty wins


def test_linear_probe_is_near_chance_on_random_labels_and_deterministic():
    rng = np.random.default_rng(6)
    train, test = rng.normal(size=(1000, 20)), rng.normal(size=(2000, 20))
    train_labels, test_labels = rng.integers(0, 10, 1000), rng.integers(0, 10, 2000)
    result = linear_probe(train, train_labels, test, test_labels, Cs=(0.001, 0.1), seed=3)
    assert 0.06 < result["top1"] < 0.14  # chance is 0.10 (std of the estimate ~0.007)
    assert 0.42 < result["top5"] < 0.58  # chance is 0.50
    assert linear_probe(train, train_labels, test, test_labels, Cs=(0.001, 0.1), seed=3) == result


def test_raw_features_are_the_clip_readme_variant_and_scale_matters_only_to_it():
    """Standardised features make the probe blind to the scale of each feature; raw ones do not."""
    train, train_labels = clusters(4, 30, 6, 1.0, seed=8)
    test, test_labels = clusters(4, 30, 6, 1.0, seed=9)
    scale = np.array([30.0, 0.03, 1.0, 1.0, 1.0, 1.0])  # one dimension large, one tiny
    kw = {"Cs": (0.316,)}  # the CLIP README's C
    standardized = linear_probe(train, train_labels, test, test_labels, **kw)
    assert linear_probe(train * scale, train_labels, test * scale, test_labels, **kw) == standardized
    raw = linear_probe(train, train_labels, test, test_labels, preprocessing="raw", **kw)
    raw_scaled = linear_probe(train * scale, train_labels, test * scale, test_labels,
                              preprocessing="raw", **kw)
    assert raw["preprocessing"] == "raw" and standardized["preprocessing"] == "standardized"
    assert raw_scaled["top1"] != raw["top1"]
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        linear_probe(train, train_labels, test, test_labels, preprocessing="whitened")


def test_linear_probe_with_one_c_skips_selection():
    train, labels = clusters(3, 5, 4, 0.1, seed=7)
    result = linear_probe(train, labels, train, labels, Cs=(1.0,))
    assert result["C"] == 1.0 and result["val_top1"] is None and result["top1"] == 1.0


def test_stratified_holdout_takes_the_fraction_of_every_class():
    labels = np.repeat(np.arange(4), [10, 20, 30, 1])
    fit, held_out = stratified_holdout(labels, 0.1, seed=0)
    assert np.bincount(labels[held_out], minlength=4).tolist() == [1, 2, 3, 0]
    assert np.intersect1d(fit, held_out).size == 0 and fit.size + held_out.size == labels.size
    again = stratified_holdout(labels, 0.1, seed=0)
    assert np.array_equal(again[1], held_out)


def test_label_subsets_are_class_balanced_nested_and_sized_right():
    labels = np.repeat(np.arange(10, dtype=np.int64), 100)
    one = class_balanced_subset(labels, 0.01, seed=1)
    ten = class_balanced_subset(labels, 0.1, seed=1)
    assert np.bincount(labels[one]).tolist() == [1] * 10
    assert np.bincount(labels[ten]).tolist() == [10] * 10
    assert np.isin(one, ten).all()
    assert class_balanced_subset(labels, 1.0, seed=1).size == 1000
    tiny = class_balanced_subset(labels, 0.001, seed=1)  # rounds to 0 per class: one each
    assert np.bincount(labels[tiny]).tolist() == [1] * 10
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        class_balanced_subset(labels, 1.5, seed=1)


def test_label_efficiency_probes_each_fraction():
    train, train_labels = clusters(4, 50, 8, 0.5, seed=8)
    test, test_labels = clusters(4, 10, 8, 0.5, seed=9)
    results = label_efficiency(
        train, train_labels, test, test_labels, fractions=(0.02, 0.5, 1.0), Cs=(1.0,)
    )
    assert list(results) == [0.02, 0.5, 1.0]
    assert [r["num_labels"] for r in results.values()] == [4, 100, 200]
    assert results[0.5]["top1"] == 1.0 and results[1.0]["top1"] == 1.0
    # One label per class: standardising 4 samples blows the pure-noise dimensions up to the
    # scale of the signal, so the probe is above chance (0.25) but not perfect.
    assert 0.25 < results[0.02]["top1"] < 1.0


def test_label_efficiency_takes_the_full_probe_it_is_given_as_its_all_labels_entry():
    train, train_labels = clusters(4, 50, 8, 2.0, seed=8)  # overlapping: accuracies below 1
    test, test_labels = clusters(4, 10, 8, 2.0, seed=9)
    fitted = label_efficiency(train, train_labels, test, test_labels, fractions=(0.5, 1.0))
    full = linear_probe(train, train_labels, test, test_labels)
    assert {k: fitted[1.0][k] for k in full} == full  # the same probe, fitted again ...
    marked = {**full, "top1": -1.0}  # ... so a given one is used, not refitted
    reused = label_efficiency(train, train_labels, test, test_labels, fractions=(0.5, 1.0),
                              full_probe=marked)
    assert reused[1.0] == {**marked, "num_labels": 200} and reused[0.5] == fitted[0.5]


# ----- diagnostics ------------------------------------------------------------------------------
def test_collapsed_embeddings_have_zero_std_rank_one_and_zero_uniformity():
    z = np.tile([[0.5, -2.0, 1.0, 3.0]], (50, 1))
    result = diagnostics(z, z * 2.0)
    assert result["embedding_std"] == pytest.approx(0.0, abs=1e-12)
    assert result["collapse_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert result["effective_rank"] == pytest.approx(1.0, abs=1e-9)
    assert result["uniformity"] == pytest.approx(0.0, abs=1e-12)
    assert result["alignment"] == pytest.approx(0.0, abs=1e-12)


def test_a_collapse_to_the_zero_vector_is_collapsed_too():
    """A dead ReLU maps every image to 0, which normalising leaves at 0: uniformity must not read
    those pairs as orthogonal unit vectors (-4, "better than isotropic"), and a zero row is at
    squared distance 1 from a unit row, not 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 on the way
        result = diagnostics(np.zeros((8, 4)))
    assert result["uniformity"] == 0.0 and result["effective_rank"] == 1.0
    half = np.concatenate([np.zeros((1, 2)), [[1.0, 0.0]]])
    assert uniformity(half) == pytest.approx(-2.0)  # log exp(-2 * 1)
    rng = np.random.default_rng(0)
    sampled = np.concatenate([np.zeros((300, 4)), rng.normal(size=(300, 4))])
    assert uniformity(sampled, max_pairs=50_000) == pytest.approx(uniformity(sampled), abs=0.02)


def test_isotropic_gaussian_is_healthy():
    rng = np.random.default_rng(10)
    z = rng.normal(size=(4000, 32))
    result = diagnostics(z)
    assert result["collapse_ratio"] == pytest.approx(1.0, abs=0.02)
    assert result["embedding_std"] == pytest.approx(1 / math.sqrt(32), rel=0.02)
    assert 30.0 < result["effective_rank"] <= 32.0
    assert result["uniformity"] < -3.0  # log E exp(-2 * ~2) for near-orthogonal pairs
    assert "alignment" not in result


def test_diagnostics_closed_forms():
    e = np.eye(3)
    assert alignment(e, -e) == pytest.approx(4.0)  # ||u - (-u)||^2 = 4
    assert alignment(e, -e, alpha=1) == pytest.approx(2.0)
    assert uniformity(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-8.0)  # log exp(-2*4)
    assert effective_rank(np.array([[3.0, 0.0], [0.0, 1.0]])) == pytest.approx(2.0)
    # Unequal singular values (sqrt 3 and 1): exp of the entropy of sigma / sum(sigma), 1.929;
    # sigma^2 in its place would give 1.755, the matrix rank 2.
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    assert effective_rank(np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])) == pytest.approx(
        math.exp(-np.sum(p * np.log(p))), rel=1e-12)
    assert embedding_std(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(math.sqrt(0.5))


def test_uniformity_subsamples_pairs_deterministically_for_large_sets():
    rng = np.random.default_rng(11)
    z = rng.normal(size=(600, 8))
    exact = uniformity(z)
    sampled = uniformity(z, max_pairs=50_000, seed=5)
    assert sampled == uniformity(z, max_pairs=50_000, seed=5)
    assert sampled != exact and sampled == pytest.approx(exact, abs=0.02)


def test_label_efficiency_uses_a_fixed_c_where_too_few_labels_remain_to_select_one():
    train, train_labels = clusters(4, 50, 8, 0.5, seed=8)
    test, test_labels = clusters(4, 10, 8, 0.5, seed=9)
    results = label_efficiency(train, train_labels, test, test_labels, fractions=(0.02, 1.0),
                               few_label_c=0.5)
    assert results[0.02]["num_labels"] == 4  # one per class: no validation part possible
    assert (results[0.02]["C"], results[0.02]["val_top1"]) == (0.5, None)
    assert results[1.0]["val_top1"] is not None  # enough labels: C selected on held-out data
    assert results[1.0]["C"] in DEFAULT_CS


def test_average_batch_statistics_leaves_the_mean_of_the_batch_statistics():
    layer = {"moving": 5.0, "keep": None}  # an initial value the result must not depend on

    def set_keep(keep):
        layer["keep"] = keep

    def forward(batch):  # a BN layer's update of its moving mean, in Keras' convention
        layer["moving"] = layer["keep"] * layer["moving"] + (1 - layer["keep"]) * batch.mean()

    batches = [np.full(3, value) for value in (1.0, 2.0, 6.0)]
    assert average_batch_statistics(iter(batches), forward, set_keep) == 3
    assert layer["moving"] == pytest.approx(3.0)
    assert average_batch_statistics(iter(batches[:1]), forward, set_keep) == 1
    assert layer["moving"] == 1.0  # the first batch replaces whatever was there
    short_last = [np.full(3, 1.0), np.full(3, 2.0), np.full(1, 10.0)]  # 7 images: (3 + 6 + 10) / 7
    assert average_batch_statistics(iter(short_last), forward, set_keep) == 3
    assert layer["moving"] == pytest.approx(19 / 7)  # not (1 + 2 + 10) / 3


def test_the_images_digest_tells_the_capped_subsets_of_two_seeds_apart():
    config = {"dataset": "digits", "data_dir": None, "knn_train_split": "train", "knn_test_split": "test",
              "knn_max_train": None, "knn_max_test": 100, "seed": 0}

    def digest(**changes) -> str:
        return images_digest(*evaluation_splits({**config, **changes}))

    first, again = evaluation_splits(config), evaluation_splits(config)
    assert all(a is b for a, b in zip(first, again, strict=True))  # loaded once: the monitor asks every epoch
    assert digest() == digest()  # the same seed draws the same subset
    assert digest(seed=1) != digest()  # as many images, other ones
    assert digest(knn_max_test=None, seed=1) == digest(knn_max_test=None)  # uncapped: every image
    assert digest(knn_max_test=101) != digest()



def class_by_class(classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """A split stored class by class, as an image folder lists it: image i's pixels hold its label."""
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    return np.broadcast_to(labels[:, None, None, None], (len(labels), 8, 8, 3)).astype(np.uint8), labels


def test_the_diagnostics_and_the_collapse_check_see_every_class_of_a_split_stored_class_by_class(
        monkeypatch):
    """The first 1,024 test images of CIFAR-10 as an image folder are all aeroplanes: the
    diagnostics and the collapse check draw their images from the whole split instead."""
    images, labels = class_by_class(10, 300)
    config = {"dataset": "folder", "knn_k": 20, "knn_temperature": 0.1, "seed": 0,
              "augment": "simclr", "image_size": 8}
    monkeypatch.setattr(flow, "evaluation_splits", lambda *_: (images, labels, images, labels))
    diagnosed = []
    monkeypatch.setattr(flow, "diagnostics_of_views",
                        lambda encoder, sample, config: diagnosed.append(sample) or {})
    flow.evaluate(flow.PixelEncoder(config), config, with_label_efficiency=False)
    (diagnosed,) = diagnosed
    assert len(diagnosed) == flow.DIAGNOSTIC_IMAGES
    assert np.unique(diagnosed[:, 0, 0, 0]).tolist() == list(range(10))

    checked = flow.representation_sample(lambda batch: batch.reshape(len(batch), -1), images, config)
    assert len(checked) == flow.REPRESENTATION_SAMPLE
    assert len(np.unique(checked[:, 0])) == 10  # one normalised pixel value per class
    again = flow.representation_sample(lambda batch: batch.reshape(len(batch), -1), images, config)
    np.testing.assert_array_equal(again, checked)  # the same images at every epoch


DIGITS = {"dataset": "digits", "data_dir": None, "knn_train_split": "train", "knn_test_split": "test",
          "knn_max_train": None, "knn_max_test": None, "seed": 0, "knn_k": 20, "knn_temperature": 0.1,
          "augment": "simclr", "image_size": 8}
CHAPTER = types.SimpleNamespace(title="Toy", evaluate_command="python -m toy.evaluate",
                                train_command="python -m toy.train", framework="toy")


def test_evaluation_json_records_the_knn_k_and_temperature_it_was_measured_with():
    """``common.compare --runs`` refuses runs whose kNN settings differ: they must be written."""
    results = flow.evaluate(flow.PixelEncoder(DIGITS), {**DIGITS, "knn_k": 7, "knn_temperature": 0.5},
                            max_train=200, max_test=50, with_label_efficiency=False)
    assert (results["knn"]["k"], results["knn"]["temperature"]) == (7, 0.5)
    assert results["linear_probe"]["preprocessing"] == "standardized"


def test_caps_no_evaluation_can_use_are_refused_before_anything_runs(capsys):
    for flags, message in ((["--max-train", "2"], "--max-train must be at least 3 (got 2): the probe"),
                           (["--max-test", "1"], "--max-test must be at least 2 (got 1): the diagnostics")):
        with pytest.raises(SystemExit) as exit_:
            flow.main(CHAPTER, load=None, argv=["RUN", *flags])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_capped_draw_the_probe_or_the_diagnostics_cannot_use_names_the_cap_to_raise():
    """The 3 training images drawn with seed 1 are of 3 classes, one image each: none to hold out
    for choosing C. A run trained with --knn-max-test 1 (the monitor's cap, allowed there) caps its
    evaluation's test images to 1 unless --max-test says otherwise."""
    with pytest.raises(ConfigError, match=r"the 3 training images evaluated hold 3 class\(es\).*"
                                          r"raise --max-train \(common.compare's --eval-max-train\)"):
        flow.evaluate(flow.PixelEncoder(DIGITS), {**DIGITS, "seed": 1}, max_train=3,
                      with_label_efficiency=False)
    with pytest.raises(ConfigError, match=r"only 1 test image\(s\).*the run's --knn-max-test 1 caps it: "
                                          r"give --max-test N"):
        flow.evaluate(flow.PixelEncoder(DIGITS), {**DIGITS, "knn_max_test": 1}, max_train=200,
                      with_label_efficiency=False)


def test_an_evaluation_with_another_probe_preprocessing_never_replaces_the_default_one():
    parser = flow.build_parser(CHAPTER)
    names = {tuple(flags): flow.default_output(parser.parse_args(["RUN", *flags])).name for flags in (
        [], ["--probe-features", "raw"], ["--random-init", "--recalibrate-bn", "--probe-features", "raw"],
        ["--pixels", "--probe-features", "standardized"])}
    assert names == {(): "evaluation.json", ("--probe-features", "raw"): "evaluation-raw-probe.json",
                     ("--random-init", "--recalibrate-bn", "--probe-features", "raw"):
                         "evaluation-random-init-recalibrated-bn-raw-probe.json",
                     ("--pixels", "--probe-features", "standardized"): "evaluation-pixels.json"}
    assert flow.default_output(parser.parse_args(["RUN"])).parent == Path("RUN")

