"""The Feature Pyramid Network neck of Semantic FPN (mmseg's ``FPN``).

::

    lateral_i = lateral_convs[i](x_i)                      # 1x1 conv + bias
    for i = 3, 2, 1:  lateral_{i-1} += nearest(lateral_i, size of lateral_{i-1})
    out_i     = fpn_convs[i](lateral_i)                    # 3x3 conv + bias

With ``num_outs`` above the number of inputs (mmdet's Mask R-CNN neck:
``num_outs=5``, ``add_extra_convs=False``), each extra level is
``max_pool2d(previous, kernel_size=1, stride=2)``, i.e. every second pixel
of the last output (``ceil(h / 2) x ceil(w / 2)``), without parameters.

No norm and no activation anywhere; the top-down path uses PyTorch's
``nearest`` rule (``floor(dst * in / out)``), which matters whenever a level
is not exactly twice the size of the next one (odd input sizes).
"""

import keras
from keras import ops

from ..layers import _PACKAGE, _Composite
from .modules import ConvModule
from .ops import resize_nearest, spatial_size


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FPN(_Composite):
    """``FPN(in_channels=[96, 256, 512, 1024], out_channels=256, num_outs)``:
    four maps in, ``num_outs`` (default four) ``out_channels`` maps out, the
    first four at the inputs' strides."""

    def __init__(self, out_channels=256, num_levels=4, num_outs=None, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.num_levels = num_levels
        self.num_outs = num_levels if num_outs is None else int(num_outs)
        if self.num_outs < num_levels:
            raise ValueError(f"FPN num_outs ({num_outs}) must be at least num_levels ({num_levels}).")

        def conv(kernel_size, name):  # a plain conv with bias: no norm, no activation
            return ConvModule(
                out_channels, kernel_size, norm=False, activation=False, deploy=self.deploy, name=name
            )

        self.lateral_convs = [conv(1, f"lateral_convs_{i}") for i in range(num_levels)]
        self.fpn_convs = [conv(3, f"fpn_convs_{i}") for i in range(num_levels)]

    def torch_children(self):
        for i, conv in enumerate(self.lateral_convs):
            yield f"lateral_convs.{i}", conv
        for i, conv in enumerate(self.fpn_convs):
            yield f"fpn_convs.{i}", conv

    def build(self, input_shapes):
        for shape, lateral, fpn in zip(input_shapes, self.lateral_convs, self.fpn_convs):
            lateral.build(shape)
            fpn.build(lateral.compute_output_shape(shape))

    def call(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(self.num_levels - 1, 0, -1):
            size = spatial_size(laterals[i - 1])
            laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], size)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for _ in range(self.num_outs - self.num_levels):
            outs.append(ops.max_pool(outs[-1], pool_size=1, strides=2, padding="valid"))
        return outs

    def compute_output_shape(self, input_shapes):
        shapes = [tuple(shape[:-1]) + (self.out_channels,) for shape in input_shapes]
        for _ in range(self.num_outs - self.num_levels):
            n, h, w, c = shapes[-1]
            shapes.append((n, None if h is None else (h + 1) // 2, None if w is None else (w + 1) // 2, c))
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(out_channels=self.out_channels, num_levels=self.num_levels)
        if self.num_outs != self.num_levels:
            config["num_outs"] = self.num_outs
        return config
