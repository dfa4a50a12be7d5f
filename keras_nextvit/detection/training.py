"""Mask R-CNN's training losses of a batch, end to end, as mmdet 2.23's
``TwoStageDetector.forward_train`` computes them (a first, eager form: the
RoI steps read their sizes from the data).

1. The backbone, FPN and RPN head on the batch.
2. RPN targets over every anchor (:func:`.targets.rpn_batch_targets`) and
   the RPN's losses.
3. Proposals from the RPN's outputs with training's settings
   (:data:`RPN_TRAIN_PROPOSALS`: the best 2000 per level, NMS at 0.7, 1000
   kept), without gradient.
4. Per image, box-head targets over the proposals and the ground truth
   (:func:`.targets.roi_targets`); the box head on the sampled RoIs (7x7
   RoIAlign on P2..P5) and its losses.
5. The mask head on the positive RoIs (14x14 RoIAlign) against their masks
   cropped to 28x28 (:func:`.targets.mask_targets`).
"""

import numpy as np
from keras import ops

from . import assigner, losses, targets
from .anchors import level_anchors
from .inference import BOX_ROI_SIZE, MASK_ROI_SIZE, _rois
from .roi_align import multilevel_roi_align
from .rpn_head import rpn_proposals

RPN_TRAIN_PROPOSALS = {"nms_pre": 2000, "max_per_img": 1000, "iou_threshold": 0.7, "min_bbox_size": 0}


def _flat(maps, per_anchor):
    """RPN maps ``[(B, h, w, A * per_anchor), ...]`` as ``(B, anchors, per_anchor)``
    in the anchors' order."""
    batch = ops.shape(maps[0])[0]
    return ops.concatenate([ops.reshape(m, (batch, -1, per_anchor)) for m in maps], axis=1)


def detector_losses(detector, batch, seed=None, training=False):
    """A dict of mmdet's five losses (``loss_rpn_cls``, ``loss_rpn_bbox``,
    ``loss_cls``, ``loss_bbox``, ``loss_mask``) and their sum (``loss``) for
    a batch from :func:`.pipeline.collate`; differentiable with respect to
    the detector's weights. ``training``: the backbone's and heads' training
    mode (BatchNorm statistics, drop path)."""
    seed = assigner.seed_generator(seed)
    dense = detector(ops.convert_to_tensor(batch["images"], "float32"), training=training)
    pyramid, cls_maps, reg_maps = dense["fpn"], dense["rpn_cls"], dense["rpn_reg"]
    level_shapes = [tuple(int(d) for d in m.shape[1:3]) for m in cls_maps]

    positive, negative, deltas = targets.rpn_batch_targets(level_shapes, batch, seed)
    loss_rpn_cls, loss_rpn_bbox = losses.rpn_losses(_flat(cls_maps, 1)[..., 0], _flat(reg_maps, 4), deltas,
                                                    positive, negative)

    anchors = level_anchors(level_shapes)
    sampled_rois, sampled_labels, sampled_pos, sampled_neg, sampled_deltas = [], [], [], [], []
    mask_rois, mask_labels, mask_targets = [], [], []
    for b in range(len(batch["pad_shapes"])):
        proposals = rpn_proposals([ops.stop_gradient(c[b]) for c in cls_maps],
                                  [ops.stop_gradient(r[b]) for r in reg_maps],
                                  anchors, batch["img_shapes"][b], RPN_TRAIN_PROPOSALS)
        proposals = ops.convert_to_numpy(proposals)[:, :4]
        rois, labels, pos, neg, roi_deltas, gt_inds = (
            ops.convert_to_numpy(t) for t in targets.roi_targets(
                proposals, np.ones(len(proposals), bool), batch["gt_boxes"][b], batch["gt_labels"][b],
                batch["gt_valid"][b], seed)
        )
        keep = pos | neg
        sampled_rois.append(rois[keep])
        sampled_labels.append(labels[keep])
        sampled_pos.append(pos[keep])
        sampled_neg.append(neg[keep])
        sampled_deltas.append(roi_deltas[keep])
        mask_rois.append(rois[pos])
        mask_labels.append(labels[pos])
        mask_targets.append(targets.mask_targets(batch["masks"][b], rois[pos], gt_inds[pos] - 1))

    feats = multilevel_roi_align(pyramid[:4], _rois(sampled_rois), BOX_ROI_SIZE)
    cls_score, bbox_pred = detector.bbox_head(feats, training=training)
    loss_cls, loss_bbox = losses.rcnn_losses(
        cls_score, bbox_pred, np.concatenate(sampled_labels), np.concatenate(sampled_deltas),
        np.concatenate(sampled_pos), np.concatenate(sampled_neg))

    if sum(len(r) for r in mask_rois):
        mask_feats = multilevel_roi_align(pyramid[:4], _rois(mask_rois), MASK_ROI_SIZE)
        mask_logits = detector.mask_head(mask_feats, training=training)
        loss_mask = losses.mask_loss(mask_logits, np.concatenate(mask_targets), np.concatenate(mask_labels))
    else:  # mmdet: the sum of no predictions
        loss_mask = ops.convert_to_tensor(0.0)

    out = {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox, "loss_cls": loss_cls,
           "loss_bbox": loss_bbox, "loss_mask": loss_mask}
    out["loss"] = sum(out.values())
    return out


__all__ = ["RPN_TRAIN_PROPOSALS", "detector_losses"]
