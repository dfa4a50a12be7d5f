"""Mask R-CNN's training losses (keras_nextvit.detection.losses) against NumPy
transcriptions of mmdet 2.23's code paths (index lists, one-hot labels,
average factors), and hand-computed values."""

import numpy as np
import pytest
from keras import ops

from keras_nextvit.detection import losses

EPS = np.finfo(np.float32).eps


def bce(x, z):
    return np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))


def numpy_rpn(cls_logits, deltas, targets, pos_lists, neg_lists):
    """AnchorHead.loss: labels 0 (foreground) / 1 (background) expanded to
    one channel, label weights on sampled anchors, both losses over
    num_total_pos + num_total_neg with max(count, 1) per image."""
    num_total = sum(max(len(p), 1) for p in pos_lists) + sum(max(len(n), 1) for n in neg_lists)
    loss_cls = loss_bbox = 0.0
    for b, (pos, neg) in enumerate(zip(pos_lists, neg_lists)):
        for a in pos:
            loss_cls += bce(cls_logits[b, a], 1.0)
            loss_bbox += np.abs(deltas[b, a] - targets[b, a]).sum()
        for a in neg:
            loss_cls += bce(cls_logits[b, a], 0.0)
    return loss_cls / (num_total + EPS), loss_bbox / (num_total + EPS)


def numpy_rcnn(cls_score, bbox_pred, labels, targets, pos, neg):
    """BBoxHead.loss over the sampled rows (positives first, then negatives)."""
    num_classes = cls_score.shape[1] - 1
    rows = list(pos) + list(neg)
    row_labels = [labels[r] for r in pos] + [num_classes] * len(neg)
    ce = [np.log(np.exp(cls_score[r] - cls_score[r].max()).sum()) + cls_score[r].max() - cls_score[r, l]
          for r, l in zip(rows, row_labels)]
    loss_cls = sum(ce) / (max(len(rows), 1) + EPS)
    if not len(pos):
        return loss_cls, 0.0
    per_class = bbox_pred.reshape(len(bbox_pred), num_classes, 4)
    l1 = sum(np.abs(per_class[r, labels[r]] - targets[r]).sum() for r in pos)
    return loss_cls, l1 / (len(rows) + EPS)


def test_sigmoid_cross_entropy_at_known_points():
    got = ops.convert_to_numpy(losses.sigmoid_cross_entropy([0.0, 0.0, 100.0, -100.0, 2.0], [1, 0, 1, 0, 1]))
    np.testing.assert_allclose(got, [np.log(2), np.log(2), 0, 0, np.log1p(np.exp(-2.0))], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("seed", [0, 1])
def test_rpn_losses_equal_mmdets(seed):
    rng = np.random.default_rng(seed)
    b, a = 2, 300
    cls_logits = rng.normal(0, 2, (b, a)).astype(np.float32)
    deltas, targets = (rng.normal(0, 1, (b, a, 4)).astype(np.float32) for _ in range(2))
    order = [rng.permutation(a) for _ in range(b)]
    pos_lists = [order[0][:20], order[1][:0]]  # the second image has no positive
    neg_lists = [order[0][20:120], order[1][:256]]
    positive, negative = np.zeros((b, a), bool), np.zeros((b, a), bool)
    for i in range(b):
        positive[i, pos_lists[i]] = True
        negative[i, neg_lists[i]] = True
    got = [float(ops.convert_to_numpy(x)) for x in losses.rpn_losses(cls_logits, deltas, targets, positive, negative)]
    np.testing.assert_allclose(got, numpy_rpn(cls_logits, deltas, targets, pos_lists, neg_lists), rtol=1e-5)


@pytest.mark.parametrize("positives", [7, 0])
def test_rcnn_losses_equal_mmdets(positives):
    rng = np.random.default_rng(positives)
    r, c = 64, 5
    cls_score = rng.normal(0, 2, (r, c + 1)).astype(np.float32)
    bbox_pred = rng.normal(0, 1, (r, 4 * c)).astype(np.float32)
    labels = rng.integers(0, c, r)
    targets = rng.normal(0, 1, (r, 4)).astype(np.float32)
    order = rng.permutation(r)
    pos, neg = order[:positives], order[positives:40]
    positive, negative = np.zeros(r, bool), np.zeros(r, bool)
    positive[pos], negative[neg] = True, True
    got = [float(ops.convert_to_numpy(x))
           for x in losses.rcnn_losses(cls_score, bbox_pred, labels, targets, positive, negative)]
    np.testing.assert_allclose(got, numpy_rcnn(cls_score, bbox_pred, labels, targets, pos, neg), rtol=1e-5)


def test_mask_loss_is_the_mean_over_the_own_class_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 4, 4, 3)).astype(np.float32)
    targets = (rng.uniform(size=(6, 4, 4)) > 0.5).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0, 2])
    valid = np.array([True] * 4 + [False] * 2)
    expected = np.mean([bce(logits[i, ..., labels[i]], targets[i]) for i in range(4)])
    got = float(ops.convert_to_numpy(losses.mask_loss(logits, targets, labels, valid)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    everything = np.mean([bce(logits[i, ..., labels[i]], targets[i]) for i in range(6)])
    np.testing.assert_allclose(float(ops.convert_to_numpy(losses.mask_loss(logits, targets, labels))),
                               everything, rtol=1e-5)
    none = losses.mask_loss(logits, targets, labels, np.zeros(6, bool))
    assert float(ops.convert_to_numpy(none)) == 0.0
