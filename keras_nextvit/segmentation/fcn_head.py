"""The auxiliary head of UperNet training (mmseg's ``FCNHead``, one conv).

On stage 3 (stride 16): ``logits = conv_seg(dropout(convs[0](x3)))`` with
``convs[0]`` a 3x3 ConvModule 512 -> 256. Only training uses it (its loss
is weighted 0.4); published checkpoints carry its weights.
"""

import keras

from ..layers import _PACKAGE
from .modules import ConvModule, DecodeHead


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FCNHead(DecodeHead):
    """``FCNHead(num_convs=1, channels=256, concat_input=False)``."""

    def __init__(self, num_classes=150, channels=256, num_convs=1, **kwargs):
        super().__init__(num_classes, channels, **kwargs)
        self.num_convs = num_convs
        self.convs = [
            ConvModule(channels, 3, deploy=self.deploy, name=f"convs_{i}") for i in range(num_convs)
        ]

    def head_children(self):
        for i, conv in enumerate(self.convs):
            yield f"convs.{i}", conv

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.build_cls_seg(input_shape)

    def call(self, x, training=None):
        for conv in self.convs:
            x = conv(x, training=training)
        return self.cls_seg(x, training=training)

    def compute_output_shape(self, input_shape):
        return self.logits_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_convs=self.num_convs)
        return config
