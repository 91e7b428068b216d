"""BYOL as a ``keras.Model`` trained with ``model.fit``, the same code on every backend.

Grill et al. 2020, section 3.1 and algorithm 1. Each step sees a batch of uint8 images and the two
views' per-image parameters (``keras_byol/data.py`` yields them from the shared stream):

1. views ``v = t(x)``, ``v' = t'(x)`` (``keras_byol/augment.py``, BYOL's asymmetric pair);
2. online network f -> g -> q on both views: predictions ``p1, p2``; target network f -> g on both
   views: projections ``z1, z2`` (each view its own forward, so BatchNorm sees one view's batch, as
   deepmind-research's ``apply_once_fn``);
3. the symmetrised loss ``byol(p1, p2, z1, z2)`` with ``stop_gradient`` on the targets
   (``compute_loss``), and one optimizer step on the online weights only;
4. the target moves towards the updated online weights: ``xi <- xi + (1 - tau_k)(theta - xi)``
   (``keras_byol/target.py``), as part of the same training step.

How the target is kept out of the optimizer while normalising with batch statistics: Keras 3's
BatchNormalization uses the batch statistics only when ``training and layer.trainable``, so the
target's *layers* stay trainable; its *variables* are marked ``trainable = False``. They are then
absent from ``model.trainable_variables`` -- what every backend's ``train_step`` differentiates and
hands to the optimizer -- and present in ``model.non_trainable_variables``, the state JAX's
stateless step threads through. (Setting ``layer.trainable`` again would re-mark them: don't.)

Why ``train_step`` is overridden, and why that is enough on TensorFlow and PyTorch: their steps are
stateful, so the EMA simply runs after Keras' own step (inside the same ``tf.function`` on
TensorFlow). JAX's ``fit`` is stateless -- variables are values threaded through a jitted function
and written back only at the end of an epoch -- so an EMA assigned to the variables from a callback
would be lost or late; ``keras_byol/jax_step.py`` applies the same update to the step's state.
Keras' own ``use_ema`` is not a BYOL target: it averages the trained weights in place of the model's
and has no second network.

On several devices (``keras_byol/distributed.py``) the same step runs data-parallel: on JAX as one
program over the global batch; on TensorFlow once per replica, with the loss scaled for the
optimizer's sum over replicas (``distributed.replica_share``), the recorded step loss averaged over
the replicas (``step_loss`` aggregates by mean) and the EMA in cross-replica context
(``distributed.cross_replica``).
"""

from __future__ import annotations

import keras
from keras import ops

from common.arch import ResNetSpec, feature_dim
from common.augment import PairSpec
from keras_byol import distributed, jax_step, losses
from keras_byol.augment import ViewLayer
from keras_byol.model import build_encoder, build_mlp
from keras_byol.target import ema_pairs, ema_update, tau_at


