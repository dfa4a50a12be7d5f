"""The building blocks of Next-ViT as Keras 3 layers.

Every layer works on channels-last tensors, whatever
``keras.config.image_data_format()`` says (each convolution and pooling names
its ``data_format``), uses ``keras.ops`` only (so the TensorFlow, JAX and
PyTorch backends all run it) and serialises through ``get_config``.
Sub-layers carry the attribute names of the reference PyTorch modules
(``patch_embed``, ``mhca.group_conv3x3``, ``e_mhsa.q`` ...), which is what
lets :mod:`keras_nextvit.weights` map a checkpoint onto them by name.

The maths of each block lives in its ``call``:

* :class:`ConvBNReLU` -- 3x3 conv (1 pixel of zero padding on every side,
  also at stride 2, as PyTorch's ``padding=1``) -> BatchNorm -> ReLU.
* :class:`PatchEmbed` -- optional 2x2 average pool (ceil mode, padding not
  counted), 1x1 conv -> BatchNorm; identity when nothing changes.
* :class:`MHCA` -- Multi-Head Convolutional Attention: grouped 3x3 conv (one
  group per head) -> BatchNorm -> ReLU -> 1x1 projection.
* :class:`MLP` -- 1x1 conv -> ReLU -> dropout -> 1x1 conv -> dropout.
* :class:`NCB` -- Next Convolution Block:
  ``x = PatchEmbed(x); x = x + MHCA(x); x = x + MLP(BN(x))``.
* :class:`EfficientMHSA` -- multi-head self attention whose keys and values
  come from tokens average-pooled ``sr_ratio**2`` at a time (row-major, 1-D)
  and batch-normalised.
* :class:`NTB` -- Next Transformer Block: E-MHSA on the first 75% of the
  channels, MHCA on a projection of them for the rest, concatenation, then a
  BN + MLP residual.

1x1 convolutions are ``Dense`` layers on the channel axis: on channels-last
tensors they are the same matrix product, and ``Dense`` is what Keras' own
int8 quantization and XNNPACK handle best.

Blocks call their sub-layers through :func:`keras_nextvit.torch_fast.run`:
the layer itself on TensorFlow and JAX, the same function computed directly
in PyTorch on the PyTorch backend (where Keras' per-call overhead and layout
copies doubled the model's time).
"""

import math

import keras
from keras import ops

from . import torch_fast
from .torch_fast import run

BN_EPSILON = 1e-5
# PyTorch's momentum 0.1 updates running = 0.9 * running + 0.1 * batch;
# Keras' momentum is the weight of the old value.
BN_MOMENTUM = 0.9

_PACKAGE = "keras_nextvit"


def _batch_norm(name):
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name
    )


def _pointwise(filters, use_bias, name):
    """A 1x1 convolution on channels-last tensors: a Dense on the last axis."""
    return keras.layers.Dense(filters, use_bias=use_bias, name=name)


