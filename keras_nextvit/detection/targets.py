"""What the heads learn from, for the sampled candidates (mmdet 2.23's
``get_targets``), given an assignment (:mod:`.assigner`); and the two
heads' targets end to end: :func:`rpn_targets` (anchors: assign, sample,
deltas) and :func:`roi_targets` (proposals and the ground truth added:
assign, sample, labels, deltas).

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

from . import assigner
from .anchors import level_anchors, valid_flags
from .box_coder import BBOX_HEAD_STDS, RPN_STDS, encode
from .roi_align import roi_align, whole_map_weights

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


def mask_targets_whole_map(gt_masks, boxes, gt_index, mask_size=MASK_SIZE):
    """:func:`mask_targets` with static shapes (traced in a training step):
    ``gt_masks`` ``(G, H, W)``, ``boxes`` ``(P, 4)``, ``gt_index`` ``(P,)``
    (padded rows may hold anything) -> ``(P, mask_size, mask_size)`` 0/1.
    The same RoIAlign, as products with whole-axis weights
    (:func:`.roi_align.whole_map_weights`) on each RoI's own mask."""
    gt_masks = ops.convert_to_tensor(gt_masks, "float32")
    height, width = (int(d) for d in gt_masks.shape[1:])
    boxes = ops.convert_to_tensor(boxes, "float32")
    x = ops.clip(boxes[:, 0::2], 0.0, float(width))
    y = ops.clip(boxes[:, 1::2], 0.0, float(height))
    boxes = ops.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    weights_y, weights_x, samples = whole_map_weights(boxes, mask_size, 1.0, height, width)
    own = ops.take(gt_masks, ops.cast(gt_index, "int32"), axis=0)  # (P, H, W)
    pooled = ops.einsum("kph,khw,kqw->kpq", weights_y, own, weights_x) / samples[:, None, None]
    return ops.cast(pooled >= 0.5, "float32")


def rpn_targets(anchors, anchor_valid, gt_boxes, gt_valid, seed=None, assign_cfg=None, sample_cfg=None):
    """One image's RPN targets: ``(positive, negative, deltas)``, each per
    anchor (``(A,)``, ``(A,)``, ``(A, 4)``).

    ``anchor_valid``: the anchors over the image itself, not over the
    padding added to batch it with larger ones (mmdet's ``valid_flags``);
    ``gt_boxes`` ``(G, 4)`` padded, ``gt_valid`` ``(G,)``; ``seed`` as
    :func:`.assigner.random_sample` takes it.
    """
    assign_cfg = assign_cfg or assigner.RPN_ASSIGNER
    sample_cfg = dict(sample_cfg or assigner.RPN_SAMPLER)
    sample_cfg.pop("add_gt_as_proposals", None)  # anchors only
    labels = ops.zeros(ops.shape(ops.convert_to_tensor(gt_valid)), "int32")
    gt_inds, _, _ = assigner.max_iou_assign(anchors, gt_boxes, labels, gt_valid, box_valid=anchor_valid,
                                            **assign_cfg)
    positive, negative = assigner.random_sample(gt_inds, seed=seed, **sample_cfg)
    deltas = box_targets(anchors, gt_boxes, ops.where(positive, gt_inds, 0), RPN_STDS)
    return positive, negative, deltas


def rpn_batch_targets(level_shapes, batch, seed=None):
    """:func:`rpn_targets` for a batch (:func:`.pipeline.collate`) whose RPN
    maps have ``level_shapes`` ``[(h, w), ...]`` (P2..P6): ``(positive,
    negative, deltas)``, ``(B, A)``, ``(B, A)``, ``(B, A, 4)``, the anchors
    of all levels in the RPN's order."""
    anchors = np.concatenate(level_anchors([tuple(int(d) for d in s) for s in level_shapes]))
    seed = assigner.seed_generator(seed)
    per_image = [
        rpn_targets(anchors, valid_flags(level_shapes, pad_shape), batch["gt_boxes"][b], batch["gt_valid"][b],
                    seed=seed)
        for b, pad_shape in enumerate(batch["pad_shapes"])
    ]
    return tuple(ops.stack(parts) for parts in zip(*per_image))


def roi_targets(proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, seed=None, assign_cfg=None,
                sample_cfg=None):
    """One image's box-head targets over its proposals with the ground
    truth added in front: ``(rois, labels, positive, negative, deltas,
    gt_inds)``, each per row (``(G + P, 4)``, ``(G + P,)``, ...);
    ``gt_inds - 1`` indexes the positives' ground truth (their masks)."""
    assign_cfg = assign_cfg or assigner.RCNN_ASSIGNER
    sample_cfg = dict(sample_cfg or assigner.RCNN_SAMPLER)
    add_gt = sample_cfg.pop("add_gt_as_proposals", True)
    gt_inds, _, labels = assigner.max_iou_assign(proposals, gt_boxes, gt_labels, gt_valid,
                                                 box_valid=proposal_valid, **assign_cfg)
    rois = ops.convert_to_tensor(proposals, "float32")
    if add_gt:
        rois, gt_inds, labels, _ = assigner.with_gt_as_proposals(rois, gt_inds, labels, gt_boxes, gt_labels,
                                                                 gt_valid)
    positive, negative = assigner.random_sample(gt_inds, seed=seed, **sample_cfg)
    deltas = box_targets(rois, gt_boxes, ops.where(positive, gt_inds, 0), BBOX_HEAD_STDS)
    return rois, labels, positive, negative, deltas, gt_inds


__all__ = ["MASK_SIZE", "box_targets", "mask_targets", "mask_targets_whole_map", "roi_targets", "rpn_batch_targets",
           "rpn_targets"]
