"""Semantic segmentation with Next-ViT: Semantic FPN and UperNet.

The upstream repository's ADE20K segmenters (mmsegmentation 0.x), computing
what the published checkpoints compute::

    model = keras_nextvit.NextViTSegmenter("small", "fpn", weights="fpn_80k_nextvit_small.pth")
    classes = keras_nextvit.segment(model, image)      # class map at the image's size
"""

# data and training (tf.data pipelines, the trainer) load TensorFlow: import
# them by name (``from keras_nextvit.segmentation import training``) so that
# ``import keras_nextvit`` stays free of it on the JAX and PyTorch backends.
from . import ade20k, metrics
from .ade20k import CLASSES, PALETTE
from .fcn_head import FCNHead
from .fpn import FPN
from .fpn_head import FPNHead
from .model import HEADS, PUBLISHED, NextViTSegmenter, segmenter_config, segmenter_features
from .inference import read_image, segment
from .metrics import MeanIoU
from .modules import ConvModule, ResizeLike
from .uper_head import UPerHead

__all__ = [
    "CLASSES",
    "MeanIoU",
    "PALETTE",
    "read_image",
    "segment",
    "ConvModule",
    "FCNHead",
    "FPN",
    "FPNHead",
    "HEADS",
    "NextViTSegmenter",
    "PUBLISHED",
    "ResizeLike",
    "UPerHead",
    "segmenter_config",
    "segmenter_features",
]
