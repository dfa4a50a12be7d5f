"""Non-maximum suppression as mmcv 1.x's ``nms_cpu`` and ``batched_nms``
compute it, in ``keras.ops``.

**NMS** (offset 0): order the boxes by score, descending (a stable sort: ties
keep the lower index first); walk that order, and every box still kept drops
each later box whose ``IoU > iou_threshold`` (strictly), with
``IoU = inter / (area_i + area_j - inter)``, areas and intersection without
+1, all float32. The kept boxes come out in score order.

**Batched NMS**: boxes of different groups (RPN levels, classes) must never
suppress each other. mmcv shifts every box by ``group * (max_coordinate + 1)``
(``max_coordinate`` over all boxes passed in) and runs plain NMS on the
*shifted* float32 boxes; IoUs are therefore computed from the shifted
coordinates, which can differ from the unshifted ones in the last bits. The
same is done here.

How it is computed: the greedy walk is a triangular recurrence --
``keep[j] = not any(keep[i] and IoU(i, j) > t for i before j)`` -- whose
unique solution is also the fixed point of applying it to all boxes at once,
starting from "all kept". Each sweep is one product of the keep vector with
the boolean overlap matrix, so the loop runs as many sweeps as the longest
chain of suppressions (a handful in practice, never more than the number of
boxes) instead of one step per box. Boxes are packed per group into a
``(groups, size, size)`` overlap tensor, so boxes of different groups are
never compared (they could not overlap after the shift anyway), and the
tensor is made and swept a few groups at a time: its every intermediate
(the corners, the intersection, the IoU) is as large as the tensor, and at
``score_thr=0`` a detector's 1000 RoIs x 80 classes made it 85 M entries
(one image's detections peaked at 4.5 GB; 2.0 GB in slices).
"""

import numpy as np
from keras import ops

from .compiled import bucket, compiled


_PAD_STEP = 128
# Entries of the (groups, size, size) overlap tensor made at once (32 MB in
# float32 per intermediate); at least one group.
_OVERLAP_ENTRIES = 1 << 23


