"""Training targets: mmdet's MaxIoUAssigner and RandomSampler
(keras_nextvit.detection.assigner) against a NumPy transcription of mmdet
2.23's loops, and hand-computed cases."""

import numpy as np
import pytest
from keras import ops

from keras_nextvit.detection import assigner


def numpy_iou(a, b):
    """mmdet's bbox_overlaps(mode='iou'), written out."""
    out = np.zeros((len(a), len(b)), np.float32)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            w = max(min(p[2], q[2]) - max(p[0], q[0]), 0)
            h = max(min(p[3], q[3]) - max(p[1], q[1]), 0)
            inter = np.float32(w) * np.float32(h)
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / max(union, np.float32(1e-6))
    return out


def numpy_assign(boxes, gt_boxes, gt_labels, pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality=True):
    """MaxIoUAssigner.assign_wrt_overlaps, step by step as mmdet runs it."""
    n = len(boxes)
    if len(gt_boxes) == 0:
        return np.zeros(n, np.int64), np.zeros(n, np.float32), np.full(n, -1)
    overlaps = numpy_iou(gt_boxes, boxes)
    assigned = np.full(n, -1)
    max_overlaps, argmax = overlaps.max(0), overlaps.argmax(0)
    gt_max = overlaps.max(1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    pos = max_overlaps >= pos_iou_thr
    assigned[pos] = argmax[pos] + 1
    if match_low_quality:
        for i in range(len(gt_boxes)):
            if gt_max[i] >= min_pos_iou:
                assigned[overlaps[i] == gt_max[i]] = i + 1
    labels = np.full(n, -1)
    labels[assigned > 0] = np.asarray(gt_labels)[assigned[assigned > 0] - 1]
    return assigned, max_overlaps, labels


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(0, size / 2, (n, 2))
    wh[: n // 10] = 0  # some empty boxes
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def pad(gt_boxes, gt_labels, to):
    k = len(gt_boxes)
    boxes = np.zeros((to, 4), np.float32)
    labels = np.zeros(to, np.int32)
    boxes[:k], labels[:k] = gt_boxes, gt_labels
    # padding that would overlap everything, were it not masked
    boxes[k:] = [0, 0, 1000, 1000]
    return boxes, labels, np.arange(to) < k


def test_box_iou_is_mmdets_bbox_overlaps():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 40)
    b[:5] = a[:5]  # identical boxes: IoU 1 (or 0 for empty ones)
    np.testing.assert_allclose(ops.convert_to_numpy(assigner.box_iou(a, b)), numpy_iou(a, b), rtol=1e-6, atol=1e-7)


def test_the_docstring_case_of_mmdet():
    # MaxIoUAssigner(0.5, 0.5): [[0, 0, 10, 10], [10, 10, 20, 20]] against [[0, 0, 10, 9]]
    boxes = np.array([[0, 0, 10, 10], [10, 10, 20, 20]], np.float32)
    gt_inds, _, labels = assigner.max_iou_assign(boxes, np.array([[0, 0, 10, 9]], np.float32), [3], [True], 0.5, 0.5)
    np.testing.assert_array_equal(ops.convert_to_numpy(gt_inds), [1, 0])
    np.testing.assert_array_equal(ops.convert_to_numpy(labels), [3, -1])


@pytest.mark.parametrize("config", ["rpn", "rcnn", "band"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignment_equals_mmdets_loop(config, seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 300)
    gt = random_boxes(rng, 7)[1:]  # no empty ground truth
    gt[3] = gt[2]  # a duplicate box: the later one takes the shared candidates
    boxes[10:14] = gt[:4] * 1.01  # near-exact matches
    labels = rng.integers(0, 80, len(gt))
    cfg = {"rpn": assigner.RPN_ASSIGNER, "rcnn": assigner.RCNN_ASSIGNER,
           "band": dict(assigner.RPN_ASSIGNER, neg_iou_thr=0.3)}[config]
    expected = numpy_assign(boxes, gt, labels, cfg["pos_iou_thr"], cfg["neg_iou_thr"], cfg["min_pos_iou"])
    padded = pad(gt, labels, 10)
    got = [ops.convert_to_numpy(t) for t in assigner.max_iou_assign(boxes, *padded, **cfg)]
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[2], expected[2])
    assert (got[0] > 0).any() and (got[0] == 0).any()
    assert (got[0] == -1).any() == (cfg["neg_iou_thr"] < cfg["pos_iou_thr"])  # a band left ignored


def test_low_quality_matches_overwrite_in_order():
    """A candidate that is two boxes' best match goes to the later box,
    even over a better IoU with the earlier one (mmdet's loop)."""
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    gt = np.array([[0, 0, 10, 8], [0, 0, 10, 5]], np.float32)  # IoU 0.8 and 0.5 with box 0
    gt_inds, _, _ = assigner.max_iou_assign(boxes, gt, [0, 1], [True, True], 0.9, 0.3, min_pos_iou=0.3)
    np.testing.assert_array_equal(ops.convert_to_numpy(gt_inds), [2, 0])
    expected, _, _ = numpy_assign(boxes, gt, [0, 1], 0.9, 0.3, 0.3)
    np.testing.assert_array_equal(expected, [2, 0])


def test_an_image_without_ground_truth_is_all_background():
    boxes = random_boxes(np.random.default_rng(0), 20)
    gt_boxes, gt_labels, valid = pad(np.zeros((0, 4), np.float32), [], 4)
    gt_inds, overlaps, labels = assigner.max_iou_assign(boxes, gt_boxes, gt_labels, valid, 0.7, 0.3, 0.3)
    assert (ops.convert_to_numpy(gt_inds) == 0).all() and (ops.convert_to_numpy(overlaps) == 0).all()
    assert (ops.convert_to_numpy(labels) == -1).all()
    # the anchors over the padding stay out, as mmdet leaves them out of the assignment
    inside = np.arange(20) < 15
    gt_inds, _, _ = assigner.max_iou_assign(boxes, gt_boxes, gt_labels, valid, 0.7, 0.3, 0.3, box_valid=inside)
    np.testing.assert_array_equal(ops.convert_to_numpy(gt_inds), np.where(inside, 0, -1))


def test_ground_truth_joins_the_proposals():
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    gt_boxes, gt_labels, valid = pad(np.array([[0, 0, 10, 9]], np.float32), [4], 3)
    gt_inds, _, labels = assigner.max_iou_assign(boxes, gt_boxes, gt_labels, valid, 0.5, 0.5, 0.5)
    all_boxes, all_inds, all_labels, is_gt = (
        ops.convert_to_numpy(t)
        for t in assigner.with_gt_as_proposals(boxes, gt_inds, labels, gt_boxes, gt_labels, valid)
    )
    assert all_boxes.shape == (4, 4)
    np.testing.assert_array_equal(all_inds, [1, -1, -1, 1])
    np.testing.assert_array_equal(all_labels, [4, -1, -1, 4])
    np.testing.assert_array_equal(is_gt, [True, False, False, False])


def test_sampler_takes_all_when_few_and_draws_when_many():
    gt_inds = np.array([1, 0, 0, -1, 2, 0, -1, 0], np.int32)
    positive, negative = (ops.convert_to_numpy(m) for m in assigner.random_sample(gt_inds, 8, 0.5, seed=0))
    np.testing.assert_array_equal(positive, gt_inds > 0)  # 2 of at most 4: both
    np.testing.assert_array_equal(negative, gt_inds == 0)  # 4 of at most 6: all
    rng = np.random.default_rng(0)
    many = rng.choice([-1, 0, 0, 0, 1, 2], 2000).astype(np.int32)
    positive, negative = (ops.convert_to_numpy(m) for m in assigner.random_sample(many, 256, 0.5, seed=1))
    assert positive.sum() == 128 and negative.sum() == 128
    assert (many[positive] > 0).all() and (many[negative] == 0).all()
    again = ops.convert_to_numpy(assigner.random_sample(many, 256, 0.5, seed=1)[0])
    other = ops.convert_to_numpy(assigner.random_sample(many, 256, 0.5, seed=2)[0])
    np.testing.assert_array_equal(again, positive)  # a seed fixes the draw
    assert (other != positive).any()
    # few positives: negatives fill the rest; with neg_pos_ub, at most ub per positive
    few = np.where(many > 0, 0, many)
    few[:3] = 1
    positive, negative = (ops.convert_to_numpy(m) for m in assigner.random_sample(few, 256, 0.5, seed=0))
    assert positive.sum() == 3 and negative.sum() == 253
    positive, negative = (ops.convert_to_numpy(m)
                          for m in assigner.random_sample(few, 256, 0.5, neg_pos_ub=3, seed=0))
    assert positive.sum() == 3 and negative.sum() == 9


# ---------------------------------------------------------------- box and mask targets


def numpy_bbox2delta(p, g, stds):
    """mmdet's bbox2delta, written out (means 0)."""
    px, py = (p[:, 0] + p[:, 2]) * 0.5, (p[:, 1] + p[:, 3]) * 0.5
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gx, gy = (g[:, 0] + g[:, 2]) * 0.5, (g[:, 1] + g[:, 3]) * 0.5
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    deltas = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], -1)
    return deltas / np.asarray(stds, np.float32)


