"""keras_byol: the BYOL model trained with ``model.fit`` on all three backends, its target network
(EMA schedule, BatchNorm statistics modes, kept out of the optimizer) and the stream dataset."""

import keras
import numpy as np
import pytest
from keras import ops

from common.arch import ResNetSpec
from common.augment import preset
from common.schedules import ema_momentum
from common.stream import DataStream
from keras_byol.byol import BYOL
from keras_byol.data import StreamDataset, step_inputs
from keras_byol.optim import build_optimizer
from keras_byol.target import BN_STATS_MODES, ema_pairs, tau_at
from tests.keras_checks import EVERY_BACKEND, section

TINY = ResNetSpec("tiny", "basic", (1, 1, 1, 1), (8, 8, 16, 16), "cifar", 1)
PAIR = preset("byol", 16)


def tiny_byol(bn_stats="skip", total_steps=10, base_tau=0.9) -> BYOL:
    return BYOL(TINY, PAIR, total_steps=total_steps, base_tau=base_tau, projector_hidden=32,
                projection_dim=16, predictor_hidden=32, bn_stats=bn_stats)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# model.fit on every backend (tests/keras_checks.py, check_training)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_fit_lowers_the_loss(backend):
    result = section(backend, "training")
    loss = result["loss"]
    assert all(np.isfinite(loss)) and loss[-1] < 0.8 * loss[0], loss
    assert all(np.isfinite(result["stream_loss"]))  # an epoch of the shared stream


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_target_moves_by_exactly_the_ema_after_every_step(backend):
    result = section(backend, "training")
    np.testing.assert_allclose(result["tau"], result["expected_tau"], atol=1e-6)
    assert result["ema_error"] <= 1e-6
    assert result["late_error"] >= 1e-3  # a late or early EMA would be caught
    assert result["ema_step"] == 4 + 2  # one EMA step per optimisation step, nothing else
    # PyTorch records a graph for any op on a tensor that requires grad: the EMA must not (a
    # question only PyTorch's eager autograd raises)
    assert result["ema_saved_for_backward"] == (0 if backend == "torch" else None)


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_only_the_online_network_is_optimised(backend):
    result = section(backend, "training")
    online = result["online_trainable"]  # "network:path" of each variable (check_training)
    assert {name.split(":")[0] for name in online} == {"online_encoder", "online_projector", "predictor"}
    # the very variables, in order: every online trainable one, and none of the target's
    assert result["optimizer_variables"] == result["model_trainable"] == online
    assert len(result["target_variables"]) > len(online)  # the target's weights and statistics
    assert not set(result["optimizer_variables"]) & set(result["target_variables"])
    # "skip": the target's BN statistics follow its own training-mode forwards, and only those;
    # "average" (pulled towards the online statistics) or "copy" (the online ones) would fail
    assert result["target_stats_moved"] > 1e-2
    assert result["target_stats_skip_error"] <= 1e-6  # measured 5e-9 to 1.6e-8 (float32)
    # measured 0.006 to 0.008 on the three backends: "average" would miss by that much
    assert result["target_stats_if_averaged"] > 1e-3 and result["target_stats_own"] > 1e-2


# ---------------------------------------------------------------------------------------------
# The target network
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start_step", [0, 4])  # 4: a run extended at its step 4 (ema_rise)
def test_the_traced_tau_equals_the_common_reference(start_step):
    k = np.arange(0, 13)
    tau = ema_momentum(0.996, k, 10, start_step)
    graph = [float(tau_at(ops.convert_to_tensor(step, "int32"), 10, 0.996, start_step)) for step in k]
    np.testing.assert_allclose(graph, tau, atol=1e-7)
    assert graph[start_step] == pytest.approx(0.996) and graph[10] == 1.0


def test_build_byol_takes_the_continued_target_schedule_of_an_extended_run():
    """``build_byol`` (what ``train.py`` calls with ``ema_rise``) gives the model the continued rise:
    its first EMA step after the extension uses the rate the run had reached, not tau0."""
    from common.schedules import LrSchedule, ema_rise
    from keras_byol import train
    from keras_byol.evaluate import build_byol

    config = train.parse_request(["--arch", "resnet10_small", "--image-size", "16"]).config
    schedule = LrSchedule(1.0, 100, 10).continued(60, 200)
    model = build_byol(config, tau=ema_rise(config["target_momentum"], schedule))
    model.ema_step.assign(60)
    reached = ema_momentum(config["target_momentum"], 60, 100)
    assert float(model.update_target()) == pytest.approx(reached, abs=1e-7) != config["target_momentum"]


def test_target_layers_normalise_with_batch_statistics_but_are_not_trained():
    model = tiny_byol()
    assert all(not v.trainable for v in model.target_encoder.weights + model.target_projector.weights)
    assert all(layer.trainable for layer in model.target_encoder.layers)
    trainable = {id(v) for v in model.trainable_variables}
    online = model.online_encoder.weights + model.online_projector.weights + model.predictor.weights
    assert trainable == {id(v) for v in online if v.trainable}
    x = np.random.default_rng(1).random((8, 16, 16, 3)).astype(np.float32) * 3
    batch_stats = model.target_encoder(x, training=True)
    assert not np.allclose(batch_stats, model.target_encoder(x, training=False), atol=1e-3)


