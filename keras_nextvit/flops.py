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
from .naming import stage_block_names


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


# ------------------------------------------------------------ segmenters


def _conv_module_macs(conv, shape):
    """MACs of a segmentation ConvModule on ``shape`` (batch 1, NHWC)."""
    return _positions(shape) * shape[-1] * conv.filters * conv.kernel_size**2


def _with_channels(shape, channels, grow=1):
    return (shape[0], shape[1] * grow, shape[2] * grow, channels)


def _fpn_neck_macs(neck, shapes):
    macs = 0
    for shape, lateral, fpn in zip(shapes, neck.lateral_convs, neck.fpn_convs):
        macs += _conv_module_macs(lateral, shape)
        macs += _conv_module_macs(fpn, _with_channels(shape, lateral.filters))
    return macs, [_with_channels(s, neck.out_channels) for s in shapes]


def _decode_head_macs(head, shapes):
    """MACs of an FPNHead, UPerHead or FCNHead (``shapes``: its inputs)."""
    from .segmentation import FCNHead, FPNHead, UPerHead

    macs = 0
    if isinstance(head, FPNHead):
        for level, (shape, convs) in enumerate(zip(shapes, head.scale_heads)):
            for conv in convs:
                macs += _conv_module_macs(conv, shape)
                shape = _with_channels(shape, conv.filters, 2 if head._upsamples(level) else 1)
    elif isinstance(head, UPerHead):
        last = shapes[-1]
        for scale, conv in zip(head.pool_scales, head.psp_modules):
            macs += _conv_module_macs(conv, (1, scale, scale, last[-1]))
        concat = last[-1] + len(head.psp_modules) * head.channels
        macs += _conv_module_macs(head.bottleneck, _with_channels(last, concat))
        for shape, lateral, fpn in zip(shapes, head.lateral_convs, head.fpn_convs):
            macs += _conv_module_macs(lateral, shape)
            macs += _conv_module_macs(fpn, _with_channels(shape, head.channels))
        fused = _with_channels(shapes[0], head.num_levels * head.channels)
        macs += _conv_module_macs(head.fpn_bottleneck, fused)
    elif isinstance(head, FCNHead):
        shape = shapes[0]
        for conv in head.convs:
            macs += _conv_module_macs(conv, shape)
            shape = _with_channels(shape, conv.filters)
    else:
        raise NotImplementedError(f"MAC counting of {type(head).__name__}.")
    return macs + _positions(shapes[0]) * head.channels * head.num_classes


def count_segmenter_macs(model, input_size=(512, 2048), attention=True, auxiliary=False):
    """Multiply-accumulates of one image through a segmenter: backbone,
    neck and decode head (and the auxiliary head with ``auxiliary``);
    resizing, pooling and additions are not counted, as for the backbone."""
    names = {layer.name for layer in model.layers}
    stage_outputs = ["extra_norm_0", "extra_norm_1", "extra_norm_2", "norm"]
    backbone, shapes = 0, {}
    for layer, shape in _layers_with_input_shapes(model, input_size):
        if layer.name in ("neck", "decode_head", "auxiliary_head", "resize"):
            continue
        backbone += _layer_macs(layer, shape, attention)
        if layer.name in stage_outputs:
            shapes[layer.name] = tuple(shape)
        if layer.name == "norm":
            break
    features = [shapes[n] for n in stage_outputs]
    macs = backbone
    if "neck" in names:
        neck_macs, features_in = _fpn_neck_macs(model.get_layer("neck"), features)
        macs += neck_macs
    else:
        features_in = features
    macs += _decode_head_macs(model.get_layer("decode_head"), features_in)
    if auxiliary and "auxiliary_head" in names:
        macs += _decode_head_macs(model.get_layer("auxiliary_head"), [features[2]])
    return macs


# ------------------------------------------------------------ detectors


def count_detector_macs(detector, input_size=(1280, 800), attention=True, num_rois=1000,
                        num_mask_rois=100):
    """Multiply-accumulates of one image through a Mask R-CNN as mmdet's
    ``get_flops.py`` runs it (``forward_dummy``): backbone, FPN neck, the
    RPN head on all five levels, the box head on ``num_rois`` RoIs and the
    mask head on ``num_mask_rois`` (mmdet's 1000 random proposals, of which
    the first 100 go to the mask head). ``input_size`` is ``(height, width)``;
    mmdet's default ``--shape 1280 800`` is a 1280-high, 800-wide image."""
    backbone = detector.backbone
    stage_names = stage_block_names(backbone)
    macs, shapes = 0, {}
    for layer, shape in _layers_with_input_shapes(backbone, input_size):
        macs += _layer_macs(layer, shape, attention)
        if layer.name in stage_names:
            shapes[layer.name] = tuple(layer.compute_output_shape(shape))
    features = [shapes[n] for n in stage_names]
    neck_macs, pyramid = _fpn_neck_macs(detector.neck, features)
    macs += neck_macs
    for _ in range(detector.neck.num_outs - detector.neck.num_levels):  # P6: max-pooling, no MACs
        n, h, w, c = pyramid[-1]
        pyramid.append((n, (h + 1) // 2, (w + 1) // 2, c))
    rpn = detector.rpn_head
    channels = pyramid[0][-1]
    for shape in pyramid:
        positions = _positions(shape)
        macs += positions * channels * rpn.feat_channels * 9
        macs += positions * rpn.feat_channels * rpn.num_anchors * 5  # cls (A) and reg (4A)
    head = detector.bbox_head
    flat = 7 * 7 * channels
    per_roi = flat * head.fc_channels + head.fc_channels**2
    per_roi += head.fc_channels * (head.num_classes + 1 + 4 * head.num_classes)
    macs += num_rois * per_roi
    mask = detector.mask_head
    per_mask = mask.num_convs * 14 * 14 * mask.channels * mask.channels * 9
    per_mask += 14 * 14 * mask.channels * mask.channels * 4  # the 2x2 stride-2 transposed conv
    per_mask += 28 * 28 * mask.channels * mask.num_classes
    return macs + num_mask_rois * per_mask
