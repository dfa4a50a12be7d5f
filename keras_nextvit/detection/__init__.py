"""Next-ViT + Mask R-CNN (mmdetection 2.23's, as the published COCO
checkpoints compute it), one module per part:

* :mod:`.anchors` -- mmdet's ``AnchorGenerator`` (RPN anchors of P2..P6);
* :mod:`.box_coder` -- ``DeltaXYWHBBoxCoder`` decoding and encoding;
* :mod:`.nms` -- mmcv's ``nms`` / ``batched_nms``;
* :mod:`.rpn_head` -- ``RPNHead`` and its proposals;
* :mod:`.roi_align` -- ``RoIAlign`` and the RoI level mapping;
* :mod:`.bbox_head` -- ``Shared2FCBBoxHead`` and ``multiclass_nms``;
* :mod:`.mask_head` -- ``FCNMaskHead`` and mask pasting;
* :mod:`.model` -- :func:`NextViTMaskRCNN` (backbone, FPN neck, heads);
* :mod:`.inference` -- the test-time pipeline, stage by stage, and
  :func:`detect` (mmdet's test pipeline in front);
* :mod:`.coco` -- COCO's class names and category ids.

Training: :mod:`.dataset` (COCO-format instances, as
``CocoDataset`` reads them), :mod:`.pipeline` (the training pipeline and
``collate``), :mod:`.assigner` (``MaxIoUAssigner``, ``RandomSampler``),
:mod:`.targets` (RPN, box and mask targets), :mod:`.losses` (the five
losses), :mod:`.training` (the losses of a batch end to end, the upstream
recipes, ``frozen_stages`` / ``norm_eval``) and :mod:`.trainer` (the
detection task on the training core, ``tools/train_detection.py``).

The reference these follow is ``tests/data/detection/README.md``.
"""

from .anchors import base_anchors, grid_anchors, level_anchors
from .bbox_head import Shared2FCBBoxHead, multiclass_nms
from .box_coder import decode
from . import coco
from .inference import detect, prepare, reference_outputs
from .mask_head import FCNMaskHead, paste_masks
from .model import MaskRCNN, NextViTMaskRCNN
from .nms import batched_nms, nms
from .roi_align import map_roi_levels, multilevel_roi_align, roi_align
from .rpn_head import RPNHead, rpn_proposals

__all__ = [
    "FCNMaskHead", "MaskRCNN", "coco", "detect", "prepare", "NextViTMaskRCNN", "RPNHead", "Shared2FCBBoxHead", "base_anchors",
    "batched_nms", "decode", "grid_anchors", "level_anchors", "map_roi_levels", "multiclass_nms",
    "multilevel_roi_align", "nms", "paste_masks", "reference_outputs", "roi_align", "rpn_proposals",
]