def _pairwise_overlap(boxes, valid, iou_threshold):
    """``(G, n, n)`` float: ``1`` where box i comes before box j in its
    group (both valid) and ``IoU(i, j) > iou_threshold``."""
    x1, y1, x2, y2 = (boxes[..., k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    xx1 = ops.maximum(x1[:, :, None], x1[:, None, :])
    yy1 = ops.maximum(y1[:, :, None], y1[:, None, :])
    xx2 = ops.minimum(x2[:, :, None], x2[:, None, :])
    yy2 = ops.minimum(y2[:, :, None], y2[:, None, :])
    w = ops.maximum(xx2 - xx1, 0.0)
    h = ops.maximum(yy2 - yy1, 0.0)
    inter = w * h
    iou = inter / (areas[:, :, None] + areas[:, None, :] - inter)
    n = ops.shape(boxes)[1]
    later = ops.triu(ops.ones((n, n), "bool"), k=1)
    pair_valid = ops.logical_and(valid[:, :, None], valid[:, None, :])
    overlap = ops.logical_and(ops.logical_and(iou > iou_threshold, later), pair_valid)
    return ops.cast(overlap, "float32")


def _greedy_keep(overlap, valid):
    """The greedy walk's keep mask, ``(G, n)`` bool, as a fixed point."""
    valid_f = ops.cast(valid, "float32")

    def sweep(keep):
        suppressed = ops.einsum("gi,gij->gj", keep, overlap) > 0.5
        return valid_f * (1.0 - ops.cast(suppressed, "float32"))

    def cond(keep, previous, step):
        return ops.logical_and(ops.any(ops.not_equal(keep, previous)), step < limit)

    def body(keep, previous, step):
        return sweep(keep), keep, step + 1

    limit = ops.shape(overlap)[-1] + 1
    keep, _, _ = ops.while_loop(cond, body, (sweep(valid_f), valid_f, ops.convert_to_tensor(1)))
    return keep > 0.5


def _placed(positions, values, shape):
    """Zeros of ``shape`` with ``values[i]`` at row ``positions[i]`` (the
    positions all differ). ``ops.scatter_update`` rather than ``ops.scatter``:
    the same result for distinct positions, and Keras' PyTorch backend runs
    ``scatter`` as a Python loop over the rows (at ``score_thr=0``, 80,000
    boxes per image)."""
    return ops.scatter_update(ops.zeros(shape, values.dtype), positions[:, None], values)


def _descending_order(scores):
    """Indices sorting ``scores`` descending; ties keep the lower index first."""
    return ops.argsort(-scores)  # stable on TensorFlow, JAX and PyTorch


@compiled(static=("iou_threshold", "num_groups", "size"))
def _batched_keep(boxes, scores, groups, real, iou_threshold, num_groups, size):
    """``(order, count)``: every index, the kept ones first in score order,
    and how many were kept. Entries with ``real`` False are padding (their
    own group, the lowest scores), never counted."""
    n = ops.shape(boxes)[0]
    # mmcv's shift (the largest coordinate of the real boxes), and plain NMS
    # on the shifted boxes.
    largest = ops.max(ops.where(real[:, None], boxes, -3.0e38))
    offsets = ops.cast(groups, "float32") * (largest + 1.0)
    shifted = boxes + offsets[:, None]

    # Score order, then grouped (stable, so each group stays in score order).
    order = _descending_order(scores)
    grouped = ops.take(order, ops.argsort(ops.take(groups, order)))
    group_of = ops.take(groups, grouped)
    counts = ops.sum(ops.cast(group_of[:, None] == ops.arange(num_groups, dtype="int32")[None], "int32"), 0)
    starts = ops.cumsum(counts) - counts
    slot = ops.arange(n, dtype="int32") - ops.cast(ops.take(starts, group_of), "int32")
    flat = group_of * size + slot  # where each grouped box goes in (G, size)

    packed = _placed(flat, ops.take(shifted, grouped, axis=0), (num_groups * size, 4))
    valid = _placed(flat, ops.ones((n,), "float32"), (num_groups * size,)) > 0.5
    packed = ops.reshape(packed, (num_groups, size, 4))
    valid = ops.reshape(valid, (num_groups, size))

    step = max(1, _OVERLAP_ENTRIES // (size * size))  # groups per slice
    keep = ops.concatenate([
        _greedy_keep(_pairwise_overlap(packed[g : g + step], valid[g : g + step], iou_threshold),
                     valid[g : g + step])
        for g in range(0, num_groups, step)
    ], axis=0)
    kept_grouped = ops.take(ops.reshape(keep, (-1,)), flat)  # (n,) in grouped order
    # Back to one score order over all groups (ties: the lower original index).
    kept_mask = ops.logical_and(_placed(grouped, ops.cast(kept_grouped, "int32"), (n,)) > 0, real)
    dropped_first = ops.cast(ops.logical_not(ops.take(kept_mask, order)), "int32")
    kept = ops.take(order, ops.argsort(dropped_first))  # kept first, in score order
    return kept, ops.sum(ops.cast(kept_mask, "int32"))


def batched_nms_static(boxes, scores, groups, real, iou_threshold, num_groups, size):
    """:func:`batched_nms` with static shapes, for a traced graph: every
    index of ``boxes`` ``(n, 4)``, the kept ones first in score order, and
    their count. ``real`` ``(n,)``: the boxes taking part (give the others
    the lowest scores: they then come after every real box of their group
    and suppress none of them). ``size``: at least the largest group."""
    return _batched_keep(boxes, scores, groups, real, float(iou_threshold), int(num_groups), int(size))


def batched_nms(boxes, scores, groups, iou_threshold, max_num=None, num_groups=None):
    """mmcv's ``batched_nms``: indices of the kept boxes, best score first.

    Args:
        boxes: ``(n, 4)`` float32 ``(x1, y1, x2, y2)``.
        scores: ``(n,)`` float32.
        groups: ``(n,)`` integer group of each box (``0 .. num_groups - 1``).
        iou_threshold: a box is dropped by a kept, better one of its group
            when their IoU is strictly above this.
        max_num: keep at most this many (``None``: all).
        num_groups: the number of groups (default: ``max(groups) + 1``).

    Returns:
        ``(k,)`` int32 indices into ``boxes``.
    """
    boxes = ops.convert_to_tensor(boxes, "float32")
    scores = ops.convert_to_tensor(scores, "float32")
    groups_np = np.asarray(ops.convert_to_numpy(groups)).astype("int32")
    n = groups_np.size
    if n == 0:
        return ops.zeros((0,), "int32")
    if num_groups is None:
        num_groups = int(groups_np.max()) + 1
    # Pad to a bucketed length (one compiled shape for many counts): the
    # padding is one more group of empty boxes with the lowest scores.
    padded = bucket(n, _PAD_STEP)
    if padded > n:
        extra = padded - n
        boxes = ops.concatenate([boxes, ops.zeros((extra, 4), "float32")], axis=0)
        scores = ops.concatenate([scores, ops.full((extra,), -np.inf, "float32")], axis=0)
        groups_np = np.concatenate([groups_np, np.full((extra,), num_groups, "int32")])
    real = ops.convert_to_tensor(np.arange(padded) < n)
    total_groups = int(num_groups) + (padded > n)
    size = bucket(np.bincount(groups_np, minlength=total_groups).max())
    kept, count = _batched_keep(
        boxes, scores, ops.convert_to_tensor(groups_np), real, float(iou_threshold), total_groups, size
    )
    count = int(ops.convert_to_numpy(count))
    if max_num is not None:
        count = min(count, int(max_num))
    return ops.cast(kept[:count], "int32")


def nms(boxes, scores, iou_threshold, max_num=None):
    """mmcv's ``nms`` (one group): indices of the kept boxes, best first."""
    n = int(ops.shape(boxes)[0])
    return batched_nms(boxes, scores, ops.zeros((n,), "int32"), iou_threshold, max_num, 1)


__all__ = ["batched_nms", "batched_nms_static", "nms"]
