"""Training targets' first step, as mmdet 2.23 computes it: which anchor or
proposal learns from which ground-truth box (``MaxIoUAssigner``), and which
of them enter the loss (``RandomSampler``), in ``keras.ops``.

Ground truth comes padded to a fixed number of boxes per image with a
validity mask, so that every shape is static (a traced training step on
TensorFlow, a compiled one on JAX); padded boxes never match anything.

**Assignment** (per image; ``overlaps`` is the IoU of every ground-truth box
with every candidate box, as mmdet's ``bbox_overlaps``: no +1 in the areas,
the union at least 1e-6):

1. every candidate starts as ``-1`` (ignored);
2. a candidate whose best IoU lies in ``[0, neg_iou_thr)`` (or in the
   ``(low, high)`` interval given) becomes ``0``, background;
3. one whose best IoU is at least ``pos_iou_thr`` takes its best box
   (``index + 1``; ties: the first box);
4. with ``match_low_quality``, each ground-truth box in turn whose best IoU
   is at least ``min_pos_iou`` takes every candidate that reaches that best
   IoU (``gt_max_assign_all``), a later box overwriting an earlier one.

An image without ground truth makes every candidate background. Labels are
the assigned box's label, ``-1`` elsewhere.

**Sampling** (``RandomSampler``): up to ``int(num * pos_fraction)`` of the
positives, chosen uniformly at random when there are more, then up to
``num`` minus the positives taken of the negatives (at most ``neg_pos_ub``
times the positives when that is not negative); with
``add_gt_as_proposals`` the ground-truth boxes join the candidates in front,
each assigned to itself. Here the choice is two masks over the candidates
rather than index lists: the losses sum over them, so their order is moot.
"""

import keras
from keras import ops

# mmdet's Mask R-CNN training configuration (configs/_base_/models/mask_rcnn_r50_fpn.py)
RPN_ASSIGNER = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
RPN_SAMPLER = dict(num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False)
RCNN_ASSIGNER = dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True)
RCNN_SAMPLER = dict(num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True)

IOU_EPS = 1e-6


def box_iou(boxes1, boxes2):
    """``(M, N)`` IoU of ``(M, 4)`` and ``(N, 4)`` ``(x1, y1, x2, y2)`` boxes,
    as mmdet's ``bbox_overlaps(mode="iou")``."""
    boxes1, boxes2 = ops.convert_to_tensor(boxes1, "float32"), ops.convert_to_tensor(boxes2, "float32")
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    left_top = ops.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    right_bottom = ops.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = ops.maximum(right_bottom - left_top, 0.0)
    overlap = wh[..., 0] * wh[..., 1]
    union = ops.maximum(area1[:, None] + area2[None, :] - overlap, IOU_EPS)
    return overlap / union


def max_iou_assign(boxes, gt_boxes, gt_labels, gt_valid, pos_iou_thr, neg_iou_thr, min_pos_iou=0.0,
                   match_low_quality=True, gt_max_assign_all=True, box_valid=None):
    """mmdet's ``MaxIoUAssigner`` for one image.

    Args:
        boxes: ``(N, 4)`` candidates (anchors or proposals).
        gt_boxes: ``(G, 4)`` ground truth, padded; ``gt_valid`` ``(G,)`` bool
            says which are real. ``gt_labels``: ``(G,)`` int.
        neg_iou_thr: a float, or a ``(low, high)`` pair.
        box_valid: ``(N,)`` bool, the candidates taking part (default all):
            the others stay ``-1`` and are no box's best match (mmdet leaves
            them out: anchors over another image's padding, padded
            proposals).

    Returns:
        ``(gt_inds, max_overlaps, labels)``, each ``(N,)``: ``-1`` ignored,
        ``0`` background, ``k > 0`` the ``k - 1``-th ground-truth box; the
        best IoU (0 where there is no ground truth); the assigned label or
        ``-1``.
    """
    gt_valid = ops.convert_to_tensor(gt_valid, "bool")
    if ops.shape(ops.convert_to_tensor(boxes))[0] == 0:  # no candidates (an RPN without proposals)
        return ops.zeros((0,), "int32"), ops.zeros((0,), "float32"), ops.zeros((0,), "int32")
    overlaps = box_iou(gt_boxes, boxes)
    # padded boxes below any real IoU: never the best of a candidate
    overlaps = ops.where(gt_valid[:, None], overlaps, -1.0)
    if box_valid is not None:
        overlaps = ops.where(ops.convert_to_tensor(box_valid, "bool")[None, :], overlaps, -1.0)
    num_gts = ops.shape(overlaps)[0]
    has_gt = ops.any(gt_valid)

    max_overlaps = ops.max(overlaps, axis=0)
    argmax_overlaps = ops.cast(ops.argmax(overlaps, axis=0), "int32")
    gt_max_overlaps = ops.max(overlaps, axis=1)

    assigned = ops.full(ops.shape(max_overlaps), -1, "int32")
    if isinstance(neg_iou_thr, (tuple, list)):
        low, high = neg_iou_thr
        negative = ops.logical_and(max_overlaps >= low, max_overlaps < high)
    else:
        negative = ops.logical_and(max_overlaps >= 0, max_overlaps < neg_iou_thr)
    assigned = ops.where(negative, 0, assigned)
    assigned = ops.where(max_overlaps >= pos_iou_thr, argmax_overlaps + 1, assigned)

    if match_low_quality:
        index = ops.arange(1, num_gts + 1, dtype="int32")[:, None]  # (G, 1): gt number
        allowed = ops.logical_and(gt_valid, gt_max_overlaps >= min_pos_iou)[:, None]
        if gt_max_assign_all:
            reaches = ops.equal(overlaps, gt_max_overlaps[:, None])
        else:  # only the first candidate reaching it
            first = ops.cast(ops.argmax(overlaps, axis=1), "int32")[:, None]
            reaches = ops.equal(ops.arange(ops.shape(overlaps)[1], dtype="int32")[None, :], first)
        # each box in turn overwrites: the last (largest) number wins
        claim = ops.max(ops.where(ops.logical_and(reaches, allowed), index, 0), axis=0)
        assigned = ops.where(claim > 0, claim, assigned)

    assigned = ops.where(has_gt, assigned, 0)
    if box_valid is not None:  # without ground truth too: no candidate over the padding is background
        assigned = ops.where(ops.convert_to_tensor(box_valid, "bool"), assigned, -1)
    max_overlaps = ops.where(has_gt, max_overlaps, 0.0)
    labels = ops.take(ops.cast(gt_labels, "int32"), ops.maximum(assigned - 1, 0))
    labels = ops.where(assigned > 0, labels, -1)
    return assigned, max_overlaps, labels


