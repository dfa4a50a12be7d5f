"""``NextViTImageClassifier``: keras-hub's ``ImageClassifier`` on a Next-ViT."""

import keras
from keras_hub.models import ImageClassifier

from .backbone import NextViTBackbone
from .preprocessor import NextViTImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="keras_nextvit")
class NextViTImageClassifier(ImageClassifier):
    """Next-ViT's classification head on a :class:`NextViTBackbone`.

    The paper's head is the backbone's final BatchNorm, a global average
    pool and one linear layer: keras-hub's ``ImageClassifier`` with
    ``pooling="avg"`` (the default) on a backbone that ends in that
    BatchNorm. The linear layer is ``predictions`` (``head.fc`` of the
    reference).

    Example:

    >>> import numpy as np
    >>> from keras_nextvit.hub import NextViTBackbone, NextViTImageClassifier
    >>> classifier = NextViTImageClassifier(NextViTBackbone(depths=(1, 1, 1, 1)), num_classes=10)
    >>> tuple(classifier.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape)
    (1, 10)
    """

    backbone_cls = NextViTBackbone
    preprocessor_cls = NextViTImageClassifierPreprocessor
