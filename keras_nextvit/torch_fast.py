"""Next-ViT's inner layers computed directly in PyTorch on Keras' PyTorch backend.

On the PyTorch backend a Keras layer call costs 50-100 us of Python before
any arithmetic, Keras' channels-last ``Conv2D`` copies its input twice (to
channels-first, then back to channels-last memory), its per-head
convolutions fall to PyTorch's slow ``_slow_conv2d_forward`` and its
``BatchNormalization`` makes three passes over the tensor. Next-ViT-S makes
about 400 such calls per image, which is why the Keras model ran at half the
reference's speed there.

The blocks of :mod:`keras_nextvit.layers` therefore call their sub-layers
through :func:`run` (and their convolutions through :func:`conv2d`). On the
PyTorch backend these compute the same function from the sub-layer's own
variables with one PyTorch call, on channels-last tensors viewed as
channels-first (a view, no copy: PyTorch's ``channels_last`` memory format);
everywhere else -- the other backends, quantized or mixed-precision layers,
renormalising or synchronised BatchNorms -- they call the layer as Keras
does. A ``Dense`` on feature maps or tokens runs as a 1x1 convolution
(oneDNN: twice the speed of the matrix product on CPU, forward and backward),
and a training BatchNorm as PyTorch's fused batch norm, updating the moving
statistics as Keras does.

In inference (no autograd, as ``predict`` runs) a BatchNorm beside a
convolution or Dense is folded into it and the ReLU after it fused, as one
oneDNN convolution with its weights prepacked (:func:`fused_conv`,
:func:`fused_dense`, :func:`fused_mlp`); what is made from the variables is
kept and remade whenever a variable changes. There the blocks also skip
Keras' ``__call__`` machinery (:func:`call_directly`).

On JAX one form applies: a Dense on feature maps or tokens runs as a
matrix product of the flattened rows (:func:`_dense_as_matrix`), whose
gradient XLA computes 2.5-3x faster than the 4-D product's.

``with torch_fast.disabled():`` runs the plain Keras form, which is what
the tests compare against.
"""

import contextlib
import weakref
from functools import partial

import keras
from keras.src.backend.common.global_state import get_global_attribute
from keras.src.backend.common.stateless_scope import in_stateless_scope

_STATE = {"enabled": True}


@contextlib.contextmanager
def disabled():
    """Run every layer through Keras inside the block (for comparisons)."""
    previous = _STATE["enabled"]
    _STATE["enabled"] = False
    try:
        yield
    finally:
        _STATE["enabled"] = previous


def active():
    """Whether the direct PyTorch forms are in use."""
    return _STATE["enabled"] and keras.backend.backend() == "torch"


def _unmodified(layer):
    """Neither Keras-quantized nor carrying LoRA weights."""
    return getattr(layer, "quantization_mode", None) is None and not getattr(layer, "lora_enabled", False)


def _plain_float(layer, x):
    """A float32 layer without Keras quantization or LoRA, on a float32 tensor."""
    return (
        getattr(x, "dtype", None) == _torch().float32
        and layer.built
        and layer.compute_dtype == "float32"
        and layer.variable_dtype == "float32"
        and _unmodified(layer)
    )


def _plain_norm(norm, x):
    """A float32 BatchNorm over the last (channel) axis of float32 ``x``."""
    return norm.axis in (-1, len(x.shape) - 1) and _plain_float(norm, x)


def _plain_inference(x):
    """Eager inference on real tensors: no autograd, no stateless scope
    (``stateless_call``), no symbolic (meta-device) tracing. Only then may a
    layer's variables be read raw and what is made from them be kept."""
    return not _torch().is_grad_enabled() and not in_stateless_scope() and x.device.type != "meta"


def _made_from(layer, variables, make, extra=()):
    """``make(*tensors)`` of ``variables``' raw tensors, kept per layer and
    remade when any of them changes (``assign`` and optimizer steps update
    in place, which bumps a tensor's version) or ``extra`` does."""
    tensors = [None if v is None else v._value for v in variables]
    key = tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors) + tuple(extra)
    cached = _MADE.get(layer)
    if cached is None or cached[0] != key:
        cached = (key, make(*tensors))
        _MADE[layer] = cached
    return cached[1]


# layer -> (its variables' (storage, version), what _made_from made of them)
_MADE = weakref.WeakKeyDictionary()


def _torch():
    import torch

    return torch


def _value(variable):
    return None if variable is None else variable.value


