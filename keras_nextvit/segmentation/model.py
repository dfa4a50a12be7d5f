"""The Next-ViT segmenters: Semantic FPN and UperNet on the segmentation backbone.

The graph, layer for layer, with the checkpoint names beside it::

    images -> input_check -> stem_0..3, stages_{s}_blocks_{b}   backbone.stem / backbone.features
                             extra_norm_0..2, norm               backbone.extra_norm_list.{0-2} / backbone.norm
           fpn:      neck (FPN) -> decode_head (FPNHead)         neck.* / decode_head.*
           upernet:  decode_head (UPerHead)                      decode_head.*
                     auxiliary_head (FCNHead, stage 3)           auxiliary_head.*
           -> resize (bilinear to the input size)

The backbone is the classifier's (same layers, same builder) with the
upstream repository's extra norms: stage ``i``'s output is normalised and the
normalised map feeds both the head and the next stage.
"""

import keras

from .. import presets
from ..layers import InputCheck
from ..model import build_stages, check_input_shape, stage_plan
from .fcn_head import FCNHead
from .fpn import FPN
from .fpn_head import FPNHead
from .modules import ResizeLike
from .uper_head import UPerHead

HEADS = ("fpn", "upernet")
# Stochastic depth of the upstream segmentation backbones (all three variants).
DROP_PATH_RATE = 0.2
# The published ADE20K segmenters: config, schedule and single-scale mIoU
# (upstream README). ``pretraining``: "1k" (ImageNet-1K) or "1k6m" (with the
# 6M-image SSLD distillation data).
PUBLISHED = {
    ("fpn", "small", "1k"): 46.5,
    ("fpn", "base", "1k"): 48.6,
    ("fpn", "large", "1k"): 49.1,
    ("fpn", "small", "1k6m"): 48.8,
    ("fpn", "base", "1k6m"): 50.2,
    ("fpn", "large", "1k6m"): 50.5,
    ("upernet", "small", "1k"): 48.1,
    ("upernet", "base", "1k"): 50.4,
    ("upernet", "large", "1k"): 50.1,
    ("upernet", "small", "1k6m"): 49.8,
    ("upernet", "base", "1k6m"): 51.8,
    ("upernet", "large", "1k6m"): 51.5,
}
# GFLOPs the upstream README reports at 512x2048.
PUBLISHED_GFLOPS = {
    "fpn": {"small": 208, "base": 260, "large": 331},
    "upernet": {"small": 968, "base": 1020, "large": 1072},
}


def variant_depths(variant):
    """The stage depths of ``variant`` (a name or four depths), or a clear
    ValueError."""
    if isinstance(variant, str):
        if variant not in presets.VARIANTS:
            raise ValueError(
                f"variant must be one of {tuple(presets.VARIANTS)} or four stage depths, got {variant!r}."
            )
        return tuple(presets.VARIANTS[variant]["depths"])
    try:
        depths = tuple(int(d) for d in variant)
    except (TypeError, ValueError):
        raise ValueError(
            f"variant must be one of {tuple(presets.VARIANTS)} or four stage depths, got {variant!r}."
        ) from None
    stage_plan(depths)  # raises on a depth Next-ViT cannot have
    return depths


def _check_arguments(head, num_classes, input_shape):
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    return check_input_shape(input_shape)


