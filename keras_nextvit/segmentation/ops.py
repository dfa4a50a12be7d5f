"""PyTorch's resampling, exactly, in ``keras.ops`` (channels-last).

mmsegmentation's heads resize with ``F.interpolate`` and pool with
``nn.AdaptiveAvgPool2d``; the published checkpoints were trained with those
exact index rules, so a port must follow them at every size, odd ones
included:

* **nearest** (``mode="nearest"``): output index ``d`` reads input index
  ``floor(d * (in / out))``, the product taken in float32 as PyTorch does,
  clamped to ``in - 1``. (TensorFlow's nearest resize rounds half-pixel
  centres instead and picks other pixels.)
* **bilinear, align_corners=False**: output ``d`` samples the input at
  ``max((d + 0.5) * in / out - 0.5, 0)`` and blends its two neighbours (the
  upper one clamped to ``in - 1``); no antialiasing when shrinking.
* **adaptive average pooling** to ``s`` bins: bin ``i`` averages rows
  ``floor(i * in / s)`` to ``ceil((i + 1) * in / s) - 1``; bins overlap when
  ``s`` does not divide ``in``. Keras has no such layer; here it is a
  product with a pooling matrix per axis.

Sizes may be Python ints or scalar tensors (a model built for any image
size learns the sizes only at run time). With static sizes on the
TensorFlow backend, bilinear resizing uses ``keras.ops.image.resize``
(TensorFlow's half-pixel bilinear, the same rule), which exports to the
native TFLite / ONNX resize operators; everywhere else it gathers the two
neighbours explicitly.
"""

import keras
from keras import ops


def _is_static(size):
    return all(isinstance(s, int) for s in size)


def _float(value):
    return ops.cast(value, "float32")


def nearest_indices(in_size, out_size):
    """Source index of every output position (PyTorch's ``nearest``)."""
    scale = _float(in_size) / _float(out_size)
    index = ops.floor(_float(ops.arange(out_size)) * scale)
    return ops.minimum(ops.cast(index, "int32"), ops.cast(in_size, "int32") - 1)


def bilinear_weights(in_size, out_size):
    """``(i0, i1, w1)``: the two source indices and the weight of the upper
    one for every output position (``align_corners=False``)."""
    scale = _float(in_size) / _float(out_size)
    source = ops.maximum((_float(ops.arange(out_size)) + 0.5) * scale - 0.5, 0.0)
    last = ops.cast(in_size, "int32") - 1
    i0 = ops.minimum(ops.cast(ops.floor(source), "int32"), last)
    i1 = ops.minimum(i0 + 1, last)
    return i0, i1, source - _float(i0)


def resize_nearest(x, size):
    """``F.interpolate(x, size, mode="nearest")`` for NHWC ``x``."""
    shape = ops.shape(x)
    x = ops.take(x, nearest_indices(shape[1], size[0]), axis=1)
    return ops.take(x, nearest_indices(shape[2], size[1]), axis=2)


def _lerp_axis(x, in_size, out_size, axis):
    i0, i1, w1 = bilinear_weights(in_size, out_size)
    w1 = ops.cast(ops.reshape(w1, (-1,) + (1,) * (3 - axis)), x.dtype)
    low = ops.take(x, i0, axis=axis)
    high = ops.take(x, i1, axis=axis)
    return low + (high - low) * w1


def resize_bilinear(x, size):
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for
    NHWC ``x``; ``size`` is ``(height, width)``."""
    size = tuple(size)
    if _is_static(size) and keras.backend.backend() == "tensorflow":
        out = ops.image.resize(x, size, interpolation="bilinear", antialias=False)
        return ops.cast(out, x.dtype)
    shape = ops.shape(x)
    x = _lerp_axis(x, shape[1], size[0], axis=1)
    return _lerp_axis(x, shape[2], size[1], axis=2)


def adaptive_pool_matrix(in_size, bins):
    """``(bins, in_size)`` matrix whose row ``i`` averages PyTorch's
    ``AdaptiveAvgPool`` window ``i``."""
    n = ops.cast(in_size, "int32")
    i = ops.arange(bins, dtype="int32")[:, None]
    start = (i * n) // bins
    end = ((i + 1) * n + bins - 1) // bins
    rows = ops.cast(ops.arange(in_size), "int32")[None, :]
    inside = ops.logical_and(rows >= start, rows < end)
    return _float(inside) / _float(end - start)


def adaptive_avg_pool(x, bins):
    """``nn.AdaptiveAvgPool2d(bins)`` for NHWC ``x`` (``bins`` an int)."""
    shape = ops.shape(x)
    pool_h = ops.cast(adaptive_pool_matrix(shape[1], bins), x.dtype)
    pool_w = ops.cast(adaptive_pool_matrix(shape[2], bins), x.dtype)
    x = ops.einsum("ih,nhwc->niwc", pool_h, x)
    return ops.einsum("jw,niwc->nijc", pool_w, x)


def spatial_size(x):
    """``(height, width)`` of an NHWC tensor: ints where known, else scalar
    tensors."""
    static = tuple(x.shape[1:3])
    if None not in static:
        return tuple(int(s) for s in static)
    dynamic = ops.shape(x)
    return tuple(s if s is not None else dynamic[i + 1] for i, s in enumerate(static))
