"""``NextViTBackbone``: Next-ViT as a keras-hub ``FeaturePyramidBackbone``."""

import keras
from keras_hub.models import FeaturePyramidBackbone

from .. import presets
from ..model import build_trunk, check_input_shape, stage_plan


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
        image_shape: ``(height, width, 3)``; ``None`` sizes take any image of
            at least 32 pixels.
        data_format: only ``"channels_last"`` (or ``None``).
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
        if data_format not in (None, "channels_last"):
            raise ValueError(
                f"NextViTBackbone is channels-last only; got data_format={data_format!r}."
            )
        image_shape = tuple(image_shape)
        check_input_shape(image_shape)
        policy = keras.config.dtype_policy()
        if dtype is not None:  # every layer takes the global policy at creation
            keras.config.set_dtype_policy(dtype)
        try:
            inputs = keras.Input(shape=image_shape, name="images")
            stages, x = build_trunk(
                inputs,
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
        self.data_format = "channels_last"
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
        )
        return config
