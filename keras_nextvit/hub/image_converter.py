"""``NextViTImageConverter``: the presets' evaluation transform as a keras-hub
image converter."""

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter

from .. import presets
from .backbone import NextViTBackbone


@keras.saving.register_keras_serializable(package="keras_nextvit")
class NextViTImageConverter(ImageConverter):
    """Resize, center-crop and normalise images as the ImageNet presets were
    evaluated (``keras_nextvit.load_image`` + ``preprocess_input``).

    The shorter side is resized to ``int(image_size / crop_pct)`` (aspect
    kept), the central ``image_size`` square is cut out, and pixels in
    [0, 255] are normalised with ``mean`` and ``std`` (given in [0, 1]).
    The resize is Keras' (``interpolation``, antialiased), so the pixels
    differ slightly from ``load_image``'s PIL resize; images already at
    ``image_size`` with ``crop_pct=1`` pass through unresized.

    Args:
        image_size: the crop, an int or ``(height, width)``; ``None`` skips
            resizing and cropping.
        crop_pct: crop size over resize size (0.95 for the 224 presets).
        mean, std: per-channel normalisation, RGB, in [0, 1].
        interpolation: ``"bicubic"`` (the presets') or ``"bilinear"``.

    Example:

    >>> import numpy as np
    >>> converter = NextViTImageConverter(image_size=224, crop_pct=0.95)
    >>> tuple(converter(np.zeros((2, 300, 400, 3), "uint8")).shape)
    (2, 224, 224, 3)
    """

    backbone_cls = NextViTBackbone

    def __init__(
        self,
        image_size=224,
        crop_pct=0.95,
        mean=presets.IMAGENET_MEAN,
        std=presets.IMAGENET_STD,
        interpolation="bicubic",
        **kwargs,
    ):
        for name in ("scale", "offset", "crop_to_aspect_ratio", "pad_to_aspect_ratio", "antialias"):
            kwargs.pop(name, None)  # fixed by mean, std and the crop (older configs carry them)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}.")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB); got mean={mean!r}, std={std!r}.")
        scale = [float(1.0 / (255.0 * s)) for s in std]
        offset = [float(-m / s) for m, s in zip(mean, std)]
        super().__init__(
            image_size=None, scale=scale, offset=offset, crop_to_aspect_ratio=False,
            interpolation=interpolation, antialias=True, **kwargs,
        )
        self.crop_size = None if image_size is None else tuple(int(v) for v in image_size)
        self.crop_pct = float(crop_pct)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def _resize_and_crop(self, images):
        crop_h, crop_w = self.crop_size
        height, width = ops.shape(images)[-3], ops.shape(images)[-2]
        target = int(min(crop_h, crop_w) / self.crop_pct)
        if isinstance(height, int) and isinstance(width, int):
            shorter = min(height, width)
            new_h = target if height == shorter else int(round(target * height / width))
            new_w = target if width == shorter else int(round(target * width / height))
            if (new_h, new_w) != (height, width):
                images = ops.image.resize(
                    images, (new_h, new_w), interpolation=self.interpolation, antialias=True
                )
            top, left = int(round((new_h - crop_h) / 2)), int(round((new_w - crop_w) / 2))
        else:  # symbolic sizes (a tf.data pipeline): the same arithmetic in tensors
            import tensorflow as tf

            height, width = tf.cast(height, "float32"), tf.cast(width, "float32")
            ratio = target / tf.minimum(height, width)
            new_h = tf.cast(tf.round(height * ratio), "int32")
            new_w = tf.cast(tf.round(width * ratio), "int32")
            images = tf.image.resize(
                tf.cast(images, "float32"), tf.stack([new_h, new_w]), method=self.interpolation,
                antialias=True,
            )
            top = tf.cast(tf.round(tf.cast(new_h - crop_h, "float32") / 2), "int32")
            left = tf.cast(tf.round(tf.cast(new_w - crop_w, "float32") / 2), "int32")
        return images[..., top : top + crop_h, left : left + crop_w, :]

    def _call_python(self, inputs):
        if isinstance(inputs, dict):
            raise ValueError(
                "NextViTImageConverter takes images (an array or a list of arrays), not a dict "
                f"(got keys {sorted(inputs)})."
            )
        if isinstance(inputs, (list, tuple)):
            shapes = {np.shape(x) for x in inputs}
            if len(shapes) > 1:  # differently sized images: one at a time
                return ops.stack([self._call_python(x) for x in inputs])
            inputs = np.stack([np.asarray(x) for x in inputs])
        if isinstance(inputs, np.ndarray):
            inputs = ops.convert_to_tensor(inputs)
        if inputs.shape[-1] != 3:
            raise ValueError(
                f"NextViTImageConverter expects channels-last RGB images (..., 3); got shape "
                f"{tuple(inputs.shape)}."
            )
        x = ops.cast(inputs, self.compute_dtype)
        if self.crop_size is not None:
            x = self._resize_and_crop(x)
        scale = self._expand_non_channel_dims(self.scale, x)
        offset = self._expand_non_channel_dims(self.offset, x)
        x, scale = self._convert_types(x, scale, x.dtype)
        x, offset = self._convert_types(x, offset, x.dtype)
        return x * scale + offset

    @property
    def image_size(self):
        return getattr(self, "crop_size", None)

    @image_size.setter
    def image_size(self, value):
        if not hasattr(self, "crop_size"):  # the parent's __init__ sets None first
            return
        self.crop_size = None if value is None else (
            (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
        )

    def get_config(self):
        config = super().get_config()
        for name in ("scale", "offset", "crop_to_aspect_ratio", "pad_to_aspect_ratio", "antialias"):
            config.pop(name, None)
        config.update(
            image_size=None if self.crop_size is None else list(self.crop_size),
            crop_pct=self.crop_pct,
            mean=list(self.mean),
            std=list(self.std),
        )
        return config
