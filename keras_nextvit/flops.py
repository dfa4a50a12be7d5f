"""Counting a Next-ViT's parameters and multiply-accumulates (MACs).

"FLOPs" in the paper (and in fvcore, which vision papers use) are MACs of
the convolutions, linear layers and attention matrix products;
normalisation, activations, pooling and additions are not counted. The
counter below follows the model's own layers, so it sees exactly the graph
that runs.
"""

import math

import keras

from .layers import MHCA, MLP, NCB, NTB, ConvBNReLU, EfficientMHSA, PatchEmbed


def trainable_parameters(model):
    """Trainable parameters: what PyTorch's ``parameters()`` counts (Keras'
    ``count_params()`` adds the BatchNorm moving statistics)."""
    return sum(math.prod(v.shape) for v in model.trainable_weights)


def _positions(shape):
    return math.prod(d for d in shape[1:-1])


def _conv_macs(conv, out_shape, in_channels):
    kh, kw = conv.kernel_size
    return _positions(out_shape) * out_shape[-1] * (in_channels // conv.groups) * kh * kw


def _patch_embed_macs(layer, shape):
    out_shape = layer.compute_output_shape(shape)
    if layer.conv is None:
        return 0, out_shape
    return _positions(out_shape) * shape[-1] * layer.filters, out_shape


def _mhca_macs(layer, shape):
    positions, c = _positions(shape), layer.filters
    return positions * c * layer.head_dim * 9 + positions * c * c


def _mlp_macs(layer, shape):
    return _positions(shape) * shape[-1] * layer.hidden_units * 2


def _e_mhsa_macs(layer, tokens, attention):
    keys = layer.num_keys(tokens)
    dim = layer.dim
    projections = (2 * tokens + 2 * keys) * dim * dim  # q, proj; k, v
    return projections + (2 * tokens * keys * dim if attention else 0)  # q k^T, attn v


def _layer_macs(layer, shape, attention):
    """MACs of one top-level layer on input ``shape`` (batch 1)."""
    if isinstance(layer, ConvBNReLU):
        out_shape = layer.compute_output_shape(shape)
        return _conv_macs(layer.conv, out_shape, shape[-1])
    if isinstance(layer, NCB):
        macs, out_shape = _patch_embed_macs(layer.patch_embed, shape)
        return macs + _mhca_macs(layer.mhca, out_shape) + _mlp_macs(layer.mlp, out_shape)
    if isinstance(layer, NTB):
        macs, x_shape = _patch_embed_macs(layer.patch_embed, shape)
        macs += _e_mhsa_macs(layer.e_mhsa, _positions(x_shape), attention)
        proj_macs, y_shape = _patch_embed_macs(layer.projection, x_shape)
        macs += proj_macs + _mhca_macs(layer.mhca, y_shape)
        return macs + _mlp_macs(layer.mlp, x_shape[:-1] + (layer.filters,))
    if isinstance(layer, keras.layers.Dense):
        return _positions(shape) * shape[-1] * layer.units if len(shape) > 2 else shape[-1] * layer.units
    if isinstance(layer, (keras.layers.Conv2D, PatchEmbed, MHCA, MLP, EfficientMHSA)):
        raise NotImplementedError(f"MAC counting of a bare {type(layer).__name__} at the top level.")
    return 0


def _layers_with_input_shapes(model, input_size):
    """``(layer, input shape)`` for every top-level layer, batch 1."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    shape = (1, h, w, model.inputs[0].shape[-1])
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        yield layer, shape
        shape = tuple(layer.compute_output_shape(shape))


def conv3x3_macs(model, input_size=224):
    """The part of :func:`count_macs` spent in 3x3 convolutions (the stem
    and every MHCA's grouped conv); the rest is 1x1 projections, linear
    layers and attention products."""
    total = 0
    for layer, shape in _layers_with_input_shapes(model, input_size):
        if isinstance(layer, ConvBNReLU):
            total += _layer_macs(layer, shape, False)
        elif isinstance(layer, (NCB, NTB)):
            _, out_shape = _patch_embed_macs(layer.patch_embed, shape)
            if isinstance(layer, NTB):
                _, out_shape = _patch_embed_macs(layer.projection, out_shape)
            total += _positions(out_shape) * layer.mhca.filters * layer.mhca.head_dim * 9
    return total


def count_macs(model, input_size=224, attention=True):
    """Multiply-accumulates of one image of ``input_size`` (int or (h, w)).

    ``attention=False`` leaves out the two attention matrix products, as
    module-hook counters (thop) do; that is the convention of the paper's
    table (Next-ViT-S at 224: 5.79 G with them, 5.76 G without).
    """
    return sum(
        _layer_macs(layer, shape, attention)
        for layer, shape in _layers_with_input_shapes(model, input_size)
    )
