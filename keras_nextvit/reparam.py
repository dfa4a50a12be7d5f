"""BatchNorm merging: the deployment form of a Next-ViT.

At inference a BatchNorm is a per-channel affine map ``y = s * x + t`` with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. It folds into a
neighbouring linear layer:

* **after** a conv or linear layer (stem, patch embeddings, MHCA):
  ``W' = W * s`` on the output channels, ``b' = b * s + t``;
* **before** a linear layer (the NCB and NTB pre-norms before ``mlp.fc1``;
  ``norm1`` before E-MHSA's q, k and v; the final norm before the
  classifier): ``W' = diag(s) W``, ``b' = b + t W``.

In E-MHSA with ``sr_ratio > 1``, keys and values see
``BN_sr(pool(BN1(x)))``; an average pool commutes with a per-channel affine
map, so ``BN_sr . BN1`` folds as one affine map into k and v, applied after
the pool. Global average pooling commutes the same way, which lets the final
norm fold into the classifier. A headless model, or one that also outputs
pre-logits, keeps the final norm as a
:class:`~keras_nextvit.layers.ChannelAffine` (no BatchNorm, same numbers).

:func:`merge_batchnorm` returns a new model built from the ``deploy=True``
form of every block; the original model is not touched.
"""

import keras
import numpy as np

from .layers import NCB, NTB, ChannelAffine, ConvBNReLU, _Composite


def _affine(bn):
    """``(s, t)`` of an inference BatchNorm, in float64."""
    gamma, beta, mean, var = (
        np.asarray(w, dtype=np.float64)
        for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)
    )
    s = gamma / np.sqrt(var + bn.epsilon)
    return s, beta - mean * s


def _compose(first, second):
    """The affine map ``second(first(x))``."""
    (s1, t1), (s2, t2) = first, second
    return s1 * s2, t1 * s2 + t2


def _kernel_bias(layer):
    kernel = np.asarray(layer.kernel, dtype=np.float64)
    out = kernel.shape[-1]
    bias = np.zeros(out) if layer.bias is None else np.asarray(layer.bias, dtype=np.float64)
    return kernel, bias


def fold_after(layer, affine):
    """Kernel and bias of ``affine(layer(x))`` (affine on output channels)."""
    kernel, bias = _kernel_bias(layer)
    s, t = affine
    return kernel * s, bias * s + t


def fold_before(layer, affine):
    """Kernel and bias of ``layer(affine(x))`` for a Dense ``layer``."""
    kernel, bias = _kernel_bias(layer)
    s, t = affine
    return kernel * s[:, None], bias + t @ kernel


def _assign(layer, kernel, bias):
    layer.kernel.assign(kernel.astype(np.float32))
    layer.bias.assign(bias.astype(np.float32))


def _copy(source, target):
    for src, dst in zip(source.weights, target.weights, strict=True):
        dst.assign(_own_copy(src))


def _own_copy(variable):
    """``variable``'s value in a buffer of its own. On JAX, assigning one
    variable to another shares the array, and Keras' ``predict`` donates the
    model's arrays to XLA: the other model's weights would be deleted."""
    return keras.ops.convert_to_numpy(variable)


def _merge_patch_embed(src, dst):
    if src.conv is not None:
        _assign(dst.conv, *fold_after(src.conv, _affine(src.norm)))


def _merge_mhca(src, dst):
    _assign(dst.group_conv3x3, *fold_after(src.group_conv3x3, _affine(src.norm)))
    dst.projection.kernel.assign(_own_copy(src.projection.kernel))


def _merge_mlp(src, dst, pre_norm):
    _assign(dst.mlp.fc1, *fold_before(src.mlp.fc1, _affine(pre_norm)))
    _copy(src.mlp.fc2, dst.mlp.fc2)


def _merge_ncb(src, dst):
    _merge_patch_embed(src.patch_embed, dst.patch_embed)
    _merge_mhca(src.mhca, dst.mhca)
    _merge_mlp(src, dst, src.norm)


def _merge_ntb(src, dst):
    _merge_patch_embed(src.patch_embed, dst.patch_embed)
    attn, merged = src.e_mhsa, dst.e_mhsa
    norm1 = _affine(src.norm1)
    _assign(merged.q, *fold_before(attn.q, norm1))
    kv_affine = norm1 if attn.norm is None else _compose(norm1, _affine(attn.norm))
    _assign(merged.k, *fold_before(attn.k, kv_affine))
    _assign(merged.v, *fold_before(attn.v, kv_affine))
    _copy(attn.proj, merged.proj)
    _merge_patch_embed(src.projection, dst.projection)
    _merge_mhca(src.mhca, dst.mhca)
    _merge_mlp(src, dst, src.norm2)


