"""``NextViTBackbone``: Next-ViT as a keras-hub ``FeaturePyramidBackbone``."""

import keras
from keras import ops
from keras_hub.models import FeaturePyramidBackbone

from .. import presets
from ..layers import called_dtype
from ..model import build_trunk, check_input_shape, stage_plan


def standardize_data_format(data_format):
    """``data_format``, or Keras' ``image_data_format()`` for ``None``."""
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}."
        )
    return data_format


@keras.saving.register_keras_serializable(package="keras_nextvit")
class Transpose(keras.layers.Layer):
    """``ops.transpose(x, (0,) + axes)``: the batch axis stays first.

    Keras' ``Permute`` in this role: unlike it, the output spec comes from
    any array's shape and dtype (a Functional's ``compute_output_spec``
    hands its first layer the caller's array, which has no ``sparse``)."""

    def __init__(self, axes, **kwargs):
        super().__init__(**kwargs)
        self.axes = tuple(int(a) for a in axes)

    def call(self, x):
        return ops.transpose(x, (0,) + self.axes)

    def compute_output_spec(self, x):
        return keras.KerasTensor(self.compute_output_shape(tuple(x.shape)), dtype=called_dtype(self, x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(input_shape[a] for a in self.axes)

    def get_config(self):
        config = super().get_config()
        config.update(axes=list(self.axes))
        return config


@keras.saving.register_keras_serializable(package="keras_nextvit")
class NextViTBackbone(FeaturePyramidBackbone):
    """Next-ViT's stem and four stages, ending in the final BatchNorm.

    Built by the same function as ``keras_nextvit.NextViT`` (same layers,
    same names), so weights move between the two layer by layer. The output
    is the normalised stride-32 map (what ``NextViT(include_top=False)``
    returns); ``pyramid_outputs`` are the four stage outputs ``P2``-``P5``
    (strides 4, 8, 16, 32), the maps ``keras_nextvit.feature_extractor``
    returns.

    Args:
        depths: blocks per stage, e.g. ``(3, 4, 10, 3)`` for Next-ViT-S.
        stem_channels, strides, sr_ratios, head_dim, mix_block_ratio: as in
            ``keras_nextvit.NextViT``.
        drop_path_rate, dropout_rate, attention_dropout_rate: regularisation
            for training.
        image_shape: ``(height, width, 3)`` (``(3, height, width)`` for
            ``"channels_first"``); ``None`` sizes take any image of at least
            32 pixels.
        data_format: ``"channels_last"`` or ``"channels_first"``: how the
            images and the output maps (``pyramid_outputs`` too) are laid
            out; ``None`` takes ``keras.config.image_data_format()``. The
            network itself runs channels-last: a channels-first backbone
            transposes its input to it and its outputs back (layers
            ``to_channels_last`` and ``*_channels_first``), with the same
            weights and numbers.
        dtype: a dtype policy for the layers (e.g. ``"mixed_bfloat16"``).

    Example:

    >>> import numpy as np
    >>> from keras_nextvit.hub import NextViTBackbone
    >>> backbone = NextViTBackbone(depths=(3, 4, 10, 3))
    >>> sorted(backbone.pyramid_outputs)
    ['P2', 'P3', 'P4', 'P5']
    >>> tuple(backbone(np.zeros((1, 64, 64, 3))).shape)
    (1, 2, 2, 1024)
    """

    def __init__(
        self,
        depths,
        stem_channels=presets.STEM_CHANNELS,
        strides=presets.STAGE_STRIDES,
        sr_ratios=presets.SR_RATIOS,
        head_dim=presets.HEAD_DIM,
        mix_block_ratio=presets.MIX_BLOCK_RATIO,
        drop_path_rate=0.1,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        image_shape=(None, None, 3),
        data_format=None,
        dtype=None,
        **kwargs,
    ):
        data_format = standardize_data_format(data_format)
        channels_first = data_format == "channels_first"
        image_shape = tuple(image_shape)
        if channels_first:
            if len(image_shape) != 3:
                raise ValueError(
                    "image_shape must be (channels, height, width) for channels_first, got "
                    f"{image_shape}."
                )
            check_input_shape(image_shape[1:] + image_shape[:1])
        else:
            check_input_shape(image_shape)
        policy = keras.config.dtype_policy()
        if dtype is not None:  # every layer takes the global policy at creation
            keras.config.set_dtype_policy(dtype)
        try:
            inputs = keras.Input(shape=image_shape, name="images")
            x = inputs
            if channels_first:
                x = Transpose((2, 3, 1), name="to_channels_last")(x)
            stages, x = build_trunk(
                x,
                stage_plan(depths),
                stem_channels=tuple(stem_channels),
                strides=tuple(strides),
                sr_ratios=tuple(sr_ratios),
                head_dim=head_dim,
                mix_block_ratio=mix_block_ratio,
                drop_path_rate=drop_path_rate,
                dropout_rate=dropout_rate,
                attention_dropout_rate=attention_dropout_rate,
            )
            if channels_first:
                stages = [
                    Transpose((3, 1, 2), name=f"P{level}_channels_first")(stage)
                    for level, stage in zip(range(2, 6), stages)
                ]
                x = Transpose((3, 1, 2), name="norm_channels_first")(x)
        finally:
            keras.config.set_dtype_policy(policy)
        super().__init__(inputs=inputs, outputs=x, dtype=dtype, **kwargs)

        self.depths = tuple(depths)
        self.stem_channels = tuple(stem_channels)
        self.strides = tuple(strides)
        self.sr_ratios = tuple(sr_ratios)
        self.head_dim = head_dim
        self.mix_block_ratio = mix_block_ratio
        self.drop_path_rate = drop_path_rate
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.image_shape = image_shape
        self.data_format = data_format
        self.pyramid_outputs = {f"P{level}": out for level, out in zip(range(2, 6), stages)}

    def get_config(self):
        config = super().get_config()
        config.update(
            depths=list(self.depths),
            stem_channels=list(self.stem_channels),
            strides=list(self.strides),
            sr_ratios=list(self.sr_ratios),
            head_dim=self.head_dim,
            mix_block_ratio=self.mix_block_ratio,
            drop_path_rate=self.drop_path_rate,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            image_shape=list(self.image_shape),
            data_format=self.data_format,
        )
        return config