def test_box_targets_are_mmdets_deltas_and_decode_back():
    from keras_nextvit.detection import box_coder, targets

    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 50)
    boxes[:, 2:] += 1.0  # no empty candidates (their deltas are undefined, as in mmdet)
    gt = random_boxes(rng, 5) + np.float32([0, 0, 1, 1])
    gt_inds = rng.integers(-1, 6, 50).astype(np.int32)
    got = ops.convert_to_numpy(targets.box_targets(boxes, gt, gt_inds, box_coder.BBOX_HEAD_STDS))
    positive = gt_inds > 0
    expected = numpy_bbox2delta(boxes[positive], gt[gt_inds[positive] - 1], box_coder.BBOX_HEAD_STDS)
    np.testing.assert_allclose(got[positive], expected, rtol=1e-5, atol=1e-5)
    assert (got[~positive] == 0).all()
    back = ops.convert_to_numpy(box_coder.decode(boxes[positive], got[positive], box_coder.BBOX_HEAD_STDS,
                                                 wh_ratio_clip=1e-9))
    np.testing.assert_allclose(back, gt[gt_inds[positive] - 1], rtol=1e-4, atol=1e-3)


def test_mask_targets_crop_the_assigned_mask():
    from keras_nextvit.detection import targets

    masks = np.zeros((2, 40, 60), np.uint8)
    masks[0, 10:30, 20:40] = 1  # a 20 x 20 square
    masks[1, :, :30] = 1  # the left half
    boxes = np.array([
        [20, 10, 40, 30],  # exactly mask 0's square: all ones
        [0, 0, 15, 15],  # beside it: all zeros
        [20, 0, 40, 40],  # mask 1 from x=20 to 40: the left half of the target
        [-30, -5, 30, 45],  # beyond the image: clipped to (0, 0, 30, 40), inside mask 1
    ], np.float32)
    got = targets.mask_targets(masks, boxes, [0, 0, 1, 1], mask_size=8)
    assert got.shape == (4, 8, 8) and got.dtype == np.float32
    assert (got[0] == 1).all() and (got[1] == 0).all() and (got[3] == 1).all()
    assert (got[2][:, :4] == 1).all() and (got[2][:, 4:] == 0).all()
    assert targets.mask_targets(masks, np.zeros((0, 4), np.float32), []).shape == (0, 28, 28)


