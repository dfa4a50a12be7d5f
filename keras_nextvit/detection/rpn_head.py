"""mmdet 2.x's ``RPNHead`` and its test-time proposals.

One head shared over P2..P6::

    x    = relu(rpn_conv(p))          # 3x3, 256 -> 256, bias
    cls  = rpn_cls(x)                 # 1x1 -> A logits (one sigmoid score per anchor)
    reg  = rpn_reg(x)                 # 1x1 -> 4A deltas (dx, dy, dw, dh per anchor)

At position (y, x) of a level of width W, anchor ``a`` has index
``(y * W + x) * A + a``: its logit is channel ``a`` and its deltas channels
``4a .. 4a+3``, so an NHWC map reshaped to ``(-1,)`` / ``(-1, 4)`` lists them
in anchor order.

**Proposals** (``test_cfg.rpn``: ``nms_pre=1000``, ``max_per_img=1000``, NMS
IoU 0.7, ``min_bbox_size=0``), per image: per level the sigmoid scores; a
level with more than ``nms_pre`` anchors keeps its ``nms_pre`` best (sorted),
a smaller one keeps all (unsorted); the kept anchors are decoded
(:func:`~keras_nextvit.detection.box_coder.decode`, clipped to the image's
``img_shape``); boxes of zero width or height are dropped; one batched NMS
with the level as the group keeps at most ``max_per_img``, best first.
"""

import keras
import numpy as np
from keras import ops

from ..layers import _PACKAGE, _Composite, _pointwise
from .box_coder import decode
from .compiled import bucket, compiled
from .nms import batched_nms, batched_nms_static

RPN_TEST_CFG = {"nms_pre": 1000, "max_per_img": 1000, "iou_threshold": 0.7, "min_bbox_size": 0}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RPNHead(_Composite):
    """``RPNHead(in_channels=256, feat_channels=256)`` with ``num_anchors``
    anchors per position; called on the list of pyramid maps, returns
    ``(cls_maps, reg_maps)`` (NHWC, one per level)."""

    TORCH_CHILDREN = ("rpn_conv", "rpn_cls", "rpn_reg")

    def __init__(self, feat_channels=256, num_anchors=3, **kwargs):
        super().__init__(**kwargs)
        self.feat_channels = feat_channels
        self.num_anchors = num_anchors
        self.rpn_conv = keras.layers.Conv2D(feat_channels, 3, padding="same", name="rpn_conv")
        self.rpn_cls = _pointwise(num_anchors, True, "rpn_cls")
        self.rpn_reg = _pointwise(4 * num_anchors, True, "rpn_reg")

    def build(self, input_shapes):
        shape = tuple(input_shapes[0])
        self.rpn_conv.build(shape)
        hidden = shape[:-1] + (self.feat_channels,)
        self.rpn_cls.build(hidden)
        self.rpn_reg.build(hidden)

    def call(self, inputs, training=None):
        cls_maps, reg_maps = [], []
        for x in inputs:
            x = ops.relu(self.rpn_conv(x))
            cls_maps.append(self.rpn_cls(x))
            reg_maps.append(self.rpn_reg(x))
        return cls_maps, reg_maps

    def compute_output_shape(self, input_shapes):
        cls = [tuple(s[:-1]) + (self.num_anchors,) for s in input_shapes]
        reg = [tuple(s[:-1]) + (4 * self.num_anchors,) for s in input_shapes]
        return cls, reg

    def get_config(self):
        config = super().get_config()
        config.update(feat_channels=self.feat_channels, num_anchors=self.num_anchors)
        return config


@compiled(static=("nms_pre",))
def _candidates(cls_maps, reg_maps, anchors, img_shape, nms_pre):
    """Every level's best ``nms_pre`` anchors (all of a smaller level),
    decoded: ``(boxes, scores, levels)`` concatenated over the levels."""
    scores, deltas, priors, levels = [], [], [], []
    for level, (cls, reg, level_anchors) in enumerate(zip(cls_maps, reg_maps, anchors)):
        level_scores = ops.sigmoid(ops.reshape(cls, (-1,)))
        level_deltas = ops.reshape(reg, (-1, 4))
        if level_scores.shape[0] > nms_pre:
            best = ops.argsort(-level_scores)[:nms_pre]  # stable: ties keep index order
            level_scores = ops.take(level_scores, best)
            level_deltas = ops.take(level_deltas, best, axis=0)
            level_anchors = ops.take(level_anchors, best, axis=0)
        scores.append(level_scores)
        deltas.append(level_deltas)
        priors.append(level_anchors)
        levels.append(ops.full(level_scores.shape, level, "int32"))
    boxes = decode(ops.concatenate(priors), ops.concatenate(deltas), max_shape=(img_shape[0], img_shape[1]))
    return boxes, ops.concatenate(scores), ops.concatenate(levels)


