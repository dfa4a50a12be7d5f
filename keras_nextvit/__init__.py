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



def _keras_hub_installed():
    import importlib.util

    try:
        return importlib.util.find_spec("keras_hub") is not None
    except ValueError:  # sys.modules["keras_hub"] is None: import blocked
        return False


if _keras_hub_installed():
    # Registers NextViTBackbone & co. with Keras and keras-hub, so that
    # keras_hub.models.ImageClassifier.from_preset(folder) finds them.
    from . import hub  # noqa: F401