def _merge_stem(src, dst):
    _assign(dst.conv, *fold_after(src.conv, _affine(src.norm)))


def _merge_conv_module(src, dst):
    if src.bn is not None:
        _assign(dst.conv, *fold_after(src.conv, _affine(src.bn)))
    else:
        _copy(src.conv, dst.conv)


def _merge_head(src, dst):
    """A segmentation neck or head: every ConvModule, and the classifier."""
    from .segmentation.modules import ConvModule

    for (attr, a), (_, b) in zip(src.torch_children(), dst.torch_children(), strict=True):
        if isinstance(a, ConvModule):
            _merge_conv_module(a, b)
        else:
            _copy(a, b)


_MERGERS = {ConvBNReLU: _merge_stem, NCB: _merge_ncb, NTB: _merge_ntb}


def _merge_segmenter(model, name, input_shape):
    """merge_batchnorm for a segmenter's graph (branches to the heads)."""
    from .segmentation.modules import DecodeHead

    shape = model.inputs[0].shape if input_shape is None else (None, *input_shape)
    inputs = keras.Input(batch_shape=shape, name=model.inputs[0].name)

    def clone(layer):
        if isinstance(layer, _Composite):
            return type(layer).from_config({**layer.get_config(), "deploy": True})
        if isinstance(layer, keras.layers.BatchNormalization):
            return ChannelAffine(name=layer.name)
        return type(layer).from_config(layer.get_config())

    merged = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    merged.name = name or f"{model.name}_merged"
    for src in model.layers:
        if isinstance(src, keras.layers.InputLayer):
            continue
        dst = merged.get_layer(src.name)
        if type(src) in _MERGERS:
            _MERGERS[type(src)](src, dst)
        elif isinstance(src, DecodeHead) or src.name == "neck":
            _merge_head(src, dst)
        elif isinstance(src, _Composite):
            raise TypeError(f"No BatchNorm merging for {type(src).__name__} ({src.name}).")
        elif isinstance(src, keras.layers.BatchNormalization):
            s, t = _affine(src)
            dst.scale.assign(s.astype(np.float32))
            dst.offset.assign(t.astype(np.float32))
        else:
            _copy(src, dst)
    return merged


def merge_batchnorm(model, name=None, input_shape=None):
    """A copy of a Next-ViT ``model`` with every BatchNorm folded away.

    Works on models from :func:`keras_nextvit.NextViT` (any head, any input
    shape). The result computes the same function to float rounding and
    keeps the layer names, so :func:`keras_nextvit.feature_extractor` works
    on it. It is for inference: there are no BatchNorms left to train.

    >>> deployed = keras_nextvit.merge_batchnorm(model)
    """
    from .naming import is_segmenter

    if is_segmenter(model):
        return _merge_segmenter(model, name, input_shape)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    # The final norm folds into the classifier only when nothing else reads
    # its output (a pre-logits output needs it as an affine map).
    output_layers = [t._keras_history.operation.name for t in model.outputs]
    fold_into_head = output_layers == ["head_fc"]
    shape = model.inputs[0].shape if input_shape is None else (None, *input_shape)
    inputs = keras.Input(batch_shape=shape, name=model.inputs[0].name)
    x = inputs
    pairs = []
    produced = {}  # original layer -> the merged model's tensor in its place
    final_norm = None
    for layer in layers:
        if isinstance(layer, _Composite):
            clone = type(layer).from_config({**layer.get_config(), "deploy": True})
        elif isinstance(layer, keras.layers.BatchNormalization):
            if layer.name != "norm":
                raise ValueError(f"Unexpected BatchNormalization {layer.name!r} at the top level.")
            final_norm = layer
            if fold_into_head:
                continue
            clone = ChannelAffine(name="norm")
        else:
            clone = type(layer).from_config(layer.get_config())
        x = clone(x)
        produced[id(layer)] = x
        pairs.append((layer, clone))
    outputs = [produced[id(t._keras_history.operation)] for t in model.outputs]
    merged = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=name or f"{model.name}_merged")

    for src, dst in pairs:
        if type(src) in _MERGERS:
            _MERGERS[type(src)](src, dst)
        elif isinstance(src, _Composite):
            raise TypeError(f"No BatchNorm merging for {type(src).__name__} ({src.name}).")
        elif src is final_norm and not fold_into_head:
            s, t = _affine(src)
            dst.scale.assign(s.astype(np.float32))
            dst.offset.assign(t.astype(np.float32))
        elif src.name == "head_fc" and fold_into_head:
            _assign(dst, *fold_before(src, _affine(final_norm)))
        else:
            _copy(src, dst)
    return merged


def count_batchnorms(model):
    """BatchNormalization layers anywhere inside ``model``."""
    return sum(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in model._flatten_layers(include_self=False)
    )
