"""``NextViTImageConverter``: the presets' evaluation transform as a keras-hub
image converter."""

import sys

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter

from .. import presets
from .backbone import NextViTBackbone, standardize_data_format

_LAYOUT_NAME = {False: "channels-last", True: "channels-first"}


def _in_tf_graph():
    """Whether TensorFlow is tracing a graph (a ``tf.data`` map, a
    ``tf.function``), on any Keras backend."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and not tf.executing_eagerly()


def _in_grain_pipeline():
    """Whether a Grain pipeline is running this (Keras tells; older Keras
    versions have no Grain support and say no)."""
    try:
        from keras.src.utils.backend_utils import in_grain_data_pipeline
    except ImportError:
        return False
    return in_grain_data_pipeline()


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
        data_format: the images' layout, in and out: ``"channels_last"``
            (``(..., height, width, 3)``) or ``"channels_first"``
            (``(..., 3, height, width)``); ``None`` takes
            ``keras.config.image_data_format()``, as
            :class:`NextViTBackbone` does.

    In a ``tf.data`` pipeline (how keras-hub tasks feed ``fit`` and
    ``predict`` from datasets) it runs in TensorFlow's ops on every Keras
    backend; in a Grain pipeline it returns NumPy arrays.

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
        data_format=None,
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
            interpolation=interpolation, antialias=True,
            data_format=standardize_data_format(data_format), **kwargs,
        )
        self.crop_size = None if image_size is None else tuple(int(v) for v in image_size)
        self.crop_pct = float(crop_pct)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def _resize_and_crop(self, images, graph):
        """Resize the shorter side to ``crop / crop_pct`` and cut out the
        central crop (channels-last ``images``). ``graph``: in a TensorFlow
        graph (a ``tf.data`` pipeline, whatever the Keras backend), where the
        work is done by TensorFlow's own ops."""
        crop_h, crop_w = self.crop_size
        height, width = images.shape[-3], images.shape[-2]
        target = int(min(crop_h, crop_w) / self.crop_pct)
        if height is not None and width is not None:
            height, width = int(height), int(width)
            shorter = min(height, width)
            new_h = target if height == shorter else int(round(target * height / width))
            new_w = target if width == shorter else int(round(target * width / height))
            if (new_h, new_w) != (height, width):
                if graph:
                    images = self._tf_resize(images, (new_h, new_w))
                else:
                    images = ops.image.resize(
                        images, (new_h, new_w), interpolation=self.interpolation,
                        antialias=True, data_format="channels_last",
                    )
            top, left = int(round((new_h - crop_h) / 2)), int(round((new_w - crop_w) / 2))
        else:  # sizes known only when the graph runs: the same arithmetic in tensors
            import tensorflow as tf

            shape = tf.shape(images)
            height, width = tf.cast(shape[-3], "float32"), tf.cast(shape[-2], "float32")
            ratio = target / tf.minimum(height, width)
            new_h = tf.cast(tf.round(height * ratio), "int32")
            new_w = tf.cast(tf.round(width * ratio), "int32")
            images = self._tf_resize(images, tf.stack([new_h, new_w]))
            top = tf.cast(tf.round(tf.cast(new_h - crop_h, "float32") / 2), "int32")
            left = tf.cast(tf.round(tf.cast(new_w - crop_w, "float32") / 2), "int32")
        return images[..., top : top + crop_h, left : left + crop_w, :]

    def _tf_resize(self, images, size):
        import tensorflow as tf

        resized = tf.image.resize(
            images, size, method=self.interpolation, antialias=True
        )  # what Keras' ops.image.resize calls on the TensorFlow backend
        return tf.cast(resized, images.dtype)

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
        # keras-hub runs preprocessing inside tf.data pipelines on every
        # backend: there the images are symbolic TensorFlow tensors, which
        # only TensorFlow's ops take.
        graph = _in_tf_graph()
        if graph:
            import tensorflow as tf

            x = tf.convert_to_tensor(inputs)
            transpose, cast = tf.transpose, tf.cast
        else:
            x = ops.convert_to_tensor(inputs) if isinstance(inputs, np.ndarray) else inputs
            transpose, cast = ops.transpose, ops.cast
        channels_first = self.data_format == "channels_first"
        rank = len(x.shape)
        channels = x.shape[-3] if channels_first and rank >= 3 else x.shape[-1]
        if rank not in (3, 4) or (channels is not None and channels != 3):
            layout = "(..., 3, height, width)" if channels_first else "(..., 3)"
            raise ValueError(
                f"NextViTImageConverter expects {_LAYOUT_NAME[channels_first]} RGB images "
                f"{layout}; got shape {tuple(x.shape)}."
            )
        if channels_first:  # the work is done channels-last
            x = transpose(x, (0, 2, 3, 1) if rank == 4 else (1, 2, 0))
        x = cast(x, self.compute_dtype)
        if self.crop_size is not None:
            x = self._resize_and_crop(x, graph)
        x, scale = self._convert_types(x, np.asarray(self.scale, "float32"), x.dtype)
        x, offset = self._convert_types(x, np.asarray(self.offset, "float32"), x.dtype)
        x = x * scale + offset  # (3,) on the channel axis
        if channels_first:
            x = transpose(x, (0, 3, 1, 2) if rank == 4 else (2, 0, 1))
        if _in_grain_pipeline():  # Grain pickles its elements: NumPy, not backend tensors
            return ops.convert_to_numpy(x)
        return x

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
            data_format=self.data_format,
        )
        return config
