"""MoCo v2's networks in Keras 3: the ResNet encoder, the MLP head, and the query/key pair with its
queue of negative keys.

MoCo (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning") trains a
query encoder by back-propagation and lets a key encoder follow it as a moving average (section
3.2, eq. 2); a queue holds the keys of past batches as negatives (section 3.1). MoCo v2 (Chen et al.
2020, "Improved Baselines with Momentum Contrastive Learning", section 3) adds a 2-layer MLP head.

The encoder follows ``common/arch.py``'s spec with Keras layers, channels-last (NHWC) float inputs,
and moves between frameworks through the portable weights of ``common/weights.py``: every layer is
named after its portable tensor prefix (``stage2.block0.bn1``), so a portable name is a layer name
plus the Keras attribute (``kernel``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``), and
HWIO kernels are Keras' own layout.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from common.arch import ResNetSpec, feature_dim, tensor_shapes
from common.weights import load_encoder, save_encoder, validate_tensors
from tensorflow_moco.losses import l2_normalize

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"tensorflow_moco needs Keras' TensorFlow backend, but Keras runs on "
        f"{keras.backend.backend()!r}; unset KERAS_BACKEND (or set it to 'tensorflow') before "
        "anything imports keras"
    )

KEY_BN_STATS = ("skip", "copy", "average")


# --------------------------------------------------------------------------------------------------
# BatchNorm: PyTorch's conventions, split BN, moving statistics averaged over replicas
# --------------------------------------------------------------------------------------------------
class BatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization with two additions MoCo needs.

    **Split BN** (``num_splits > 1``, the MoCo CIFAR-10 demo's ``SplitBatchNorm``, ``--bn-splits 8``):
    in training the batch is cut into ``num_splits`` contiguous groups, each normalised with its own
    statistics, as if each group sat on its own GPU; the moving statistics move towards the mean
    over the groups of their batch statistics (the demo averages its per-split running averages:
    the same number for the mean; for the variance the demo's ``F.batch_norm`` feeds in each
    group's unbiased variance, n/(n - 1) times the biased one Keras keeps, ``docs/encoders.md``).
    Groups of contiguous samples are exactly what ``num_splits`` replicas with per-replica BN see,
    so one device with split BN reproduces a multi-replica step; the demo's
    ``view(-1, C * S, H, W)`` groups every S-th sample instead, which is the same in distribution
    (the batch order is random). In inference mode it is an ordinary BN layer.

    **Moving statistics averaged over replicas.** Keras creates them with ``aggregation="none"``:
    under ``MirroredStrategy`` each replica then writes its own batch statistics into its own copy
    of the "mirrored" variable and the copies silently drift apart. Here they are created with
    ``aggregation="mean"``, so each update is all-reduced: every replica holds the mean over replicas
    of its update, the same number split BN gives on one device. (PyTorch DDP instead broadcasts
    rank 0's buffers at every forward, ``broadcast_buffers=True``.)
    """

    def __init__(self, num_splits: int = 1, **kwargs):
        super().__init__(**kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = int(num_splits)

    def add_weight(self, *args, **kwargs):
        if not kwargs.get("trainable", True):  # moving_mean, moving_variance
            kwargs["aggregation"] = "mean"
        return super().add_weight(*args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        # The key encoder stays trainable=True: Keras BN uses batch statistics only when
        # `training and self.trainable`, so a frozen layer would silently use its moving averages.
        if not (training and self.trainable and self.num_splits > 1):
            return super().call(inputs, training=training, mask=mask)
        batch = inputs.shape[0]
        if batch is not None and batch % self.num_splits:
            raise ValueError(f"a batch of {batch} does not split into {self.num_splits} BN groups")
        x = tf.cast(inputs, tf.float32)  # statistics in float32, as Keras BN does
        groups = tf.reshape(x, tf.concat([[self.num_splits, -1], tf.shape(x)[1:]], axis=0))
        axes = list(range(1, len(inputs.shape)))  # all but the group and the channel axes
        mean, variance = keras.ops.moments(groups, axes, keepdims=True)
        scale = tf.math.rsqrt(variance + self.epsilon) * self.gamma
        y = groups * scale + (self.beta - mean * scale)
        group_axes = [0, *axes]
        self.moving_mean.assign(self.momentum * self.moving_mean + (1.0 - self.momentum)
                                * tf.reduce_mean(mean, axis=group_axes))
        self.moving_variance.assign(self.momentum * self.moving_variance + (1.0 - self.momentum)
                                    * tf.reduce_mean(variance, axis=group_axes))
        return tf.cast(tf.reshape(y, tf.shape(x)), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "num_splits": self.num_splits}


# --------------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------------
def _conv_initializer() -> keras.initializers.Initializer:
    """He et al. 2015 with fan-out, untruncated, as torchvision's ResNet: N(0, 2 / (k k out))."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


class _Builder:
    """Creates the encoder's layers with the spec's conventions; each layer named by its prefix."""

    def __init__(self, spec: ResNetSpec, bn_splits: int, dtype):
        self.spec, self.bn_splits, self.dtype = spec, bn_splits, dtype

    def conv(self, x, filters: int, kernel: int, stride: int, name: str):
        """A bias-free convolution padded as PyTorch pads it: ``kernel // 2`` on every side.

        For stride 1 Keras' "same" is that padding. For stride 2 "same" pads asymmetrically (0
        before, 1 after, on an even side), which shifts the sampling grid by a pixel relative to
        PyTorch, so the padding is explicit and the convolution "valid".
        """
        padding = "same"
        if stride > 1 and kernel > 1:
            x = keras.layers.ZeroPadding2D(kernel // 2, dtype=self.dtype, name=f"{name}.pad")(x)
            padding = "valid"
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                                   kernel_initializer=_conv_initializer(), dtype=self.dtype,
                                   name=name)(x)

    def bn(self, x, name: str, zero_gamma: bool = False):
        """BN with the spec's PyTorch-convention hyper-parameters converted to Keras'.

        PyTorch's ``momentum`` 0.1 is the weight of the new batch statistic, Keras' the weight of
        the old value: 1 - 0.1 = 0.9. Epsilon 1e-5 (Keras' default is 1e-3).
        """
        return BatchNorm(self.bn_splits, momentum=1.0 - self.spec.bn_momentum,
                         epsilon=self.spec.bn_eps,
                         gamma_initializer="zeros" if zero_gamma else "ones",
                         dtype=self.dtype, name=name)(x)

    def relu(self, x):
        return keras.layers.ReLU(dtype=self.dtype)(x)

    def block(self, x, prefix: str, in_channels: int, width: int, stride: int):
        """A basic or bottleneck block (stride on the 3x3 conv, torchvision's ResNet v1.5)."""
        spec = self.spec
        out_channels = width * spec.expansion
        if spec.block == "basic":
            convs = [(width, 3, stride), (out_channels, 3, 1)]
        else:
            convs = [(width, 1, 1), (width, 3, stride), (out_channels, 1, 1)]
        y = x
        for index, (filters, kernel, conv_stride) in enumerate(convs, start=1):
            last = index == len(convs)
            y = self.conv(y, filters, kernel, conv_stride, f"{prefix}.conv{index}")
            y = self.bn(y, f"{prefix}.bn{index}", zero_gamma=last and spec.zero_init_residual)
            if not last:
                y = self.relu(y)
        shortcut = x
        if stride != 1 or in_channels != out_channels:
            shortcut = self.conv(x, out_channels, 1, stride, f"{prefix}.shortcut.conv")
            shortcut = self.bn(shortcut, f"{prefix}.shortcut.bn")
        return self.relu(keras.layers.Add(dtype=self.dtype)([y, shortcut]))


def build_encoder(spec: ResNetSpec, bn_splits: int = 1, dtype=None,
                  name: str = "encoder") -> keras.Model:
    """The encoder f: float images (N, H, W, 3) -> representations h (N, feature_dim(spec)).

    The stem is the spec's: ImageNet (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool, all padded
    symmetrically as PyTorch does; the max-pool's zero padding equals PyTorch's -inf padding because
    its input comes out of a ReLU) or CIFAR (3x3 stride-1 conv, BN, ReLU, no max-pool). Initialised
    as ``common/arch.py`` says: He-normal fan-out convs, BN gamma 1 and beta 0, and gamma 0 in the
    last BN of every residual branch when ``spec.zero_init_residual``. ``bn_splits`` > 1 makes every
    BN a split BN (:class:`BatchNorm`); ``dtype`` is a Keras dtype policy (e.g. "mixed_float16").
    """
    build = _Builder(spec, bn_splits, dtype)
    inputs = keras.Input((None, None, 3), name="images")
    stem_kernel, stem_stride = (3, 1) if spec.stem == "cifar" else (7, 2)
    x = build.conv(inputs, spec.widths[0], stem_kernel, stem_stride, "stem.conv")
    x = build.relu(build.bn(x, "stem.bn"))
    if spec.stem == "imagenet":
        x = keras.layers.ZeroPadding2D(1, dtype=dtype, name="stem.pool.pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, dtype=dtype, name="stem.pool")(x)
    in_channels = spec.widths[0]
    for stage, (num_blocks, width) in enumerate(
        zip(spec.blocks_per_stage, spec.widths, strict=True), start=1
    ):
        for block in range(num_blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = build.block(x, f"stage{stage}.block{block}", in_channels, width, stride)
            in_channels = width * spec.expansion
    outputs = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(x)
    encoder = keras.Model(inputs, outputs, name=name)
    encoder.feature_dim = feature_dim(spec)
    return encoder


# --------------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------------
def _torch_linear_initializers(fan_in: int):
    """PyTorch's ``nn.Linear`` default: kernel ``kaiming_uniform_(a=sqrt(5))`` and bias
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    kaiming_uniform with a = sqrt(5) has gain sqrt(2 / (1 + 5)) and bound gain * sqrt(3 / fan_in) =
    1 / sqrt(fan_in): Keras' VarianceScaling(1/3, fan_in, uniform), whose bound is sqrt(3 s / fan_in).
    """
    bound = 1.0 / math.sqrt(fan_in)
    return (keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform"),
            keras.initializers.RandomUniform(-bound, bound))


def build_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
               dtype=None, name: str = "head") -> keras.Sequential:
    """MoCo v2's projection head: ``num_layers`` Linear layers with biases, ReLU between them.

    MoCo v2 (section 3; facebookresearch/moco ``builder.py`` with ``--mlp``) replaces MoCo's fc by
    ``nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), fc)``: ``num_layers=2`` with the hidden
    width equal to the encoder's (2048 for ResNet-50). ``num_layers=1`` is MoCo v1's linear head
    (also the MoCo CIFAR-10 demo's). No BatchNorm, unlike SimCLR's head.

    Initialisation: the official code never re-initialises these layers, so they keep PyTorch's
    ``nn.Linear`` default (:func:`_torch_linear_initializers`), used here rather than Keras'
    Glorot-uniform kernel and zero bias, so that both chapters start from the same distribution.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: list[keras.layers.Layer] = [keras.Input((in_dim,))]
    for index, (fan_in, width) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
        kernel_init, bias_init = _torch_linear_initializers(fan_in)
        layers.append(keras.layers.Dense(width, kernel_initializer=kernel_init,
                                         bias_initializer=bias_init, dtype=dtype,
                                         name=f"linear{index}"))
        if index < num_layers:
            layers.append(keras.layers.ReLU(dtype=dtype))
    return keras.Sequential(layers, name=name)


# --------------------------------------------------------------------------------------------------
# Query and key networks, momentum update, queue
# --------------------------------------------------------------------------------------------------
class MoCo(tf.Module):
    """The query network (encoder + head, trained by the optimizer), the key network (its momentum
    copy) and the queue of negative keys.

    Build it inside ``strategy.scope()``: every variable is then mirrored on the strategy's devices.

    - **Key network.** Starts as a copy of the query network (facebookresearch/moco ``builder.py``:
      ``param_k.data.copy_(param_q.data)``). :meth:`momentum_update` moves each trainable weight as
      ``w_k <- m w_k + (1 - m) w_q`` (eq. 2). It stays ``trainable=True`` for Keras, so that its
      BatchNorm normalises with batch statistics in training as the official key encoder does; it is
      kept out of the optimizer instead (:attr:`query_variables` is what the optimizer gets).
    - **Its BN moving statistics** (``key_bn_stats``): the official update covers
      ``parameters()`` only, so buffers are untouched and the key encoder's running averages come
      from its own forward passes on keys: ``"skip"`` (the default). ``"copy"`` sets them to the
      query encoder's at every update, ``"average"`` moves them like the weights (what EMA-ing all
      of a Keras model's ``weights`` does). They only matter if the key encoder is used in inference
      mode; MoCo evaluates the query encoder.
    - **Queue** (section 3.1): ``queue`` (K, D), float32, not trainable, initialised as the official
      ``randn`` then L2-normalised rows (stored as rows, the transpose of the official (D, K)), and
      ``queue_ptr``, the row the next key goes to. :meth:`enqueue` writes the whole global batch of
      keys first-in-first-out, so K must be a multiple of the keys per step (the official code
      asserts the same).
    """

    def __init__(self, spec: ResNetSpec, *, projection_dim: int = 128, hidden_dim: int = 2048,
                 head_layers: int = 2, queue_size: int = 65536, bn_splits: int = 1,
                 key_bn_stats: str = "skip", dtype=None, seed: int = 0):
        super().__init__(name="moco")
        if key_bn_stats not in KEY_BN_STATS:
            raise ValueError(f"key_bn_stats must be one of {KEY_BN_STATS}, got {key_bn_stats!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.spec, self.key_bn_stats = spec, key_bn_stats
        self.dtype_policy = keras.dtype_policies.get(dtype) if dtype else keras.config.dtype_policy()
        self.query_encoder = build_encoder(spec, bn_splits, dtype, name="query_encoder")
        self.query_head = build_head(feature_dim(spec), hidden_dim, projection_dim, head_layers,
                                     dtype, name="query_head")
        self.key_encoder = build_encoder(spec, bn_splits, dtype, name="key_encoder")
        self.key_head = build_head(feature_dim(spec), hidden_dim, projection_dim, head_layers,
                                   dtype, name="key_head")
        self.copy_query_to_key()
        initial = tf.random.stateless_normal((queue_size, projection_dim), seed=[seed, 0])
        self.queue = tf.Variable(l2_normalize(initial), trainable=False, name="queue")
        self.queue_ptr = tf.Variable(0, dtype=tf.int64, trainable=False, name="queue_ptr")

    def copy_query_to_key(self) -> None:
        """The key network := the query network, every weight and BN statistic. (The official
        ``param_k.data.copy_(param_q.data)`` copies the parameters only; freshly built BN buffers
        are equal anyway. Here the copy also serves ``--init-encoder``, whose statistics are not.)"""
        for key, query in zip(self.key_encoder.weights + self.key_head.weights,
                              self.query_encoder.weights + self.query_head.weights, strict=True):
            key.assign(query)

    @property
    def weights(self) -> list:
        """Every weight of the four networks, BN statistics included, and the queue.
        (``tf.Module.variables`` holds the queue only: Keras 3 layers are not ``tf.Module``s, and
        their variables are not ``tf.Variable``s.)"""
        networks = (self.query_encoder, self.query_head, self.key_encoder, self.key_head)
        return [weight for network in networks for weight in network.weights] + [self.queue]

    @property
    def queue_size(self) -> int:
        return int(self.queue.shape[0])

    @property
    def query_variables(self) -> list:
        """What the optimizer trains: the query encoder's and head's trainable weights."""
        return self.query_encoder.trainable_variables + self.query_head.trainable_variables

    @property
    def key_variables(self) -> list:
        """The key network's trainable weights, in the order of :attr:`query_variables`."""
        return self.key_encoder.trainable_variables + self.key_head.trainable_variables

    def query(self, images: tf.Tensor, training: bool = True) -> tf.Tensor:
        """q = g_q(f_q(x)): the query projections, not normalised."""
        return self.query_head(self.query_encoder(images, training=training), training=training)

    def key(self, images: tf.Tensor, training: bool = True) -> tf.Tensor:
        """k = g_k(f_k(x)), not normalised; no gradient flows into the key network."""
        return tf.stop_gradient(
            self.key_head(self.key_encoder(images, training=training), training=training))

    def momentum_update(self, m: float) -> None:
        """``w_k <- m w_k + (1 - m) w_q`` for every trainable weight (MoCo eq. 2), and the BN moving
        statistics as ``key_bn_stats`` says. Call it in the cross-replica context of the strategy
        the variables were made under (in ``strategy.scope()``, outside ``strategy.run``):
        ``strategy.extended.update`` runs the assignment on every device with that device's own
        copies of both weights, so the mirrors stay identical without copying weights between
        devices.
        """
        strategy = tf.distribute.get_strategy()

        def ema(key, query):
            return key.assign(m * key + (1.0 - m) * query)

        def copy(key, query):
            return key.assign(query)

        updates = [(key, query, ema)
                   for key, query in zip(self.key_variables, self.query_variables, strict=True)]
        if self.key_bn_stats != "skip":
            stats = zip(self.key_encoder.non_trainable_variables,
                        self.query_encoder.non_trainable_variables, strict=True)
            updates += [(key, query, copy if self.key_bn_stats == "copy" else ema)
                        for key, query in stats]
        for key, query, function in updates:
            strategy.extended.update(key.value, function, args=(query.value,))

    def enqueue(self, keys) -> None:
        """Write the step's global batch of keys over the oldest rows of the queue (FIFO).

        ``keys``: (B, D) L2-normalised keys of the whole global batch, in the batch's order; a tensor,
        or in cross-replica context the per-replica value whose copies are all that same batch (what
        the training step's all-gather returns). Call it as :meth:`momentum_update`.
        """
        strategy = tf.distribute.get_strategy()
        local_keys = strategy.experimental_local_results(keys)[0]
        if local_keys.shape[0] is not None:  # known when traced with static shapes
            check_queue_size(self.queue_size, local_keys.shape[0])
        batch = tf.shape(local_keys, out_type=tf.int64)[0]
        rows = (self.queue_ptr + tf.range(batch))[:, None]
        strategy.extended.update(
            self.queue, lambda queue, k: queue.scatter_nd_update(rows, tf.cast(k, queue.dtype)),
            args=(keys,))
        strategy.extended.update(
            self.queue_ptr, lambda ptr: ptr.assign((ptr + batch) % self.queue_size))


def check_queue_size(queue_size: int, keys_per_step: int) -> None:
    """The queue is replaced by whole batches: K must be a multiple of the keys enqueued per step."""
    if queue_size % keys_per_step:
        raise ValueError(
            f"the queue size K={queue_size} is not a multiple of the {keys_per_step} keys enqueued "
            f"per step (the global batch, twice it with the symmetric loss); choose K = "
            f"{max(1, queue_size // keys_per_step) * keys_per_step} or change the batch size"
        )


# --------------------------------------------------------------------------------------------------
# Portable weights (common/weights.py)
# --------------------------------------------------------------------------------------------------
def _portable_variables(encoder: keras.Model, spec: ResNetSpec) -> dict:
    """Portable name -> the encoder's variable (``stage1.block0.bn1.gamma`` is layer
    ``stage1.block0.bn1``'s ``gamma``), after checking the encoder is built from ``spec``: every
    tensor of the spec there, and nothing else (a ResNet-34 holds every tensor of a ResNet-18)."""
    expected = tensor_shapes(spec)
    extra = sorted({f"{layer.name}.{v.name}" for layer in encoder.layers for v in layer.weights}
                   - set(expected))
    if extra:
        raise ValueError(f"the encoder has tensors {spec.name} ({spec.stem} stem) does not, e.g. "
                         f"{extra[:3]}; build it with build_encoder(spec) for the same arch and "
                         "image size")
    variables = {}
    for name, shape in expected.items():
        layer_name, attribute = name.rsplit(".", 1)
        try:
            variable = getattr(encoder.get_layer(layer_name), attribute)
        except (ValueError, AttributeError):
            variable = None
        if variable is None or tuple(variable.shape) != shape:
            raise ValueError(
                f"the encoder has no {name} of shape {shape}, so it is not {spec.name} with the "
                f"{spec.stem} stem; build it with build_encoder(spec) for the same arch and image size"
            )
        variables[name] = variable
    return variables


def encoder_to_portable(encoder: keras.Model, spec: ResNetSpec) -> dict[str, np.ndarray]:
    """The encoder's weights and BN statistics under portable names (float32, HWIO kernels)."""
    return {name: np.asarray(v.numpy(), np.float32)
            for name, v in _portable_variables(encoder, spec).items()}


def encoder_from_portable(encoder: keras.Model, spec: ResNetSpec,
                          tensors: dict[str, np.ndarray]) -> None:
    """Copy portable ``tensors`` into ``encoder`` in place (kernels are HWIO in both)."""
    validate_tensors(tensors, spec, "the portable tensors")
    for name, variable in _portable_variables(encoder, spec).items():
        variable.assign(np.asarray(tensors[name], dtype=variable.dtype))


def export_encoder(path: str | os.PathLike, encoder: keras.Model, spec: ResNetSpec,
                   image_size: int) -> None:
    """Write the encoder to ``path`` in the portable safetensors layout."""
    save_encoder(path, encoder_to_portable(encoder, spec), spec, image_size, framework="tensorflow")


def import_encoder(path: str | os.PathLike, encoder: keras.Model, spec: ResNetSpec) -> dict:
    """Load portable weights from ``path`` (written by any chapter) into ``encoder``; the metadata."""
    tensors, metadata = load_encoder(path, expected_spec=spec)
    encoder_from_portable(encoder, spec, tensors)
    return metadata