def NextViTSegmenter(
    variant="small",
    head="fpn",
    num_classes=150,
    input_shape=(None, None, 3),
    weights=None,
    backbone_weights=None,
    upsample=True,
    auxiliary_head=False,
    drop_path_rate=DROP_PATH_RATE,
    dropout_rate=0.1,
    channels=None,
    name=None,
):
    """Next-ViT + Semantic FPN or UperNet, as the upstream ADE20K segmenters.

    Args:
        variant: ``"small"``, ``"base"`` or ``"large"``, or four stage
            depths for a custom (e.g. tiny) backbone such as ``(1, 1, 5, 1)``.
        head: ``"fpn"`` (FPN neck + ``FPNHead``, 80k schedule upstream) or
            ``"upernet"`` (``UPerHead``, 160k).
        num_classes: classes of the decode (and auxiliary) head; ADE20K: 150.
        input_shape: ``(height, width, 3)``; ``None`` sizes take any image
            of at least 32 pixels.
        weights: a segmentation checkpoint (mmseg ``.pth``, ``.safetensors``,
            ``.npz``, a dict, or a Keras ``.weights.h5``).
        backbone_weights: an ImageNet preset name or classification
            checkpoint (either naming) to start the backbone from; the extra
            norms and the heads start fresh, as upstream training does.
        upsample: return logits at the input resolution (mmseg's whole-image
            inference); ``False`` returns the decode head's stride-4 logits.
        auxiliary_head: add the ``FCNHead`` on stage 3 as a second output
            (stride-16 logits), for UperNet's 0.4-weighted auxiliary loss.
        drop_path_rate: stochastic depth of the last backbone block (0.2
            upstream for S, B and L).
        dropout_rate: ``Dropout2d`` before each head's classifier.
        channels: head widths, ``None`` for the published ones: FPN
            ``(neck, head)`` = ``(256, 128)``; UperNet ``(head, auxiliary)``
            = ``(512, 256)``. Smaller widths make quick experiments.
        name: model name (default ``nextvit_{variant}_{head}``).

    Returns:
        A functional Keras model from NHWC images (ImageNet-normalised) to
        NHWC logits, or ``[logits, auxiliary_logits]``.

    Example:

    >>> import numpy as np, keras_nextvit
    >>> model = keras_nextvit.NextViTSegmenter("small", "fpn", num_classes=4)
    >>> model.predict(np.zeros((1, 64, 96, 3)), verbose=0).shape
    (1, 64, 96, 4)
    """
    shape = _check_arguments(head, num_classes, input_shape)
    if weights is not None and backbone_weights is not None:
        raise ValueError(
            "Pass weights= (a whole segmentation checkpoint) or backbone_weights= (an ImageNet "
            "checkpoint for the backbone), not both."
        )
    depths = variant_depths(variant)
    if channels is None:
        channels = (256, 128) if head == "fpn" else (512, 256)
    first, second = (int(c) for c in channels)
    inputs = keras.Input(shape=shape, name="images")
    x = InputCheck(channels=shape[-1], min_size=presets.MIN_INPUT_SIZE, name="input_check")(inputs)
    features = build_stages(
        x, stage_plan(depths), drop_path_rate=drop_path_rate, extra_norms=True
    )
    if head == "fpn":
        pyramid = FPN(first, name="neck")(features)
        logits = FPNHead(num_classes, second, dropout_rate=dropout_rate, name="decode_head")(pyramid)
    else:
        logits = UPerHead(num_classes, first, dropout_rate=dropout_rate, name="decode_head")(features)
    if upsample:
        logits = ResizeLike(name="resize")(logits, inputs)
    outputs = logits
    if auxiliary_head:
        auxiliary_channels = second if head == "upernet" else 256
        auxiliary = FCNHead(
            num_classes, auxiliary_channels, dropout_rate=dropout_rate, name="auxiliary_head"
        )(features[2])
        outputs = [logits, auxiliary]
    tag = variant if isinstance(variant, str) else "custom"
    model = keras.Model(inputs, outputs, name=name or f"nextvit_{tag}_{head}")

    from .. import weights as weights_lib

    if weights is not None:
        weights_lib.load_checkpoint(model, weights)
    elif backbone_weights is not None:
        weights_lib.load_backbone_weights(model, backbone_weights)
    return model


def segmenter_features(model, name=None):
    """A model returning a segmenter's four backbone outputs (the normalised
    maps the heads read; strides 4-32, 96/256/512/1024 channels)."""
    from ..naming import extra_norm_name

    names = [extra_norm_name(s) for s in range(3)] + ["norm"]
    outputs = [model.get_layer(n).output for n in names]
    return keras.Model(model.input, outputs, name=name or f"{model.name}_features")


def segmenter_config(model):
    """``(variant, head, num_classes, auxiliary)`` of a segmenter, read from
    its layers."""
    from ..naming import model_depths

    depths = model_depths(model)
    variants = [n for n, c in presets.VARIANTS.items() if tuple(c["depths"]) == depths]
    decode = model.get_layer("decode_head")
    head = "upernet" if isinstance(decode, UPerHead) else "fpn"
    auxiliary = any(layer.name == "auxiliary_head" for layer in model.layers)
    return (variants[0] if variants else None), head, decode.num_classes, auxiliary