def with_gt_as_proposals(boxes, gt_inds, labels, gt_boxes, gt_labels, gt_valid):
    """``add_gt_as_proposals``: the ground-truth boxes in front of the
    candidates, each assigned to itself (padded ones ignored: ``-1``).
    Returns ``(boxes, gt_inds, labels, is_gt)``."""
    gt_valid = ops.convert_to_tensor(gt_valid, "bool")
    own = ops.arange(1, ops.shape(gt_valid)[0] + 1, dtype="int32")
    gt_rows = ops.where(gt_valid, own, -1)
    gt_row_labels = ops.where(gt_valid, ops.cast(gt_labels, "int32"), -1)
    return (
        ops.concatenate([ops.convert_to_tensor(gt_boxes, "float32"), ops.convert_to_tensor(boxes, "float32")], 0),
        ops.concatenate([gt_rows, gt_inds], 0),
        ops.concatenate([gt_row_labels, labels], 0),
        ops.concatenate([gt_valid, ops.zeros(ops.shape(gt_inds), "bool")], 0),
    )


def _choose(candidates, count, seed):
    """A mask of ``min(count, candidates)`` of the ``candidates`` (a bool
    mask), chosen uniformly at random."""
    keys = ops.where(candidates, keras.random.uniform(ops.shape(candidates), seed=seed), 2.0)
    rank = ops.argsort(ops.argsort(keys))
    return ops.logical_and(candidates, rank < count)


def seed_generator(seed):
    """``seed`` as a ``keras.random.SeedGenerator``: a generator as it is,
    an int (or ``None``) made into one. Convert once per batch, so that its
    images and steps draw different samples."""
    if isinstance(seed, int) or seed is None:
        return keras.random.SeedGenerator(seed)
    return seed


def random_sample(gt_inds, num, pos_fraction, neg_pos_ub=-1, seed=None):
    """mmdet's ``RandomSampler`` over assigned candidates (``gt_inds`` as
    :func:`max_iou_assign` returns them, after :func:`with_gt_as_proposals`
    where the configuration adds them).

    ``seed``: an int or a ``keras.random.SeedGenerator`` (inside a traced
    training step, the generator).

    Returns:
        ``(positive, negative)``: ``(N,)`` bool masks of the sampled
        candidates.
    """
    seed = seed_generator(seed)
    positive = _choose(gt_inds > 0, int(num * pos_fraction), seed)
    taken = ops.sum(ops.cast(positive, "int32"))
    expected_neg = num - taken
    if neg_pos_ub >= 0:
        bound = ops.cast(neg_pos_ub * ops.cast(ops.maximum(taken, 1), "float32"), "int32")
        expected_neg = ops.minimum(expected_neg, bound)
    negative = _choose(ops.equal(gt_inds, 0), expected_neg, seed)
    return positive, negative


__all__ = [
    "RCNN_ASSIGNER", "RCNN_SAMPLER", "RPN_ASSIGNER", "RPN_SAMPLER",
    "box_iou", "max_iou_assign", "random_sample", "seed_generator", "with_gt_as_proposals",
]
