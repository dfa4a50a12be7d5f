"""What the heads learn from, for the sampled candidates (mmdet 2.23's
``get_targets``), given an assignment (:mod:`.assigner`).

* **Box targets**: a positive candidate's deltas onto its ground-truth box
  (:func:`.box_coder.encode`; the RPN with stds 1, the box head with
  ``(0.1, 0.1, 0.2, 0.2)``), zeros for the others.
* **Mask targets** (``mask_target``): each positive RoI, clipped to the
  image, crops its ground-truth mask with RoIAlign (mmcv's, ``aligned=True``,
  adaptive sampling, 1x scale) to ``28 x 28``, and the result is binarised
  at 0.5 -- mmdet's ``BitmapMasks.crop_and_resize``.
"""

import numpy as np
from keras import ops

from .box_coder import encode
from .roi_align import roi_align

MASK_SIZE = 28


def box_targets(boxes, gt_boxes, gt_inds, stds):
    """``(N, 4)`` regression targets of ``boxes`` (``(N, 4)``) assigned by
    ``gt_inds`` (``(N,)``, ``k > 0``: the ``k - 1``-th of ``gt_boxes``)."""
    gt_inds = ops.convert_to_tensor(gt_inds, "int32")
    matched = ops.take(ops.convert_to_tensor(gt_boxes, "float32"), ops.maximum(gt_inds - 1, 0), axis=0)
    deltas = encode(boxes, matched, stds)
    return ops.where((gt_inds > 0)[:, None], deltas, 0.0)


def mask_targets(gt_masks, boxes, gt_index, mask_size=MASK_SIZE):
    """``(P, mask_size, mask_size)`` float32 0/1 targets of positive RoIs.

    Args:
        gt_masks: ``(G, H, W)`` instance masks of the image (as resized and
            padded for training).
        boxes: ``(P, 4)`` positive RoIs in the same pixels.
        gt_index: ``(P,)`` 0-based index of each RoI's ground-truth mask.
    """
    gt_masks = np.asarray(gt_masks, np.float32)
    boxes = np.array(ops.convert_to_numpy(boxes), np.float32)
    if boxes.shape[0] == 0:
        return np.zeros((0, mask_size, mask_size), np.float32)
    height, width = gt_masks.shape[1:]
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    index = np.asarray(ops.convert_to_numpy(gt_index), np.float32)[:, None]
    # the RoI's batch index picks its own mask
    pooled = roi_align(gt_masks[..., None], np.concatenate([index, boxes], 1), mask_size, 1.0)
    return (ops.convert_to_numpy(pooled)[..., 0] >= 0.5).astype(np.float32)


__all__ = ["MASK_SIZE", "box_targets", "mask_targets"]
