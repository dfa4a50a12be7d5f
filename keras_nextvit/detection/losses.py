"""Mask R-CNN's training losses as mmdet 2.23 computes them, in ``keras.ops``,
over the sampled candidates given as masks (:func:`.assigner.random_sample`).

mmdet averages a summed loss by an "average factor" ``n`` as
``sum / (n + eps)``, ``eps`` float32's machine epsilon; the factors are:

* **RPN** (``loss_rpn_cls``: sigmoid cross-entropy, the positives' target 1,
  the negatives' 0; ``loss_rpn_bbox``: L1 on the positives' deltas): both
  over ``n = sum over images of max(positives, 1) + max(negatives, 1)``.
* **Box head** (``loss_cls``: softmax cross-entropy over the classes and
  background, the last class; ``loss_bbox``: L1 on the positives' deltas of
  their own class): ``n = max(sampled, 1)`` for the first, ``n = sampled``
  for the second (sampled: positives and negatives of the whole batch).
* **Mask head** (``loss_mask``): sigmoid cross-entropy of the positives'
  28x28 logits of their own class, the mean over all their pixels (0 without
  positives).

Each loss weight is 1 in mmdet's Mask R-CNN.
"""

import numpy as np
from keras import ops

EPS = float(np.finfo(np.float32).eps)


def sigmoid_cross_entropy(logits, targets):
    """Element-wise ``binary_cross_entropy_with_logits``, in PyTorch's stable
    form ``max(x, 0) - x z + log(1 + exp(-|x|))``."""
    logits = ops.convert_to_tensor(logits, "float32")
    targets = ops.cast(targets, "float32")
    return ops.maximum(logits, 0.0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))


def _count(mask):
    return ops.sum(ops.cast(mask, "float32"))


def rpn_losses(cls_logits, deltas, targets, positive, negative):
    """``(loss_rpn_cls, loss_rpn_bbox)``.

    Args:
        cls_logits: ``(B, A)`` objectness logits of every anchor of each image
            (all levels together).
        deltas: ``(B, A, 4)`` predicted deltas; ``targets`` the same shape.
        positive, negative: ``(B, A)`` masks of the sampled anchors.
    """
    positive = ops.convert_to_tensor(positive, "bool")
    negative = ops.convert_to_tensor(negative, "bool")
    sampled = ops.logical_or(positive, negative)
    per_image = lambda mask: ops.maximum(ops.sum(ops.cast(mask, "float32"), axis=1), 1.0)  # noqa: E731
    factor = ops.sum(per_image(positive)) + ops.sum(per_image(negative)) + EPS
    loss_cls = ops.sum(sigmoid_cross_entropy(cls_logits, positive) * ops.cast(sampled, "float32")) / factor
    l1 = ops.abs(ops.convert_to_tensor(deltas, "float32") - ops.convert_to_tensor(targets, "float32"))
    loss_bbox = ops.sum(l1 * ops.cast(positive, "float32")[..., None]) / factor
    return loss_cls, loss_bbox


def rcnn_losses(cls_score, bbox_pred, labels, targets, positive, negative):
    """``(loss_cls, loss_bbox)`` of the box head.

    Args:
        cls_score: ``(R, C + 1)`` logits (background last), of the batch's
            candidates; ``bbox_pred``: ``(R, 4 C)`` class-specific deltas.
        labels: ``(R,)`` each positive's class (others: any value).
        targets: ``(R, 4)`` the positives' deltas (:func:`.targets.box_targets`
            with the box head's stds).
        positive, negative: ``(R,)`` masks of the sampled candidates.
    """
    cls_score = ops.convert_to_tensor(cls_score, "float32")
    num_classes = int(cls_score.shape[-1]) - 1
    positive = ops.convert_to_tensor(positive, "bool")
    sampled = ops.logical_or(positive, ops.convert_to_tensor(negative, "bool"))
    labels = ops.where(positive, ops.cast(labels, "int32"), num_classes)  # negatives: background
    chosen = ops.take_along_axis(cls_score, labels[:, None], axis=1)[:, 0]
    cross_entropy = ops.logsumexp(cls_score, axis=1) - chosen
    count = _count(sampled)
    loss_cls = ops.sum(cross_entropy * ops.cast(sampled, "float32")) / (ops.maximum(count, 1.0) + EPS)
    per_class = ops.reshape(ops.convert_to_tensor(bbox_pred, "float32"), (-1, num_classes, 4))
    own = ops.minimum(labels, num_classes - 1)[:, None, None]
    own_deltas = ops.take_along_axis(per_class, ops.broadcast_to(own, (ops.shape(own)[0], 1, 4)), axis=1)[:, 0]
    l1 = ops.abs(own_deltas - ops.convert_to_tensor(targets, "float32"))
    loss_bbox = ops.sum(l1 * ops.cast(positive, "float32")[:, None]) / (count + EPS)
    return loss_cls, loss_bbox


def mask_loss(mask_logits, mask_targets, labels, valid=None):
    """``loss_mask``: ``mask_logits`` ``(P, S, S, C)`` (the mask head's NHWC
    output for the positive RoIs), ``mask_targets`` ``(P, S, S)``, ``labels``
    ``(P,)``; ``valid`` ``(P,)`` masks padded rows out (default: all real)."""
    mask_logits = ops.convert_to_tensor(mask_logits, "float32")
    labels = ops.cast(labels, "int32")
    own = ops.take_along_axis(mask_logits, labels[:, None, None, None], axis=3)[..., 0]
    weights = ops.ones_like(own) if valid is None else (
        ops.cast(ops.convert_to_tensor(valid, "bool"), "float32")[:, None, None] * ops.ones_like(own))
    total = ops.sum(weights)
    summed = ops.sum(sigmoid_cross_entropy(own, mask_targets) * weights)
    return ops.where(total > 0, summed / ops.maximum(total, 1.0), 0.0)


__all__ = ["EPS", "mask_loss", "rcnn_losses", "rpn_losses", "sigmoid_cross_entropy"]
