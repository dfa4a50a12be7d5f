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
a BatchNormalization that is training -- they call the layer as Keras does.
In inference (no autograd, as ``predict`` runs) a ``Dense`` on feature
maps or tokens runs as a 1x1 convolution (oneDNN: twice the speed of the
matrix product on CPU) with its weight transposed once and kept, and a
BatchNorm's scale and shift are kept too; both are remade whenever a
variable changes. Gradients flow through both forms alike. ``with torch_fast.disabled():``
runs the plain Keras form, which is what the tests compare against.
"""

import contextlib
import weakref

import keras

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


def _plain_float(layer, x):
    """A float32 layer without Keras quantization or LoRA, on a float32 tensor."""
    return (
        getattr(x, "dtype", None) == _torch().float32
        and layer.built
        and layer.compute_dtype == "float32"
        and layer.variable_dtype == "float32"
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
    )


def _plain_inference(x):
    """Eager inference on real tensors: no autograd, no stateless scope
    (``stateless_call``), no symbolic (meta-device) tracing. Only then may a
    layer's variables be read raw and what is made from them be kept."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return not _torch().is_grad_enabled() and not in_stateless_scope() and x.device.type != "meta"


def _made_from(layer, variables, make):
    """``make(*tensors)`` of ``variables``' raw tensors, kept per layer and
    remade when any of them changes (``assign`` and optimizer steps update
    in place, which bumps a tensor's version)."""
    tensors = [None if v is None else v._value for v in variables]
    key = tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)
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
    if x.ndim not in (3, 4) or not _plain_inference(x):
        return functional.linear(x, layer.kernel.value.t(), bias)
    # Inference on feature maps and token sequences: a 1x1 convolution on the
    # channels-last view (oneDNN) runs twice as fast on CPU as the matrix
    # product F.linear makes of it, e.g. 0.40 vs 0.88 ms for stage 1's
    # 56x56x96 -> 288 (tools/profile_stages.py --backends).
    maps = x if x.ndim == 4 else x.unsqueeze(2)  # (B, N, C) -> (B, N, 1, C)
    weight = _made_from(layer, [layer.kernel], lambda k: k.detach().t().contiguous()[:, :, None, None])
    out = functional.conv2d(maps.permute(0, 3, 1, 2), weight, bias)
    out = out.permute(0, 2, 3, 1)
    return out if x.ndim == 4 else out.squeeze(2)


def _batch_norm(layer, x, training):
    if training and layer.trainable:  # updates the moving statistics: Keras' form
        return NotImplemented
    if layer.axis not in (-1, len(x.shape) - 1) or not _plain_float(layer, x):
        return NotImplemented
    torch = _torch()

    def scale_and_shift(mean, variance, gamma, beta):
        scale = torch.rsqrt(variance + layer.epsilon)
        if gamma is not None:
            scale = scale * gamma
        shift = -mean * scale
        return scale, shift if beta is None else shift + beta

    variables = [layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta]
    if _plain_inference(x):  # the statistics and affine only change when trained
        scale, shift = _made_from(layer, variables, scale_and_shift)
    else:  # through autograd (a frozen BatchNorm while training)
        scale, shift = scale_and_shift(*(_value(v) for v in variables))
    return torch.addcmul(shift, x, scale)  # one pass: shift + x * scale


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
    """``layer(x, training=training, **kwargs)``, directly in PyTorch where it can."""
    if active():
        form = _FORMS.get(type(layer))
        if form is not None:
            out = form(layer, x, training, **kwargs)
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
