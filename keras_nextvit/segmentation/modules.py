"""mmsegmentation's building blocks: ``ConvModule`` and the decode-head base.

Both keep mmseg's attribute names (``conv``, ``bn``, ``conv_seg``), which is
what lets the checkpoint loader map ``decode_head.bottleneck.bn.weight`` onto
them by name, exactly as for the backbone's blocks.
"""

import keras
from keras import ops

from ..layers import _PACKAGE, _Composite, _pointwise
from .ops import resize_bilinear, spatial_size


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvModule(_Composite):
    """Conv -> BatchNorm -> ReLU, as mmseg's ``ConvModule``.

    ``kernel_size`` 1 or 3 (padding ``kernel_size // 2`` on every side,
    stride 1: Keras' ``"same"``). ``norm=False, activation=False`` is mmseg's
    plain convolution with a bias (the FPN neck's). The conv has no bias when
    a norm follows, as in mmseg; ``deploy=True`` is the BatchNorm-merged form
    (a conv with bias). 1x1 convolutions are ``Dense`` layers on the channel
    axis, as in the backbone.
    """

    TORCH_CHILDREN = ("conv", "bn")

    def __init__(self, filters, kernel_size=3, norm=True, activation=True, **kwargs):
        super().__init__(**kwargs)
        if kernel_size not in (1, 3):
            raise ValueError(f"ConvModule kernel_size must be 1 or 3, got {kernel_size}.")
        self.filters = filters
        self.kernel_size = kernel_size
        self.norm = norm
        self.activation = activation
        use_bias = self.deploy or not norm
        if kernel_size == 1:
            self.conv = _pointwise(filters, use_bias, "conv")
        else:
            self.conv = keras.layers.Conv2D(
                filters, kernel_size, padding="same", use_bias=use_bias, name="conv"
            )
        self.bn = self._norm("bn") if norm else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build(self.compute_output_shape(input_shape))

    def call(self, x, training=None):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return ops.relu(x) if self.activation else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            norm=self.norm,
            activation=self.activation,
        )
        return config


class DecodeHead(_Composite):
    """What every mmseg decode head shares: ``cls_seg`` = ``Dropout2d`` then
    the 1x1 ``conv_seg`` classifier. ``conv_seg`` is registered first, as in
    mmseg's state dicts."""

    def __init__(self, num_classes, channels, dropout_rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.dropout_rate = dropout_rate
        self.conv_seg = _pointwise(num_classes, True, "conv_seg")
        self.dropout = keras.layers.SpatialDropout2D(dropout_rate) if dropout_rate else None

    def torch_children(self):
        yield "conv_seg", self.conv_seg
        yield from self.head_children()

    def head_children(self):
        """``(mmseg attribute path, layer)`` of the head's own modules."""
        return ()

    def cls_seg(self, x, training=None):
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        return self.conv_seg(x)

    def build_cls_seg(self, feature_shape):
        self.conv_seg.build(tuple(feature_shape[:-1]) + (self.channels,))

    def logits_shape(self, feature_shape):
        return tuple(feature_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            dropout_rate=self.dropout_rate,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResizeLike(keras.layers.Layer):
    """Bilinear resize (``align_corners=False``) of ``x`` to the height and
    width of ``reference``: mmseg's last step of whole-image inference,
    stride-4 logits -> input resolution."""

    def call(self, x, reference):
        return resize_bilinear(x, spatial_size(reference))

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[-1])