def test_mask_targets_are_binarised_roi_align():
    """Against the reference RoIAlign (mmcv's, aligned), at 0.5."""
    import torch
    from conftest import load_tool

    from keras_nextvit.detection import targets

    ref = load_tool("torch_reference_detection", "nextvit_det_torch_reference_targets")
    rng = np.random.default_rng(0)
    masks = (rng.uniform(size=(3, 32, 48)) > 0.5).astype(np.uint8)
    boxes = random_boxes(rng, 12, size=40) + np.float32([0, 0, 2, 2])
    index = rng.integers(0, 3, 12)
    got = targets.mask_targets(masks, boxes, index)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, 48)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, 32)
    rois = torch.from_numpy(np.concatenate([index[:, None].astype(np.float32), clipped], 1))
    pooled = ref.roi_align(torch.from_numpy(masks[:, None].astype(np.float32)), rois, 28, 1.0)
    pooled = pooled[:, 0].numpy()
    # averages of 0/1 pixels land on 0.5 itself, where the summation order
    # decides the side: compared away from it
    clear = np.abs(pooled - 0.5) > 1e-5
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(got[clear], (pooled[clear] >= 0.5).astype(np.float32))


def test_anchors_over_padding_take_no_part():
    """An anchor outside the image's own area is never sampled and is no
    ground-truth box's best match: the best valid anchor is (mmdet's
    valid_flags)."""
    from keras_nextvit.detection import box_coder, targets

    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60], [70, 70, 80, 80]], np.float32)
    gt = np.array([[0, 0, 10, 10]], np.float32)
    valid = np.array([False, True, True, True])
    positive, negative, deltas = (
        ops.convert_to_numpy(t) for t in targets.rpn_targets(anchors, valid, gt, [True], seed=0)
    )
    # anchor 0 (IoU 1) is over padding; anchor 1 (IoU 0.5, below the positive
    # threshold 0.7) is the best valid one: the box's low-quality match
    np.testing.assert_array_equal(positive, [False, True, False, False])
    np.testing.assert_array_equal(negative, [False, False, True, True])
    expected = ops.convert_to_numpy(box_coder.encode(anchors[1:2], gt))
    np.testing.assert_allclose(deltas[1], expected[0], rtol=1e-6)
    assert (deltas[[0, 2, 3]] == 0).all()