def _dense(layer, x, training):
    if layer.activation is not keras.activations.linear or not _plain_float(layer, x):
        return NotImplemented
    torch = _torch()
    functional = torch.nn.functional
    bias = _value(layer.bias)
    if x.ndim not in (3, 4):
        return functional.linear(x, layer.kernel.value.t(), bias)
    packed = fused_dense(layer, x, training=training)
    if packed is not None:
        return packed
    # Feature maps and token sequences: a 1x1 convolution on the
    # channels-last view (oneDNN) runs twice as fast on CPU as the matrix
    # product F.linear makes of it, e.g. 0.40 vs 0.88 ms for stage 1's
    # 56x56x96 -> 288 (tools/profile_stages.py --backends), and its forward
    # and backward together 1.4-1.9x as fast at batch 8.
    if _plain_inference(x):  # the weight in PyTorch's layout, kept
        weight = _made_from(layer, [layer.kernel], lambda k: k.detach().t().contiguous()[:, :, None, None])
    else:  # through autograd
        weight = layer.kernel.value.t()[:, :, None, None]
    maps = x if x.ndim == 4 else x.unsqueeze(2)  # (B, N, C) -> (B, N, 1, C)
    out = functional.conv2d(maps.permute(0, 3, 1, 2), weight, bias)
    out = out.permute(0, 2, 3, 1)
    return out if x.ndim == 4 else out.squeeze(2)


def _batch_norm(layer, x, training):
    if not _plain_norm(layer, x):
        return NotImplemented
    if training and layer.trainable:
        return _batch_norm_training(layer, x)
    torch = _torch()
    variables = [layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta]
    if _plain_inference(x):  # the statistics and affine only change when trained
        scale, shift = _made_from(layer, variables, partial(_scale_shift, layer))
    else:  # through autograd (a frozen BatchNorm while training)
        scale, shift = _scale_shift(layer, *(_value(v) for v in variables))
    return torch.addcmul(shift, x, scale)  # one pass: shift + x * scale


def _batch_norm_training(layer, x):
    """Batch statistics with PyTorch's fused batch-norm kernels (forward and
    backward: a third of the time of Keras' form, made of a dozen
    elementwise operations), and the moving statistics updated as Keras
    does (biased variance, Keras' momentum)."""
    if getattr(layer, "renorm", False) or getattr(layer, "synchronized", False):
        return NotImplemented
    if in_stateless_scope() or x.device.type == "meta" or x.ndim < 2:
        return NotImplemented
    torch = _torch()
    channels_first = x.movedim(-1, 1)  # a view: (B, C, ...)
    out, mean, inverse_std = torch.native_batch_norm(
        channels_first, _value(layer.gamma), _value(layer.beta), None, None, True, 0.0, layer.epsilon
    )
    with torch.no_grad():
        variance = inverse_std.reciprocal().square() - layer.epsilon
        momentum = layer.momentum
        for variable, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
            variable.assign(variable.value * momentum + batch * (1.0 - momentum))
    return out.movedim(1, -1)


def _dropout(layer, x, training):
    if training and layer.rate > 0:
        return NotImplemented
    return x


def _composite(layer, x, training, **kwargs):
    # The block's own call (its maths), without Keras' per-call machinery.
    if not layer.built:
        return NotImplemented
    return layer.call(x, training=training, **kwargs)


# Layer type -> its direct form; keras_nextvit.layers adds its own blocks
# (see register_block, register_dropout).
_FORMS = {
    keras.layers.Dense: _dense,
    keras.layers.BatchNormalization: _batch_norm,
    keras.layers.Dropout: _dropout,
}


def _dense_as_matrix(layer, x):
    """JAX: a Dense on ``(B, H, W, C)`` maps or ``(B, N, C)`` tokens as one
    matrix product of the flattened ``(B * H * W, C)`` rows. Same forward
    speed under XLA on CPU, but its gradient is 2.5-3x faster: XLA computes
    the kernel's gradient of the 4-D product with a slow transposing kernel
    (stage 2's 28x28x192 -> 576 at batch 8: 35 vs 13 ms forward and
    backward)."""
    if x.ndim not in (3, 4) or layer.activation is not keras.activations.linear:
        return NotImplemented
    if not _unmodified(layer):
        return NotImplemented
    if any(d is None for d in x.shape[1:]) or layer.compute_dtype != layer.variable_dtype:
        return NotImplemented
    from keras import ops

    rows = ops.reshape(x, (-1, x.shape[-1]))
    out = ops.matmul(rows, ops.cast(layer.kernel, rows.dtype))
    if layer.bias is not None:
        out = out + ops.cast(layer.bias, out.dtype)
    return ops.reshape(out, (-1,) + tuple(x.shape[1:-1]) + (layer.units,))


def register_block(cls):
    """Class decorator: inside another block, ``cls`` runs its ``call``
    directly (its maths), without Keras' per-call machinery."""
    _FORMS[cls] = _composite
    return cls


