"""Next-ViT (Li et al., 2022) for Keras 3: TensorFlow, JAX and PyTorch backends."""

import os
import sys

if "tensorflow" not in sys.modules:
    # Quiet TensorFlow's C++ start-up logging unless the user chose a level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

from .exporters import export
from .finetune import freeze_stages, replace_classifier, unfreeze
from .layers import MHCA, MLP, NCB, NTB, ConvBNReLU, DropPath, EfficientMHSA, PatchEmbed
from .model import NextViT, NextViTBase, NextViTLarge, NextViTSmall, feature_extractor, stage_plan
from .preprocessing import decode_predictions, load_image, preprocess_input
from .presets import PRESETS, VARIANTS
from .reparam import merge_batchnorm
from .segmentation import NextViTSegmenter, segment
from .weights import (
    CheckpointError,
    get_preset,
    load_backbone_weights,
    load_torch_weights,
    torch_state_dict_spec,
)

__all__ = [
    "CheckpointError",
    "ConvBNReLU",
    "DropPath",
    "EfficientMHSA",
    "MHCA",
    "MLP",
    "NCB",
    "NTB",
    "NextViT",
    "NextViTBase",
    "NextViTLarge",
    "NextViTSegmenter",
    "NextViTSmall",
    "PRESETS",
    "PatchEmbed",
    "VARIANTS",
    "feature_extractor",
    "freeze_stages",
    "decode_predictions",
    "export",
    "get_preset",
    "load_image",
    "preprocess_input",
    "load_backbone_weights",
    "load_torch_weights",
    "merge_batchnorm",
    "replace_classifier",
    "segment",
    "stage_plan",
    "torch_state_dict_spec",
    "unfreeze",
]


def _register_with_keras_hub():
    """Import :mod:`keras_nextvit.hub` (which registers NextViTBackbone & co.
    with Keras, so that ``keras_hub.models.ImageClassifier.from_preset(folder)``
    finds them) as soon as keras-hub is imported, whichever comes first.

    keras-hub imports TensorFlow for its tf.data preprocessing, so importing
    it eagerly here would load TensorFlow on every backend for users who never
    touch keras-hub. Instead a one-shot import hook waits for ``keras_hub``.
    """
    import importlib.abc
    import importlib.util

    def register():
        from . import hub  # noqa: F401

    if sys.modules.get("keras_hub") is not None:
        register()
        return

    class _AfterKerasHub(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname != "keras_hub":
                return None
            sys.meta_path.remove(self)  # one shot; also stops the recursion below
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                register()

            spec.loader.exec_module = exec_module
            return spec

    if not any(type(finder).__name__ == "_AfterKerasHub" for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasHub())


def __getattr__(name):
    if name == "hub":  # keras_nextvit.hub without importing keras-hub first
        import importlib

        return importlib.import_module(".hub", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_register_with_keras_hub()