def test_roi_targets_add_the_ground_truth_and_label_the_positives():
    from keras_nextvit.detection import box_coder, targets

    rng = np.random.default_rng(0)
    proposals = random_boxes(rng, 200) + np.float32([0, 0, 1, 1])
    valid = np.arange(200) < 180  # the last 20 are padding
    proposals[185] = [5, 5, 40, 40]  # padding identical to a ground-truth box: never used
    gt_boxes, gt_labels, gt_valid = pad(np.array([[5, 5, 40, 40], [60, 10, 90, 50]], np.float32), [7, 3], 4)
    rois, labels, positive, negative, deltas, gt_inds = (
        ops.convert_to_numpy(t)
        for t in targets.roi_targets(proposals, valid, gt_boxes, gt_labels, gt_valid, seed=0)
    )
    assert rois.shape == (204, 4) and labels.shape == (204,)
    np.testing.assert_array_equal(rois[:4], gt_boxes)
    assert positive[:2].all() and not positive[2:4].any() and not negative[2:4].any()  # padded gt rows
    assert not positive[4 + 180:].any() and not negative[4 + 180:].any()  # padded proposals
    expected_inds, _, expected_labels = numpy_assign(proposals[:180], gt_boxes[:2], gt_labels[:2], 0.5, 0.5, 0.5)
    np.testing.assert_array_equal(gt_inds[4:184], expected_inds)
    assert positive.sum() == 2 + (expected_inds > 0).sum()  # fewer than 128: all of them
    assert negative.sum() == min(512 - positive.sum(), (expected_inds == 0).sum())
    np.testing.assert_array_equal(labels[positive], np.asarray(gt_labels)[gt_inds[positive] - 1])
    matched = gt_boxes[gt_inds[positive] - 1]
    np.testing.assert_allclose(deltas[positive],
                               ops.convert_to_numpy(box_coder.encode(rois[positive], matched,
                                                                     box_coder.BBOX_HEAD_STDS)), rtol=1e-5)
    np.testing.assert_array_equal(deltas[0], [0, 0, 0, 0])  # a ground-truth box onto itself


def test_no_proposals_leave_the_ground_truth():
    """An RPN without proposals (early in training): the ground truth alone
    are the box head's candidates."""
    from keras_nextvit.detection import targets

    gt_boxes, gt_labels, valid = pad(np.array([[5, 5, 40, 40]], np.float32), [2], 2)
    gt_inds, overlaps, labels = assigner.max_iou_assign(np.zeros((0, 4), np.float32), gt_boxes, gt_labels, valid,
                                                        0.5, 0.5, 0.5)
    assert ops.convert_to_numpy(gt_inds).shape == (0,) and ops.convert_to_numpy(labels).shape == (0,)
    rois, labels, positive, negative, _, _ = (
        ops.convert_to_numpy(t)
        for t in targets.roi_targets(np.zeros((0, 4), np.float32), np.zeros(0, bool), gt_boxes, gt_labels, valid,
                                     seed=0)
    )
    assert rois.shape == (2, 4)
    np.testing.assert_array_equal(positive, [True, False])
    np.testing.assert_array_equal(labels, [2, -1])
    assert not negative.any()
