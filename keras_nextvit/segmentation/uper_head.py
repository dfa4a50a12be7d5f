"""The decode head of UperNet (Xiao et al., 2018; mmseg's ``UPerHead``).

A pyramid pooling module (PSPNet's) on the last stage, then an FPN over all
four stages, fused::

    psp    = bottleneck(concat[x4, bilinear(ppm_s(x4), size of x4) for s in 1, 2, 3, 6])
    lat_i  = lateral_convs[i](x_i)  (i = 1..3),  lat_4 = psp
    for i = 4, 3, 2:  lat_{i-1} += bilinear(lat_i, size of lat_{i-1})
    out_i  = fpn_convs[i](lat_i)  (i = 1..3),  out_4 = lat_4
    logits = conv_seg(dropout(fpn_bottleneck(concat[bilinear(out_i, size of out_1)])))

``ppm_s`` is ``AdaptiveAvgPool2d(s)`` (PyTorch's overlapping bins) and a 1x1
ConvModule. Every ConvModule is conv -> BN -> ReLU; 512 channels throughout.
"""

import keras
from keras import ops

from ..layers import _PACKAGE
from .modules import ConvModule, DecodeHead
from .ops import adaptive_avg_pool, resize_bilinear, spatial_size


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UPerHead(DecodeHead):
    """``UPerHead(pool_scales=(1, 2, 3, 6), channels=512)`` on four maps."""

    def __init__(
        self, num_classes=150, channels=512, pool_scales=(1, 2, 3, 6), num_levels=4, **kwargs
    ):
        super().__init__(num_classes, channels, **kwargs)
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.num_levels = num_levels

        def conv(kernel_size, name):
            return ConvModule(channels, kernel_size, deploy=self.deploy, name=name)

        # mmseg's PPM is a list of Sequential(AdaptiveAvgPool2d, ConvModule).
        self.psp_modules = [conv(1, f"psp_modules_{j}") for j in range(len(self.pool_scales))]
        self.bottleneck = conv(3, "bottleneck")
        self.lateral_convs = [conv(1, f"lateral_convs_{i}") for i in range(num_levels - 1)]
        self.fpn_convs = [conv(3, f"fpn_convs_{i}") for i in range(num_levels - 1)]
        self.fpn_bottleneck = conv(3, "fpn_bottleneck")

    def head_children(self):
        for j, conv in enumerate(self.psp_modules):
            yield f"psp_modules.{j}.1", conv
        yield "bottleneck", self.bottleneck
        for i, conv in enumerate(self.lateral_convs):
            yield f"lateral_convs.{i}", conv
        for i, conv in enumerate(self.fpn_convs):
            yield f"fpn_convs.{i}", conv
        yield "fpn_bottleneck", self.fpn_bottleneck

    def build(self, input_shapes):
        last = tuple(input_shapes[-1])
        for conv in self.psp_modules:
            conv.build(last)
        concat = last[:-1] + (last[-1] + len(self.psp_modules) * self.channels,)
        self.bottleneck.build(concat)
        level = tuple(input_shapes[0][:-1]) + (self.channels,)
        for shape, lateral, fpn in zip(input_shapes, self.lateral_convs, self.fpn_convs):
            lateral.build(shape)
            fpn.build(level)
        self.fpn_bottleneck.build(level[:-1] + (self.num_levels * self.channels,))
        self.build_cls_seg(input_shapes[0])

    def psp_forward(self, x, training=None):
        """The pyramid pooling module and its bottleneck on the last stage."""
        size = spatial_size(x)
        outs = [x]
        for scale, conv in zip(self.pool_scales, self.psp_modules):
            pooled = conv(adaptive_avg_pool(x, scale), training=training)
            outs.append(resize_bilinear(pooled, size))
        return self.bottleneck(ops.concatenate(outs, axis=-1), training=training)

    def call(self, inputs, training=None):
        laterals = [conv(x, training=training) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.psp_forward(inputs[-1], training=training))
        for i in range(self.num_levels - 1, 0, -1):
            size = spatial_size(laterals[i - 1])
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], size)
        outs = [conv(x, training=training) for conv, x in zip(self.fpn_convs, laterals)]
        outs.append(laterals[-1])
        size = spatial_size(outs[0])
        outs = [outs[0]] + [resize_bilinear(x, size) for x in outs[1:]]
        output = self.fpn_bottleneck(ops.concatenate(outs, axis=-1), training=training)
        return self.cls_seg(output, training=training)

    def compute_output_shape(self, input_shapes):
        return self.logits_shape(input_shapes[0])

    def get_config(self):
        config = super().get_config()
        config.update(pool_scales=self.pool_scales, num_levels=self.num_levels)
        return config