def rpn_proposals(cls_maps, reg_maps, anchors, img_shape, cfg=None):
    """One image's proposals ``(P, 5)``: ``x1, y1, x2, y2, score``, best first.

    Args:
        cls_maps, reg_maps: the image's RPN outputs per level, NHWC without
            the batch axis (``(h, w, A)`` and ``(h, w, 4A)``).
        anchors: per level ``(h * w * A, 4)`` (:func:`level_anchors`).
        img_shape: ``(height, width)`` of the resized image inside the padding.
        cfg: overrides of :data:`RPN_TEST_CFG`.
    """
    cfg = {**RPN_TEST_CFG, **(cfg or {})}
    boxes, scores, levels = _candidates(
        [ops.convert_to_tensor(c, "float32") for c in cls_maps],
        [ops.convert_to_tensor(r, "float32") for r in reg_maps],
        [ops.convert_to_tensor(a, "float32") for a in anchors],
        ops.convert_to_tensor(np.asarray(img_shape[:2], np.float32)),
        int(cfg["nms_pre"]),
    )
    size = cfg["min_bbox_size"]
    valid = ops.logical_and(boxes[:, 2] - boxes[:, 0] > size, boxes[:, 3] - boxes[:, 1] > size)
    index = np.flatnonzero(ops.convert_to_numpy(valid))
    boxes = ops.take(boxes, index, axis=0)
    scores = ops.take(scores, index)
    levels = ops.take(levels, index)
    keep = batched_nms(boxes, scores, levels, cfg["iou_threshold"], cfg["max_per_img"], len(anchors))
    return ops.concatenate([ops.take(boxes, keep, axis=0), ops.take(scores, keep)[:, None]], axis=1)


def rpn_proposals_static(cls_maps, reg_maps, anchors, img_shape, cfg=None):
    """:func:`rpn_proposals` with static shapes, for a traced training step:
    ``(boxes (max_per_img, 4), valid (max_per_img,))``, the proposals first,
    best first, then padding. ``img_shape``: a tensor. The boxes that
    :func:`rpn_proposals` drops before NMS (sides not above
    ``min_bbox_size``) stay in, with the lowest scores and not counted."""
    cfg = {**RPN_TEST_CFG, **(cfg or {})}
    counts = [min(int(np.prod(c.shape)), int(cfg["nms_pre"])) for c in cls_maps]
    boxes, scores, levels = _candidates(
        [ops.convert_to_tensor(c, "float32") for c in cls_maps],
        [ops.convert_to_tensor(r, "float32") for r in reg_maps],
        [ops.convert_to_tensor(a, "float32") for a in anchors],
        ops.cast(img_shape, "float32"),
        int(cfg["nms_pre"]),
    )
    size = cfg["min_bbox_size"]
    real = ops.logical_and(boxes[:, 2] - boxes[:, 0] > size, boxes[:, 3] - boxes[:, 1] > size)
    scores = ops.where(real, scores, -np.inf)
    kept, count = batched_nms_static(boxes, scores, levels, real, cfg["iou_threshold"], len(anchors),
                                     bucket(max(counts)))
    most = int(cfg["max_per_img"])
    kept = kept[:most]
    boxes = ops.take(boxes, kept, axis=0)
    valid = ops.arange(int(kept.shape[0])) < ops.minimum(count, most)
    if boxes.shape[0] < most:
        boxes = ops.pad(boxes, ((0, most - int(boxes.shape[0])), (0, 0)))
        valid = ops.pad(valid, ((0, most - int(valid.shape[0])),))
    return boxes, valid


__all__ = ["RPNHead", "RPN_TEST_CFG", "rpn_proposals", "rpn_proposals_static"]