def register_dropout(cls):
    """Class decorator: ``cls`` is the identity unless training with ``rate > 0``."""
    _FORMS[cls] = _dropout
    return cls


def run(layer, x, training=None, **kwargs):
    """``layer(x, training=training, **kwargs)``, directly in PyTorch where it
    can (and a Dense on feature maps as a matrix product on JAX)."""
    if active():
        form = _FORMS.get(type(layer))
        if form is not None:
            out = form(layer, x, training, **kwargs)
            if out is not NotImplemented:
                return out
    elif _STATE["enabled"] and type(layer) is keras.layers.Dense and keras.backend.backend() == "jax":
        out = _dense_as_matrix(layer, x)
        if out is not NotImplemented:
            return out
    if isinstance(layer, keras.layers.Dense):
        return layer(x, **kwargs)
    return layer(x, training=training, **kwargs)


def conv2d(layer, x, padding):
    """A ``Conv2D`` on channels-last ``x`` with ``padding`` pixels of zeros on
    every side (PyTorch's ``padding=``), or ``None`` where the caller must
    use Keras' form (other backends, quantized or mixed-precision layers)."""
    if not active() or layer.dilation_rate != (1, 1) or not _plain_float(layer, x):
        return None
    if layer.data_format != "channels_last" or layer.activation is not keras.activations.linear:
        return None
    functional = _torch().nn.functional
    kernel = layer.kernel.value.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    out = functional.conv2d(
        x.permute(0, 3, 1, 2), kernel, _value(layer.bias), layer.strides, padding, 1, layer.groups
    )
    return out.permute(0, 2, 3, 1)


def average_pool_2x2(x):
    """2x2/2 average pooling in ceil mode, padding not counted (PyTorch's
    ``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``), or
    ``None`` off the PyTorch backend."""
    if not active():
        return None
    functional = _torch().nn.functional
    out = functional.avg_pool2d(
        x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True, count_include_pad=False
    )
    return out.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------
# Inference: BatchNorm folded into its convolution, as one prepacked oneDNN
# convolution with the ReLU fused in
# ---------------------------------------------------------------------------
#
# What torch.compile's CPU backend makes of a Conv -> BN -> ReLU, done
# eagerly: the BatchNorm's scale and shift are folded into the weights and
# bias of the convolution or Dense beside it (before or after it), the weight
# is reordered once into oneDNN's blocked layout for the input's shape
# (``torch.ops.mkldnn._reorder_convolution_weight``) and kept, and
# ``torch.ops.mkldnn._convolution_pointwise`` runs the convolution with the
# ReLU as a post-op. Without the per-call weight reorder a 1x1 projection on
# stage 4's 7x7 maps runs in 0.39 instead of 0.68 ms (768 -> 2304), 0.47
# instead of 1.9 ms (1024 -> 2048). Only in plain inference (see
# _plain_inference) and where PyTorch was built with oneDNN; the kept
# weights are remade when a variable changes, like _made_from's.


def _packing_available():
    available = _STATE.get("packed")
    if available is None:
        torch = _torch()
        try:
            available = torch.backends.mkldnn.is_available() and all(
                hasattr(torch.ops.mkldnn, op)
                for op in ("_convolution_pointwise", "_reorder_convolution_weight")
            )
        except (AttributeError, RuntimeError):
            available = False
        _STATE["packed"] = available
    return available


def _fusable(x, training):
    return (
        not training
        and active()
        and _plain_inference(x)
        and x.device.type == "cpu"
        and _packing_available()
    )


def _norm_variables(norm, x):
    """A BatchNorm's variables for folding, or None if it cannot be folded."""
    if norm is None:
        return []
    if not _plain_norm(norm, x):
        return None
    return [norm.moving_mean, norm.moving_variance, norm.gamma, norm.beta]


def _scale_shift(norm, mean, variance, gamma, beta):
    scale = _torch().rsqrt(variance + norm.epsilon)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    return scale, shift if beta is None else shift + beta


def _packed_conv(owner, x, variables, make, strides, padding, groups, relu):
    """The prepacked convolution of channels-first view ``x``; ``make`` folds
    the raw variables into ``(weight (out, in / groups, kh, kw), bias)``."""
    torch = _torch()
    (weight, bias), packed = _made_from(
        owner, variables, lambda *tensors: (make(*tensors), {}), extra=("packed", len(variables))
    )
    shape = tuple(x.shape)
    strides, padding = list(strides), list(padding)
    prepared = packed.get(shape)
    if prepared is None:
        if len(packed) >= 4:  # a few input shapes at a time
            packed.clear()
        prepared = packed[shape] = torch.ops.mkldnn._reorder_convolution_weight(
            weight.contiguous(), padding, strides, [1, 1], groups, list(shape)
        )
    return torch.ops.mkldnn._convolution_pointwise(
        x, prepared, bias, padding, strides, [1, 1], groups, "relu" if relu else "none", [], ""
    )


