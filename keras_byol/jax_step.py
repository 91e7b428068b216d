"""The BYOL training step on the JAX backend: the target's EMA applied to the step's state.

Why JAX needs its own step: Keras' JAX ``fit`` is stateless. ``train_step(state, data)`` receives
the values of every variable as a tuple ``(trainable, non_trainable, optimizer, metrics)``, runs
under ``jax.jit`` and returns new values; ``fit`` writes them back into the ``keras.Variable``
objects only at the end of each epoch (before that the variables are purged). An EMA written to the
variables from a callback would therefore read stale online weights and be overwritten by the next
write-back: lost, or late.

What this step does instead: Keras' own JAX step (forward, loss, gradients, optimizer), then
``model.update_target()`` -- the very code TensorFlow and PyTorch run -- inside a
``keras.StatelessScope`` that maps every model variable to its value in the new state. The
target's ``assign`` calls are recorded by the scope and read back into the non-trainable part of
the state (the target variables and ``ema_step`` live there: ``keras_byol/byol.py``).
"""

from __future__ import annotations

import keras


def train_step(model, keras_train_step, state, data):
    """``keras_train_step(state, data)``, then the target's EMA on the state it returns."""
    logs, (trainable, non_trainable, optimizer_values, metric_values) = keras_train_step(state, data)
    mapping = [*zip(model.trainable_variables, trainable, strict=True),
               *zip(model.non_trainable_variables, non_trainable, strict=True)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        step_loss = model.step_loss.value  # as compute_loss recorded it in this step's state
        tau = model.update_target()
    non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
    logs = {**logs, "step_loss": step_loss, "tau": tau}
    return logs, (trainable, non_trainable, optimizer_values, metric_values)
