"""The decode head of Semantic FPN (Kirillov et al., 2019; mmseg's ``FPNHead``).

Each FPN level climbs back to stride 4 through ``max(1, log2(stride / 4))``
ConvModules (3x3 conv, BN, ReLU), each of the coarser levels' followed by a
2x bilinear upsample; the four maps are summed (resized bilinearly to level
1's size first, which only changes anything at odd input sizes), then
``Dropout2d`` and the 1x1 classifier give stride-4 logits::

    out = scale_heads[0](p2)
    for i = 1, 2, 3:  out += bilinear(scale_heads[i](p_i), size of out)
    logits = conv_seg(dropout(out))
"""

import math

import keras

from ..layers import _PACKAGE
from .modules import ConvModule, DecodeHead
from .ops import resize_bilinear, spatial_size


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FPNHead(DecodeHead):
    """``FPNHead(feature_strides=(4, 8, 16, 32), channels=128)``."""

    def __init__(self, num_classes=150, channels=128, feature_strides=(4, 8, 16, 32), **kwargs):
        super().__init__(num_classes, channels, **kwargs)
        self.feature_strides = tuple(int(s) for s in feature_strides)
        base = math.log2(self.feature_strides[0])
        self.scale_heads = []
        for i, stride in enumerate(self.feature_strides):
            length = max(1, int(math.log2(stride) - base))
            self.scale_heads.append(
                [
                    ConvModule(channels, 3, deploy=self.deploy, name=f"scale_heads_{i}_{k}")
                    for k in range(length)
                ]
            )

    def head_children(self):
        # mmseg's scale_heads[i] is a Sequential that interleaves an Upsample
        # after each ConvModule of the coarser levels: conv k sits at 2k.
        for i, convs in enumerate(self.scale_heads):
            for k, conv in enumerate(convs):
                yield f"scale_heads.{i}.{2 * k}", conv

    def _upsamples(self, level):
        return level > 0 and self.feature_strides[level] != self.feature_strides[0]

    def build(self, input_shapes):
        for level, (shape, convs) in enumerate(zip(input_shapes, self.scale_heads)):
            for conv in convs:
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
        self.build_cls_seg(input_shapes[0])

    def call(self, inputs, training=None):
        output = None
        for level, (x, convs) in enumerate(zip(inputs, self.scale_heads)):
            for conv in convs:
                x = conv(x, training=training)
                if self._upsamples(level):
                    height, width = spatial_size(x)
                    x = resize_bilinear(x, (2 * height, 2 * width))
            if output is None:
                output = x
            else:
                output = output + resize_bilinear(x, spatial_size(output))
        return self.cls_seg(output, training=training)

    def compute_output_shape(self, input_shapes):
        return self.logits_shape(input_shapes[0])

    def get_config(self):
        config = super().get_config()
        config.update(feature_strides=self.feature_strides)
        return config