def _stat_variables(network) -> list:
    """The BatchNorm moving statistics of ``network``, found by layer type (not by the variable
    names ``keras_byol.target.is_moving_statistic`` goes by, which this test checks)."""
    return [v for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def _stats(network):
    return [ops.convert_to_numpy(v.value).copy() for v in _stat_variables(network)]


@pytest.mark.parametrize("bn_stats", BN_STATS_MODES)
def test_bn_statistics_modes(bn_stats):
    model = tiny_byol(bn_stats=bn_stats, total_steps=10, base_tau=0.9)
    x = np.random.default_rng(2).random((8, 16, 16, 3)).astype(np.float32) * 3
    model.online_encoder(x, training=True)  # give the two networks different statistics
    online, before = _stats(model.online_encoder), _stats(model.target_encoder)
    assert len(online) >= 2 and max(np.max(np.abs(o - b)) for o, b in zip(online, before, strict=True)) > 1e-3
    statistics = {id(v) for v in _stat_variables(model.target_encoder)}
    averaged = {id(t) for t, _ in model.target_pairs}
    assert statistics & averaged == (statistics if bn_stats == "average" else set())
    weights = [(t, o) for t, o in model.target_pairs if id(t) not in statistics]
    weights_before = [ops.convert_to_numpy(t.value).copy() for t, _ in weights]
    tau = float(model.update_target())
    assert tau == pytest.approx(0.9) and int(ops.convert_to_numpy(model.ema_step.value)) == 1
    after = _stats(model.target_encoder)
    for o, b, a in zip(online, before, after, strict=True):
        expected = {"skip": b, "copy": o, "average": b + (1 - tau) * (o - b)}[bn_stats]
        np.testing.assert_allclose(a, expected, rtol=1e-6, atol=1e-7)
    for (t, o), b in zip(weights, weights_before, strict=True):
        np.testing.assert_allclose(ops.convert_to_numpy(t.value),
                                   b + (1 - tau) * (ops.convert_to_numpy(o.value) - b), atol=1e-7)


def test_ema_pairs_refuse_networks_that_do_not_correspond():
    model = tiny_byol()
    with pytest.raises(ValueError, match="bn_stats"):
        ema_pairs((model.online_encoder,), (model.target_encoder,), "freeze")
    with pytest.raises(ValueError, match="do not correspond"):
        ema_pairs((model.online_encoder,), (model.target_projector,), "skip")


def test_networks_start_independent_and_call_returns_both_views(images):
    model = tiny_byol()
    online = [ops.convert_to_numpy(o.value) for _, o in model.target_pairs]
    target = [ops.convert_to_numpy(t.value) for t, _ in model.target_pairs]
    assert any(o.size > 1 and not np.allclose(o, t) for o, t in zip(online, target, strict=True))
    stream = DataStream(len(images), (16, 16), 8, PAIR, seed=0)
    out = model(step_inputs(images, stream.step(0, 0)), training=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (8, 16) for k in ("p1", "p2", "z1", "z2")}
    with pytest.raises(ValueError, match="start_step < total_steps"):
        tiny_byol(total_steps=0)


def test_compile_builds_the_optimizer_on_the_online_variables():
    model = tiny_byol()
    model.compile(optimizer=build_optimizer("lars", 0.1, weight_decay=1e-6))
    assert model.optimizer.built
    assert [id(v) for v in model.optimizer._trainable_variables] == [
        id(v) for v in model.trainable_variables]


# ---------------------------------------------------------------------------------------------
# The stream as fit's input
# ---------------------------------------------------------------------------------------------
def test_stream_dataset_items_are_the_remaining_steps_of_an_epoch(images):
    stream = DataStream(len(images), (16, 16), 4, PAIR, seed=3)  # 4 steps per epoch
    dataset = StreamDataset(images, stream, epoch=6, first_step=1)  # resumed after step 0
    assert len(dataset) == 3
    item = dataset[1]
    expected = stream.step(6, 2)
    np.testing.assert_array_equal(item["images"], images[expected.indices])
    np.testing.assert_array_equal(item["view2"], step_inputs(images, expected)["view2"])
    assert item["view1"].dtype == np.float32 and item["images"].dtype == np.uint8
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(ValueError, match="uint8"):
        StreamDataset(images.astype(np.float32), stream, epoch=0)


def test_fit_reads_every_step_once_in_order(images):
    """``shuffle=False``: fit would otherwise feed a PyDataset's items in a random order."""
    stream = DataStream(len(images), (16, 16), 4, PAIR, seed=0)
    seen = []

    class Recording(StreamDataset):
        def __getitem__(self, index):
            seen.append(index)
            return super().__getitem__(index)

    class Probe(keras.Model):  # the smallest model that takes the stream's dict
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, inputs):
            return self.dense(inputs["view1"])

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return ops.mean(ops.square(y_pred))

    model = Probe()
    model.compile(optimizer="sgd", run_eagerly=True)
    dataset = Recording(images, stream, epoch=3, first_step=0)
    history = model.fit(dataset, epochs=1, shuffle=False, verbose=0).history
    assert len(history["loss"]) == 1 and seen[-len(dataset):] == list(range(len(dataset)))


