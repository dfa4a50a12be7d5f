"""Next-ViT (Li et al., 2022) for Keras 3: TensorFlow, JAX and PyTorch backends."""

__version__ = "0.1.0"

from .layers import MHCA, MLP, NCB, NTB, ConvBNReLU, DropPath, EfficientMHSA, PatchEmbed
from .model import NextViT, NextViTBase, NextViTLarge, NextViTSmall, feature_extractor, stage_plan
from .presets import PRESETS, VARIANTS
from .weights import CheckpointError, get_preset, load_torch_weights, torch_state_dict_spec

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
    "NextViTSmall",
    "PRESETS",
    "PatchEmbed",
    "VARIANTS",
    "feature_extractor",
    "get_preset",
    "load_torch_weights",
    "stage_plan",
    "torch_state_dict_spec",
]
