"""``NextViTImageClassifierPreprocessor``: keras-hub's image classifier
preprocessor with the Next-ViT image converter."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from .backbone import NextViTBackbone
from .image_converter import NextViTImageConverter


@keras.saving.register_keras_serializable(package="keras_nextvit")
class NextViTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Turns images (and labels) into the classifier's inputs with a
    :class:`NextViTImageConverter`.

    Example:

    >>> import numpy as np
    >>> preprocessor = NextViTImageClassifierPreprocessor(NextViTImageConverter(image_size=64))
    >>> tuple(preprocessor(np.zeros((1, 80, 80, 3), "uint8")).shape)
    (1, 64, 64, 3)
    """

    backbone_cls = NextViTBackbone
    image_converter_cls = NextViTImageConverter