def test_recalibrated_bn_statistics_are_those_of_the_batches():
    from keras_byol.evaluate import KerasEncoder

    model = tiny_byol()
    encoder = model.online_encoder
    batch = np.random.default_rng(0).uniform(-2, 2, (16, 16, 16, 3)).astype(np.float32)
    in_training = keras.ops.convert_to_numpy(encoder(batch, training=True))  # moves the statistics
    wrapped = KerasEncoder(model, {})
    assert np.abs(wrapped.features(batch) - in_training).max() > 0.1
    wrapped.recalibrate_bn([batch])
    np.testing.assert_allclose(wrapped.features(batch), in_training, rtol=1e-4, atol=1e-5)
    norms = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {round(layer.momentum, 6) for layer in norms} == {0.9}
    # Over batches of 12 and 4 images, the first BN's statistics are the image-weighted mean of the
    # two batches' (biased, as Keras keeps them); the last batch alone, or equal weights, differ.
    first = norms[0]
    seen = [keras.ops.convert_to_numpy(keras.Model(encoder.input, first.input)(part))
            for part in (batch[:12], batch[12:])]
    means = [x.mean(axis=(0, 1, 2)) for x in seen]
    variances = [x.var(axis=(0, 1, 2)) for x in seen]
    wrapped.recalibrate_bn([batch[:12], batch[12:]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_mean),
                               (12 * means[0] + 4 * means[1]) / 16, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_variance),
                               (12 * variances[0] + 4 * variances[1]) / 16, rtol=1e-4, atol=1e-6)
    assert np.abs(means[0] - means[1]).max() > 1e-2  # the weighting is visible
    assert {round(layer.momentum, 6) for layer in norms} == {0.9}  # and put back


def test_predictor_width_zero_is_byol_without_a_predictor(images):
    model = BYOL(TINY, PAIR, total_steps=10, projector_hidden=32, projection_dim=16, predictor_hidden=0)
    assert not model.predictor.weights
    stream = DataStream(len(images), (16, 16), 8, PAIR, seed=0)
    inputs = step_inputs(images, stream.step(0, 0))
    out = model(inputs, training=False)
    view = model.view1(inputs["images"], inputs["view1"])
    online = model.online_projector(model.online_encoder(view, training=False), training=False)
    np.testing.assert_allclose(ops.convert_to_numpy(out["p1"]), ops.convert_to_numpy(online), atol=1e-6)


def test_compile_views_is_refused_off_the_torch_backend():
    """The in-process backend here is TensorFlow: ``--compile-views`` says why it does not apply,
    before any data is loaded or a network built."""
    from common.errors import ConfigError
    from keras_byol import train

    request = train.parse_request(["--compile-views"])
    assert request.config["compile_views"] is True
    with pytest.raises(ConfigError, match="PyTorch backend.*drop the flag"):
        train.Trainer(request)
    assert train.parse_request([]).config["compile_views"] is False


def test_compile_views_without_a_cpp_compiler_says_what_to_install(monkeypatch):
    from keras_byol import torch_views

    monkeypatch.setattr(torch_views.torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert "apt install g++" in torch_views.missing_compiler()
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(torch_views.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert torch_views.missing_compiler() is None


def test_evaluate_takes_the_backend_flag_in_both_spellings(monkeypatch):
    """The backend is chosen before Keras loads (``keras_byol/backend.py``), so the evaluation's own
    command line (common's) must not see ``--backend`` in either spelling."""
    from keras_byol import evaluate

    seen = []
    monkeypatch.setattr(evaluate.flow, "main", lambda chapter, load, argv: seen.append(argv) or 0)
    for flag in (["--backend", "tensorflow"], ["--backend=tensorflow"]):
        assert evaluate.main(["RUN", *flag, "--max-test", "5"]) == 0
    assert seen == [["RUN", "--max-test", "5"]] * 2


def test_evaluate_runs_on_the_backend_its_run_was_trained_on(tmp_path):
    """``python -m keras_byol.evaluate`` picks the run's backend before Keras loads, reading its
    command line as the evaluation does: an option's value ("100") is not the run directory."""
    import json

    from keras_byol import backend, evaluate

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"backend": "jax", "seed": 0}))
    assert backend.of_evaluation(["--max-test", "100", str(run)]) == "jax"
    assert backend.of_evaluation(["--encoder", "other.safetensors", str(run), "--max-train", "5"]) == "jax"
    assert backend.of_evaluation([str(run), "--backend=torch"]) == "torch"
    # In a process already on TensorFlow, a JAX run is refused with what to do, before anything loads.
    with pytest.raises(evaluate.ConfigError, match="trained on Keras' jax backend and this process "
                                                   "runs tensorflow: evaluate it on jax"):
        evaluate.load_encoder({"backend": "jax", "seed": 0}, "cpu", None, None)
