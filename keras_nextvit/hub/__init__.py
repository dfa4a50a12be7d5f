"""Next-ViT in keras-hub's task API (needs the ``keras-hub`` extra).

Once both ``keras_nextvit`` and ``keras_hub`` are imported (in either order),
this module is imported too, which registers the classes below with Keras and
keras-hub: keras-hub's
``ImageClassifier.from_preset(folder)`` then finds them for a preset folder
written by :func:`save_preset`, and ``NextViTBackbone`` can be the
``image_encoder`` of keras-hub's DeepLabV3 and RetinaNet backbones.

    >>> import keras_hub, keras_nextvit
    >>> keras_nextvit.hub.save_preset("nextvit_small.bd_in1k", "nextvit_small_hub")
    >>> classifier = keras_hub.models.ImageClassifier.from_preset("nextvit_small_hub")
"""

try:
    import keras_hub  # noqa: F401
except ImportError as error:
    raise ImportError(
        'keras_nextvit.hub needs keras-hub: pip install "keras-nextvit[keras-hub]" '
        f"(importing keras_hub failed: {error})"
    ) from None

from .backbone import NextViTBackbone
from .classifier import NextViTImageClassifier
from .image_converter import NextViTImageConverter
from .preprocessor import NextViTImageClassifierPreprocessor
from .presets import backbone_from_model, save_preset

__all__ = [
    "NextViTBackbone",
    "NextViTImageClassifier",
    "NextViTImageClassifierPreprocessor",
    "NextViTImageConverter",
    "backbone_from_model",
    "save_preset",
]