class BYOL(keras.Model):
    """The online network (encoder, projector, predictor), the target network (encoder, projector)
    and the two view layers.

    ``inputs`` of ``call`` / ``fit``: ``{"images": uint8 (N, H, W, 3), "view1": (N, P), "view2":
    (N, P)}``, dense view parameters as ``augment.dense_params``. ``call`` returns the predictions
    ``p1, p2`` and the target projections ``z1, z2``. ``total_steps``, ``base_tau`` and
    ``start_step`` set the target decay schedule (``target.tau_at``; ``start_step`` is 0 but in an
    extended run, ``common.schedules.ema_rise``), ``bn_stats`` what the EMA does with the target's BatchNorm
    statistics (``target.BN_STATS_MODES``; default ``"skip"``, as deepmind-research). ``sync_bn``:
    BatchNorm over all replicas of a ``tf.distribute`` strategy (TensorFlow only; what
    ``distributed.place`` decides).

    The two networks are initialised independently, as deepmind-research ("Online and target
    parameters are initialized using different rngs"; solo-learn copies the online weights).
    """

    def __init__(self, spec: ResNetSpec, pair_spec: PairSpec, total_steps: int,
                 base_tau: float = 0.996, projector_hidden: int = 4096, projection_dim: int = 256,
                 predictor_hidden: int = 4096, bn_stats: str = "skip", sync_bn: bool = False,
                 compiled_views: bool = False, start_step: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= start_step < total_steps or not 0.0 <= base_tau <= 1.0:
            raise ValueError(f"need 0 <= start_step < total_steps and 0 <= base_tau <= 1, got "
                             f"{start_step}, {total_steps}, {base_tau}")
        self.spec, self.pair_spec = spec, pair_spec
        self.total_steps, self.base_tau, self.bn_stats = total_steps, base_tau, bn_stats
        self.start_step = start_step
        width = feature_dim(spec)
        self.view1 = ViewLayer(pair_spec.view1, compiled=compiled_views, name="view1")
        self.view2 = ViewLayer(pair_spec.view2, compiled=compiled_views, name="view2")
        sync = {"synchronized": sync_bn}
        self.online_encoder = build_encoder(spec, "online_encoder", **sync)
        self.online_projector = build_mlp(width, projector_hidden, projection_dim, "online_projector",
                                          **sync)
        # predictor_hidden 0: no predictor (q = identity), the ablation that collapses (Grill et al.
        # 2020, section 5, table 5; docs/book/03-algorithms.md measures it)
        self.predictor = (build_mlp(projection_dim, predictor_hidden, projection_dim, "predictor", **sync)
                          if predictor_hidden else keras.layers.Identity(name="predictor"))
        self.target_encoder = build_encoder(spec, "target_encoder", **sync)
        self.target_projector = build_mlp(width, projector_hidden, projection_dim, "target_projector",
                                          **sync)
        for variable in self.target_encoder.weights + self.target_projector.weights:
            variable.trainable = False
        self.target_pairs, self.target_copies = ema_pairs(
            (self.online_encoder, self.online_projector),
            (self.target_encoder, self.target_projector), bn_stats)
        self.ema_step = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                        trainable=False, name="ema_step")
        # This step's loss: Keras' "loss" log is a running mean over the epoch, the run's metrics
        # rows want each step's own value. Under tf.distribute each replica assigns its shard's
        # mean, and "mean" aggregation makes every copy the global mean (equal shards).
        self.step_loss = self.add_weight(shape=(), dtype="float32", initializer="zeros",
                                         trainable=False, aggregation="mean", name="step_loss")
        # Every network above is a functional model, built when constructed, and the view layers
        # hold no weights: the model is complete now (weights can be loaded before any call).
        self.built = True

    def compile(self, optimizer, **kwargs):
        """``keras.Model.compile``, then the optimizer built on the online variables right away.

        Built now, its variables exist before the first traced step: TensorFlow would otherwise
        create them while tracing and trace the whole step a second time (and under
        ``MirroredStrategy`` fail outright).
        """
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=False):
        views = (self.view1(inputs["images"], inputs["view1"]),
                 self.view2(inputs["images"], inputs["view2"]))
        predictions, projections = [], []
        for view in views:
            online = self.online_projector(self.online_encoder(view, training=training),
                                           training=training)
            predictions.append(self.predictor(online, training=training))
            target = self.target_projector(self.target_encoder(view, training=training),
                                           training=training)
            projections.append(ops.stop_gradient(target))
        return {"p1": predictions[0], "p2": predictions[1], "z1": projections[0],
                "z2": projections[1]}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = losses.byol(y_pred["p1"], y_pred["p2"], y_pred["z1"], y_pred["z2"])
        self.step_loss.assign(ops.cast(loss, "float32"))
        return distributed.replica_share(loss)

    def update_target(self):
        """One EMA step of the target at the current ``ema_step``; returns the tau used."""
        tau = tau_at(self.ema_step, self.total_steps, self.base_tau, self.start_step)
        ema_update(self.target_pairs, self.target_copies, tau)
        self.ema_step.assign(self.ema_step + 1)
        return tau

    def train_step(self, *args):
        """Keras' step (forward, ``compute_loss``, optimizer), then the target's EMA step."""
        if keras.backend.backend() == "jax":
            return jax_step.train_step(self, super().train_step, *args)
        logs = super().train_step(*args)
        tau = distributed.cross_replica(self.update_target)
        return {**logs, "step_loss": ops.convert_to_tensor(self.step_loss), "tau": tau}