def make_divisible(value, divisor, min_value=None):
    """Round ``value`` to a multiple of ``divisor``, never dropping > 10%."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class _Composite(keras.layers.Layer):
    """A layer made of named sub-layers.

    ``TORCH_CHILDREN`` lists the sub-layer attributes in the order the
    reference module registers them; the weight loader and the synthetic
    checkpoint generator walk them in that order.
    """

    TORCH_CHILDREN = ()

    def __init__(self, deploy=False, **kwargs):
        super().__init__(**kwargs)
        # deploy=True: the BatchNorm-free form that keras_nextvit.reparam
        # fills with merged weights (convs and linears gain biases).
        self.deploy = deploy

    def _norm(self, name):
        return None if self.deploy else _batch_norm(name)

    def __call__(self, *args, **kwargs):
        # Eager PyTorch inference runs the block's maths straight away.
        out = torch_fast.call_directly(self, args, kwargs)
        return super().__call__(*args, **kwargs) if out is NotImplemented else out

    def get_config(self):
        config = super().get_config()
        if self.deploy:
            config["deploy"] = True
        return config

    def torch_children(self):
        for attr in self.TORCH_CHILDREN:
            child = getattr(self, attr, None)
            if child is not None:
                yield attr, child


@torch_fast.register_dropout
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample.

    Surviving samples are scaled by ``1 / (1 - rate)`` so the expectation is
    unchanged. Identity at inference.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = (
            keras.random.SeedGenerator(seed) if self.rate > 0 else None
        )
        self.built = True  # no weights to create

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        mask = ops.floor(keep + noise)
        return x * mask / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBNReLU(_Composite):
    """Conv (PyTorch-style symmetric padding) -> BatchNorm -> ReLU."""

    TORCH_CHILDREN = ("conv", "norm")

    def __init__(self, filters, kernel_size=3, strides=1, groups=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.groups = groups
        self.pad = (kernel_size - 1) // 2
        # At stride 1 "same" padding is symmetric and equals PyTorch's; at
        # stride 2 TensorFlow would pad only bottom/right, so pad explicitly.
        self.explicit_pad = strides != 1 and self.pad > 0
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="valid" if self.explicit_pad or self.pad == 0 else "same",
            groups=groups,
            use_bias=self.deploy,
            data_format="channels_last",
            name="conv",
        )
        self.norm = self._norm("norm")

    def build(self, input_shape):
        self.conv.build(self._padded_shape(input_shape))
        if self.norm is not None:
            self.norm.build(self.conv.compute_output_shape(self._padded_shape(input_shape)))

    def _padded_shape(self, shape):
        if not self.explicit_pad:
            return shape
        grow = lambda d: None if d is None else d + 2 * self.pad  # noqa: E731
        return (shape[0], grow(shape[1]), grow(shape[2]), shape[3])

    def call(self, x, training=None):
        out = torch_fast.fused_conv(self.conv, x, self.pad, self.norm, relu=True, training=training)
        if out is not None:
            return out
        out = torch_fast.conv2d(self.conv, x, padding=self.pad)
        if out is None:
            if self.explicit_pad:
                p = self.pad
                x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
            out = self.conv(x)
        return ops.relu(out if self.norm is None else run(self.norm, out, training))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(self._padded_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            groups=self.groups,
        )
        return config


def _window_mean_as_depthwise(x, window):
    """The mean over each non-overlapping ``window`` (one size per spatial
    axis of ``x``; a partial last window is dropped), as a depthwise
    convolution whose weights are all ``1 / window area``: the numbers of a
    valid average pool.

    The int8 TFLite exports trace this form: XNNPACK has no int8 average
    pool, so TFLite runs one on its builtin kernel (0.68 ms of Next-ViT-S's
    int8 time here), while it does run int8 depthwise convolutions, and the
    constant weights quantize exactly (one scale per channel, each weight
    the largest int8 value).
    """
    kernel = ops.full(tuple(window) + (x.shape[-1], 1), 1.0 / math.prod(window), dtype=x.dtype)
    return ops.depthwise_conv(
        x, kernel, strides=tuple(window), padding="valid", data_format="channels_last"
    )


def _even(size):
    return size is not None and size % 2 == 0


def _pooled_size(size):
    """2x2/2 average pool in ceil mode: odd sizes round up."""
    return None if size is None else (size + 1) // 2


@torch_fast.register_block
@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchEmbed(_Composite):
    """Down-sampling and channel change at the start of a block.

    ``strides=2``: 2x2 average pool with ceil mode (the last, partial window
    of an odd size averages only its real pixels), then 1x1 conv + BN.
    ``strides=1``: 1x1 conv + BN when the channel count changes, else
    identity.
    """

    TORCH_CHILDREN = ("conv", "norm")

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"PatchEmbed strides must be 1 or 2, got {strides}.")
        self.filters = filters
        self.strides = strides
        # The int8 exports' form of the pool (see _window_mean_as_depthwise);
        # set while tracing them, used where no window is partial.
        self.pool_as_depthwise = False
        self.conv = None
        self.norm = None

    def build(self, input_shape):
        if self.strides == 2 or input_shape[-1] != self.filters:
            self.conv = _pointwise(self.filters, use_bias=self.deploy, name="conv")
            self.norm = self._norm("norm")
            shape = self._pooled_shape(input_shape)
            self.conv.build(shape)
            if self.norm is not None:
                self.norm.build(shape[:-1] + (self.filters,))

    def _pooled_shape(self, shape):
        if self.strides == 1:
            return tuple(shape)
        return (shape[0], _pooled_size(shape[1]), _pooled_size(shape[2]), shape[3])

    def call(self, x, training=None):
        if self.strides == 2:
            # TensorFlow-style "same" average pooling pads odd sizes at the
            # end and excludes the padding from the mean: exactly PyTorch's
            # AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False).
            pooled = torch_fast.average_pool_2x2(x)
            if pooled is None and self.pool_as_depthwise and _even(x.shape[1]) and _even(x.shape[2]):
                pooled = _window_mean_as_depthwise(x, (2, 2))
            if pooled is None:
                pooled = ops.average_pool(
                    x, pool_size=2, strides=2, padding="same", data_format="channels_last"
                )
            x = pooled
        if self.conv is None:
            return x
        out = torch_fast.fused_dense(self.conv, x, norm=self.norm, training=training)
        if out is not None:
            return out
        x = run(self.conv, x)
        return x if self.norm is None else run(self.norm, x, training)

    def compute_output_shape(self, input_shape):
        shape = self._pooled_shape(input_shape)
        return shape[:-1] + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides)
        return config


@torch_fast.register_block
@keras.saving.register_keras_serializable(package=_PACKAGE)
class MHCA(_Composite):
    """Multi-Head Convolutional Attention.

    A grouped 3x3 convolution with one group per head of ``head_dim``
    channels (the "attention" over each pixel's neighbourhood), BatchNorm,
    ReLU, and a 1x1 projection that mixes the heads.
    """

    TORCH_CHILDREN = ("group_conv3x3", "norm", "projection")

    def __init__(self, filters, head_dim=32, split_heads=True, **kwargs):
        super().__init__(**kwargs)
        if filters % head_dim:
            raise ValueError(
                f"MHCA filters ({filters}) must be a multiple of head_dim ({head_dim})."
            )
        self.filters = filters
        self.head_dim = head_dim
        # How the grouped conv runs (same weights, same numbers): one plain
        # conv per head (fast under XLA, and what tf2onnx can convert), or
        # one grouped conv (what TFLite/XNNPACK run fastest).
        self.split_heads = split_heads
        self.group_conv3x3 = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            groups=filters // head_dim,
            use_bias=self.deploy,
            data_format="channels_last",
            name="group_conv3x3",
        )
        self.norm = self._norm("norm")
        self.projection = _pointwise(filters, use_bias=False, name="projection")

    def build(self, input_shape):
        self.group_conv3x3.build(input_shape)
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        if self.norm is not None:
            self.norm.build(out_shape)
        self.projection.build(out_shape)

    def _grouped_conv(self, x):
        """The grouped 3x3 conv: one grouped convolution on PyTorch,
        elsewhere by default computed head by head.

        Same numbers as ``self.group_conv3x3(x)``, but one ordinary 3x3
        conv per head: XLA on CPU (TensorFlow and JAX) runs the grouped
        convolution 1.3-3x slower than this (Next-ViT-S under JAX's jit: 61
        vs 80 ms at batch 1, 448 vs 954 ms at batch 8), and tf2onnx cannot
        convert Keras' grouped conv. PyTorch's grouped convolution is the
        fast one there (its per-head convolutions hit a slow kernel).
        """
        out = torch_fast.conv2d(self.group_conv3x3, x, padding=1)  # one grouped conv
        if out is not None:
            return out
        if not self.split_heads:
            return self.group_conv3x3(x)
        kernel = self.group_conv3x3.kernel
        heads = ops.split(x, self.filters // self.head_dim, axis=-1)
        outputs = [
            ops.conv(
                head, kernel[..., i * self.head_dim : (i + 1) * self.head_dim], padding="same",
                data_format="channels_last",
            )
            for i, head in enumerate(heads)
        ]
        x = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=-1)
        return x if self.group_conv3x3.bias is None else x + self.group_conv3x3.bias

    def call(self, x, training=None):
        out = torch_fast.fused_conv(self.group_conv3x3, x, 1, self.norm, relu=True, training=training)
        if out is None:
            out = self._grouped_conv(x)
            if self.norm is not None:
                out = run(self.norm, out, training)
            out = ops.relu(out)
        return run(self.projection, out)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, head_dim=self.head_dim)
        if not self.split_heads:
            config["split_heads"] = False
        return config


@torch_fast.register_block
@keras.saving.register_keras_serializable(package=_PACKAGE)
class MLP(_Composite):
    """Pointwise feed-forward: fc1 -> ReLU -> dropout -> fc2 -> dropout."""

    TORCH_CHILDREN = ("fc1", "fc2")

    def __init__(self, hidden_units, output_units, dropout=0.0, hidden_chunks=1, **kwargs):
        super().__init__(**kwargs)
        if hidden_chunks < 1 or hidden_units % hidden_chunks:
            raise ValueError(
                f"MLP hidden_chunks ({hidden_chunks}) must be a positive divisor of "
                f"hidden_units ({hidden_units})."
            )
        self.hidden_units = hidden_units
        self.output_units = output_units
        self.dropout = dropout
        # How the two projections run (same weights, same function): whole,
        # or as ``hidden_chunks`` slices of the hidden units whose outputs
        # are summed. The TFLite export uses slices whose weights fit a
        # core's L2 cache, where XNNPACK's float32 GEMM is fastest.
        self.hidden_chunks = hidden_chunks
        self.fc1 = _pointwise(hidden_units, use_bias=True, name="fc1")
        self.fc2 = _pointwise(output_units, use_bias=True, name="fc2")
        self.drop = keras.layers.Dropout(dropout, name="drop")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_units,))

    def call(self, x, training=None):
        if self.hidden_chunks > 1 and not training and self._float_weights():
            return self._chunked(x)
        x = run(self.drop, ops.relu(run(self.fc1, x)), training)
        return run(self.drop, run(self.fc2, x), training)

    def _float_weights(self):
        # Keras-quantized Dense layers keep their kernels in another form.
        return all(getattr(fc, "quantization_mode", None) is None for fc in (self.fc1, self.fc2))

    def _chunked(self, x):
        """``fc2(relu(fc1(x)))`` as the sum over slices of the hidden units:
        ``sum_j relu(x W1[:, j] + b1[j]) W2[j, :] + b2`` (inference only)."""
        width = self.hidden_units // self.hidden_chunks
        out = None
        for j in range(self.hidden_chunks):
            part = slice(j * width, (j + 1) * width)
            hidden = ops.relu(ops.matmul(x, self.fc1.kernel[:, part]) + self.fc1.bias[part])
            y = ops.matmul(hidden, self.fc2.kernel[part, :])
            out = y if out is None else out + y
        return out + self.fc2.bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=self.hidden_units,
            output_units=self.output_units,
            dropout=self.dropout,
        )
        if self.hidden_chunks != 1:
            config["hidden_chunks"] = self.hidden_chunks
        return config


def _normed_mlp(norm, mlp, x, training):
    """``mlp(norm(x))`` (``norm`` absent in the deploy form): NCB's and NTB's
    pre-norm feed-forward; on PyTorch in inference one fused pass."""
    out = torch_fast.fused_mlp(mlp, x, pre_norm=norm, training=training)
    if out is None:
        out = x if norm is None else run(norm, x, training)
        out = run(mlp, out, training)
    return out


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NCB(_Composite):
    """Next Convolution Block.

    ``x = PatchEmbed(x)``; ``x = x + DropPath(MHCA(x))``;
    ``x = x + DropPath(MLP(BN(x)))``.
    """

    TORCH_CHILDREN = ("patch_embed", "mhca", "norm", "mlp")

    def __init__(
        self,
        filters,
        strides=1,
        head_dim=32,
        mlp_ratio=3.0,
        drop_path=0.0,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.head_dim = head_dim
        self.mlp_ratio = mlp_ratio
        self.drop_path = drop_path
        self.dropout = dropout
        self.patch_embed = PatchEmbed(filters, strides, deploy=self.deploy, name="patch_embed")
        self.mhca = MHCA(filters, head_dim, deploy=self.deploy, name="mhca")
        self.attn_drop_path = DropPath(drop_path, name="attn_drop_path")
        self.norm = self._norm("norm")
        self.mlp = MLP(int(filters * mlp_ratio), filters, dropout, name="mlp")
        self.mlp_drop_path = DropPath(drop_path, name="mlp_drop_path")

    def build(self, input_shape):
        self.patch_embed.build(input_shape)
        shape = self.patch_embed.compute_output_shape(input_shape)
        self.mhca.build(shape)
        if self.norm is not None:
            self.norm.build(shape)
        self.mlp.build(shape)

    def call(self, x, training=None):
        x = run(self.patch_embed, x, training)
        x = x + run(self.attn_drop_path, run(self.mhca, x, training), training)
        out = _normed_mlp(self.norm, self.mlp, x, training)
        return x + run(self.mlp_drop_path, out, training)

    def compute_output_shape(self, input_shape):
        return self.patch_embed.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            strides=self.strides,
            head_dim=self.head_dim,
            mlp_ratio=self.mlp_ratio,
            drop_path=self.drop_path,
            dropout=self.dropout,
        )
        return config


def attention_weights(scores):
    """``softmax(scores)`` over the keys (the last axis). With a single key
    (at a 32x32 input every E-MHSA's tokens pool to one window) the softmax
    is 1 exactly and its gradient 0: then ``scores * 0 + 1``, the same
    values and gradients (q and k stay connected: a gradient tape gives
    their weights zeros, not None), without the softmax over a size-1 axis
    that Keras warns about on every call."""
    if scores.shape[-1] == 1:
        return scores * 0.0 + 1.0
    return ops.softmax(scores, axis=-1)


@torch_fast.register_block
@keras.saving.register_keras_serializable(package=_PACKAGE)
class EfficientMHSA(_Composite):
    """Efficient Multi-Head Self Attention (E-MHSA) over a token sequence.

    Input ``(batch, tokens, dim)`` with tokens in row-major image order.
    Queries come from every token. With ``sr_ratio > 1`` keys and values come
    from a shorter sequence: each is the mean of ``sr_ratio**2`` consecutive
    tokens (a 1-D pool, so a strip of the feature map, not a square; tokens
    that do not fill a last window are dropped), batch-normalised. The
    attention is ``softmax(q k^T * head_dim**-0.5) v`` per head, followed by
    an output projection.

    ``call(..., return_attention_scores=True)`` also returns the attention
    probabilities, shape ``(batch, heads, tokens, keys)``.
    """

    TORCH_CHILDREN = ("q", "k", "v", "proj", "norm")

    def __init__(
        self,
        dim,
        head_dim=32,
        sr_ratio=1,
        qkv_bias=True,
        attention_dropout=0.0,
        projection_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dim % head_dim:
            raise ValueError(
                f"EfficientMHSA dim ({dim}) must be a multiple of head_dim ({head_dim})."
            )
        self.dim = dim
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.scale = head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.pool_size = sr_ratio**2
        # The int8 exports' form of the pool (see _window_mean_as_depthwise)
        self.pool_as_depthwise = False
        self.qkv_bias = qkv_bias
        self.attention_dropout = attention_dropout
        self.projection_dropout = projection_dropout
        self.q = keras.layers.Dense(dim, use_bias=qkv_bias, name="q")
        self.k = keras.layers.Dense(dim, use_bias=qkv_bias, name="k")
        self.v = keras.layers.Dense(dim, use_bias=qkv_bias, name="v")
        self.proj = keras.layers.Dense(dim, name="proj")
        self.norm = self._norm("norm") if sr_ratio > 1 else None
        self.attn_drop = keras.layers.Dropout(attention_dropout, name="attn_drop")
        self.proj_drop = keras.layers.Dropout(projection_dropout, name="proj_drop")

    def build(self, input_shape):
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build(input_shape)
        if self.norm is not None:
            self.norm.build(input_shape)

    def num_keys(self, num_tokens):
        """How many keys a sequence of ``num_tokens`` queries attends to."""
        return num_tokens // self.pool_size

    def _split_heads(self, x):
        # (B, N, C) -> (B, heads, N, head_dim)
        x = ops.reshape(x, (ops.shape(x)[0], -1, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, x, training=None, return_attention_scores=False):
        num_tokens = x.shape[1]
        if num_tokens is not None and num_tokens < self.pool_size:
            raise ValueError(
                f"{self.name}: {num_tokens} tokens is fewer than one spatial-"
                f"reduction window of {self.pool_size} (sr_ratio={self.sr_ratio}); "
                "the input image is too small for this model."
            )
        q = self._split_heads(run(self.q, x))
        if self.pool_size > 1:
            if self.pool_as_depthwise:  # valid windows, a partial last one dropped: as the pool does
                x = _window_mean_as_depthwise(x, (self.pool_size,))
            else:
                x = ops.average_pool(
                    x, pool_size=self.pool_size, strides=self.pool_size, padding="valid",
                    data_format="channels_last",
                )
            if self.norm is not None:  # absent in the deploy form: merged into k, v
                x = run(self.norm, x, training)
        k = self._split_heads(run(self.k, x))
        v = self._split_heads(run(self.v, x))
        scores = ops.matmul(q * self.scale, ops.transpose(k, (0, 1, 3, 2)))
        attention = attention_weights(scores)
        out = ops.matmul(run(self.attn_drop, attention, training), v)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (ops.shape(out)[0], -1, self.dim))
        out = run(self.proj_drop, run(self.proj, out), training)
        if return_attention_scores:
            return out, attention
        return out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim,
            head_dim=self.head_dim,
            sr_ratio=self.sr_ratio,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.projection_dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NTB(_Composite):
    """Next Transformer Block.

    With ``C1 = mix_block_ratio * filters`` (rounded to 32) and
    ``C2 = filters - C1``::

        x = PatchEmbed(x)                          # C1 channels
        x = x + DropPath(E-MHSA(BN(x)))            # global mixing
        y = Projection(x)                          # C2 channels
        y = y + DropPath(MHCA(y))                  # local mixing
        x = concat(x, y)                           # C1 + C2 channels
        x = x + DropPath(MLP(BN(x)))
    """

    TORCH_CHILDREN = (
        "patch_embed",
        "norm1",
        "e_mhsa",
        "projection",
        "mhca",
        "norm2",
        "mlp",
    )

    def __init__(
        self,
        filters,
        strides=1,
        sr_ratio=1,
        head_dim=32,
        mix_block_ratio=0.75,
        mlp_ratio=2.0,
        drop_path=0.0,
        dropout=0.0,
        attention_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.sr_ratio = sr_ratio
        self.head_dim = head_dim
        self.mix_block_ratio = mix_block_ratio
        self.mlp_ratio = mlp_ratio
        self.drop_path = drop_path
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.mhsa_filters = make_divisible(int(filters * mix_block_ratio), 32)
        self.mhca_filters = filters - self.mhsa_filters

        self.patch_embed = PatchEmbed(
            self.mhsa_filters, strides, deploy=self.deploy, name="patch_embed"
        )
        self.norm1 = self._norm("norm1")
        self.e_mhsa = EfficientMHSA(
            self.mhsa_filters,
            head_dim=head_dim,
            sr_ratio=sr_ratio,
            attention_dropout=attention_dropout,
            projection_dropout=dropout,
            deploy=self.deploy,
            name="e_mhsa",
        )
        self.mhsa_drop_path = DropPath(drop_path * mix_block_ratio, name="mhsa_drop_path")
        self.projection = PatchEmbed(self.mhca_filters, 1, deploy=self.deploy, name="projection")
        self.mhca = MHCA(self.mhca_filters, head_dim, deploy=self.deploy, name="mhca")
        self.mhca_drop_path = DropPath(
            drop_path * (1 - mix_block_ratio), name="mhca_drop_path"
        )
        self.norm2 = self._norm("norm2")
        self.mlp = MLP(int(filters * mlp_ratio), filters, dropout, name="mlp")
        self.mlp_drop_path = DropPath(drop_path, name="mlp_drop_path")

    def build(self, input_shape):
        self.patch_embed.build(input_shape)
        shape = tuple(self.patch_embed.compute_output_shape(input_shape))
        if self.norm1 is not None:
            self.norm1.build(shape)
        self.e_mhsa.build((shape[0], None, self.mhsa_filters))
        self.projection.build(shape)
        mhca_shape = shape[:-1] + (self.mhca_filters,)
        self.mhca.build(mhca_shape)
        full_shape = shape[:-1] + (self.filters,)
        if self.norm2 is not None:
            self.norm2.build(full_shape)
        self.mlp.build(full_shape)

    def _attention_branch(self, x, training, return_attention_scores):
        """E-MHSA over the flattened (row-major) feature map, back to 2-D."""
        shape = ops.shape(x)
        if self.norm1 is not None:
            x = run(self.norm1, x, training)
        tokens = ops.reshape(x, (shape[0], -1, self.mhsa_filters))
        result = run(
            self.e_mhsa, tokens, training, return_attention_scores=return_attention_scores
        )
        out, attention = result if return_attention_scores else (result, None)
        return ops.reshape(out, shape), attention

    def call(self, x, training=None, return_attention_scores=False):
        x = run(self.patch_embed, x, training)
        out, attention = self._attention_branch(x, training, return_attention_scores)
        x = x + run(self.mhsa_drop_path, out, training)
        out = run(self.projection, x, training)
        out = out + run(self.mhca_drop_path, run(self.mhca, out, training), training)
        x = ops.concatenate([x, out], axis=-1)
        out = _normed_mlp(self.norm2, self.mlp, x, training)
        x = x + run(self.mlp_drop_path, out, training)
        if return_attention_scores:
            return x, attention
        return x

    def compute_output_shape(self, input_shape):
        shape = tuple(self.patch_embed.compute_output_shape(input_shape))
        return shape[:-1] + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            strides=self.strides,
            sr_ratio=self.sr_ratio,
            head_dim=self.head_dim,
            mix_block_ratio=self.mix_block_ratio,
            mlp_ratio=self.mlp_ratio,
            drop_path=self.drop_path,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelAffine(keras.layers.Layer):
    """``x * scale + offset`` per channel: an inference BatchNorm with its
    statistics folded in (the deploy form of a BatchNorm that no linear
    layer follows)."""

    def build(self, input_shape):
        channels = input_shape[-1]
        self.scale = self.add_weight(shape=(channels,), initializer="ones", name="scale")
        self.offset = self.add_weight(shape=(channels,), initializer="zeros", name="offset")

    def call(self, x, mask=None):
        # ``mask``: accepted (and unused) so that it can stand in for a
        # BatchNormalization when a graph is cloned with the BN's call
        # arguments.
        return x * self.scale + self.offset

    def compute_output_shape(self, input_shape):
        return input_shape


def called_dtype(layer, x):
    """The dtype ``layer(x)`` gives ``x``'s floats (Keras casts them to the
    layer's input dtype when it autocasts), from ``x.dtype`` alone."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if layer.autocast and keras.backend.is_float_dtype(dtype):
        dtype = layer.input_dtype
    return dtype


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InputCheck(keras.layers.Layer):
    """Identity that rejects images the model cannot process, with a clear
    message instead of a backend error deep inside the network."""

    def __init__(self, channels=3, min_size=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.min_size = min_size

    def call(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4:
            raise ValueError(
                f"{self.name}: expected images of shape (batch, height, width, "
                f"{self.channels}), got a tensor of shape {shape}."
            )
        if shape[-1] is not None and shape[-1] != self.channels:
            raise ValueError(
                f"{self.name}: expected {self.channels} channels (channels-last), got "
                f"input of shape {shape}."
            )
        for axis, size in (("height", shape[1]), ("width", shape[2])):
            if size is not None and size < self.min_size:
                raise ValueError(
                    f"{self.name}: image {axis} {size} is below the minimum of "
                    f"{self.min_size} pixels (input shape {shape})."
                )
        return x

    def compute_output_spec(self, x):
        # What ``__call__`` makes of ``x`` (floats cast to the compute dtype)
        # from its shape and dtype alone, for any array: a Functional's
        # ``compute_output_spec`` hands its first layer the caller's array
        # itself (a NumPy array has no shape for ``compute_output_shape``).
        return keras.KerasTensor(tuple(x.shape), dtype=called_dtype(self, x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, min_size=self.min_size)
        return config


BLOCKS = {"NCB": NCB, "NTB": NTB}

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "ChannelAffine",
    "ConvBNReLU",
    "DropPath",
    "EfficientMHSA",
    "InputCheck",
    "MHCA",
    "MLP",
    "NCB",
    "NTB",
    "PatchEmbed",
    "make_divisible",
]