def _bias_or_zeros(bias, channels, like):
    return like.new_zeros(channels) if bias is None else bias


def fused_conv(conv, x, padding, norm=None, relu=False, training=None):
    """``relu(norm(conv(x)))`` (each part optional; ``padding`` pixels of
    zeros on every side) as one prepacked convolution in inference, or
    ``None`` where it does not apply (then the caller computes it)."""
    if not _fusable(x, training) or not _plain_float(conv, x):
        return None
    if conv.dilation_rate != (1, 1) or conv.data_format != "channels_last":
        return None
    if conv.activation is not keras.activations.linear:
        return None
    stats = _norm_variables(norm, x)
    if stats is None:
        return None

    def make(kernel, bias, *statistics):
        weight = kernel.detach().permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        bias = _bias_or_zeros(bias, weight.shape[0], weight)
        if statistics:
            scale, shift = _scale_shift(norm, *statistics)
            weight = weight * scale[:, None, None, None]
            bias = bias * scale + shift
        return weight, bias.detach().contiguous()

    out = _packed_conv(
        conv, x.permute(0, 3, 1, 2), [conv.kernel, conv.bias] + stats, make,
        conv.strides, (padding, padding), conv.groups, relu,
    )
    return out.permute(0, 2, 3, 1)


def fused_dense(dense, x, pre_norm=None, norm=None, relu=False, training=None):
    """``relu(norm(dense(pre_norm(x))))`` on feature maps ``(B, H, W, C)`` or
    tokens ``(B, N, C)`` as one prepacked 1x1 convolution in inference (a
    BatchNorm before the Dense folds into its input side, one after it into
    its output side), or ``None`` where it does not apply."""
    if x.ndim not in (3, 4) or not _fusable(x, training) or not _plain_float(dense, x):
        return None
    if dense.activation is not keras.activations.linear:
        return None
    before, after = _norm_variables(pre_norm, x), _norm_variables(norm, x)
    if before is None or after is None:
        return None

    def make(kernel, bias, *statistics):
        kernel = kernel.detach()  # (in, out)
        bias = _bias_or_zeros(bias, kernel.shape[1], kernel)
        if before:
            scale, shift = _scale_shift(pre_norm, *statistics[:4])
            bias = bias + shift @ kernel
            kernel = scale[:, None] * kernel
        if after:
            scale, shift = _scale_shift(norm, *statistics[len(before):])
            kernel = kernel * scale
            bias = bias * scale + shift
        return kernel.t()[:, :, None, None], bias.detach().contiguous()

    maps = x if x.ndim == 4 else x.unsqueeze(2)  # (B, N, C) -> (B, N, 1, C)
    out = _packed_conv(
        dense, maps.permute(0, 3, 1, 2), [dense.kernel, dense.bias] + before + after, make,
        (1, 1), (0, 0), 1, relu,
    )
    out = out.permute(0, 2, 3, 1)
    return out if x.ndim == 4 else out.squeeze(2)


def fused_mlp(mlp, x, pre_norm=None, training=None):
    """``mlp(pre_norm(x))`` in inference: the BatchNorm folded into ``fc1``,
    its ReLU fused; ``None`` where that does not apply (training among
    them: dropout is the identity here)."""
    hidden = fused_dense(mlp.fc1, x, pre_norm=pre_norm, relu=True, training=training)
    return None if hidden is None else run(mlp.fc2, hidden)  # run: fc2 fused too


def call_directly(layer, args, kwargs):
    """``layer(*args, **kwargs)`` as ``layer.call`` in eager PyTorch inference
    (the blocks' maths without Keras' per-call machinery: 0.1-0.3 ms per
    block), or ``NotImplemented`` where Keras' ``__call__`` is needed:
    other backends, symbolic inputs, autograd, unbuilt layers, other dtypes,
    training."""
    if not active() or not layer.built or len(args) != 1:
        return NotImplemented
    x = args[0]
    torch = _torch()
    if not isinstance(x, torch.Tensor) or not _plain_float(layer, x) or not _plain_inference(x):
        return NotImplemented
    training = kwargs.get("training")
    if training is None:
        context = get_global_attribute("current_call_ctx")
        training = None if context is None else context.training
    if training:
        return NotImplemented
    return layer.call(x, **dict(kwargs, training=False))
