"""Next-ViT + Mask R-CNN (mmdetection 2.23's, as the published COCO checkpoints
compute it): the first pieces.

* :mod:`.anchors` -- mmdet's ``AnchorGenerator`` (RPN anchors of P2..P6).
* :mod:`.box_coder` -- ``DeltaXYWHBBoxCoder`` decoding.

The reference these follow is ``tests/data/detection/README.md``.
"""

from .anchors import base_anchors, grid_anchors, level_anchors
from .box_coder import decode

__all__ = ["base_anchors", "decode", "grid_anchors", "level_anchors"]
