"""Next-ViT-S + Mask R-CNN against the golden outputs of the reference
(mmdet 2.23 as tests/data/detection/README.md specifies it), in the README's
order: raw tensors, the probe RoIs, the post-processing replayed on the
reference's own stored inputs, then end to end.

Tolerances: raw tensors within 1e-5 of each tensor's largest magnitude (the
README's figure), everything else within 1e-4 (the issue's bar); counts,
labels and RoI levels exactly; pasted masks equal except at the pixels the
files mark ambiguous. Runs on the active backend; tests/test_backends.py runs
it again under JAX and PyTorch.
"""

import functools
import json

import numpy as np
import pytest
from conftest import DATA, assert_close, golden, nhwc, zero_initialised
from keras import ops

from keras_nextvit import synthetic, weights
from keras_nextvit.detection import NextViTMaskRCNN, inference, reference_outputs
from keras_nextvit.detection.bbox_head import RCNN_TEST_CFG

DET_DATA = DATA / "detection"
CASES = ["det_maskrcnn_small_128x192", "det_maskrcnn_small_128x128_rescale"]
RAW = 1e-5
REL = 1e-4


def key_spec(variant):
    keys = json.loads((DET_DATA / f"det_maskrcnn_{variant}.keys.json").read_text())
    return [(name, tuple(shape)) for name, shape in keys]


@functools.lru_cache(maxsize=None)
def checkpoint(variant):
    """The reference's synthetic detector weights (seed 0), mmdet names."""
    return synthetic.synthetic_state_dict(key_spec(variant))


@functools.lru_cache(maxsize=None)
def detector():
    with zero_initialised():  # every weight is loaded next
        model = NextViTMaskRCNN("small")
    weights.load_torch_weights(model, checkpoint("small"))
    return model


@functools.lru_cache(maxsize=None)
def data(case):
    return golden(f"detection/{case}")


def meta(d):
    return d["img_shapes"], d["scale_factors"], d["ori_shapes"]


@functools.lru_cache(maxsize=None)
def ours(case):
    """End to end at the lowered threshold, with the probe RoIs."""
    d = data(case)
    return reference_outputs(
        detector(), nhwc(d["input_nchw"]), *meta(d), score_thr=float(d["low_score_thr"]),
        probe_rois=d["probe_rois"],
    )


def stored_pyramid(d):
    return [ops.convert_to_tensor(nhwc(d[f"fpn{i}"])) for i in range(1, 6)]


def split(array, counts):
    return np.split(array, np.cumsum(counts)[:-1])


def assert_masks(masks, d, prefix="low_"):
    for i in range(len(d["img_shapes"])):
        got = np.asarray(masks[i])
        expected = d[f"{prefix}masks_img{i}"]
        ambiguous = d[f"{prefix}masks_ambiguous_img{i}"]
        assert got.shape == expected.shape and got.dtype == bool
        wrong = (got != expected) & ~ambiguous
        assert not wrong.any(), f"image {i}: {int(wrong.sum())} mask pixels differ"


@pytest.mark.parametrize("case", CASES)
def test_raw_tensors(case):
    out, d = ours(case), data(case)
    for key in [f"feature{i}" for i in range(1, 5)] + [
        f"{name}{i}" for name in ("fpn", "rpn_cls", "rpn_reg") for i in range(1, 6)
    ]:
        assert_close(out[key], d[key], rel=RAW, what=key)
    for i in range(1, 6):
        np.testing.assert_array_equal(out[f"anchors{i}"], d[f"anchors{i}"])


@pytest.mark.parametrize("case", CASES)
def test_probe_rois(case):
    out, d = ours(case), data(case)
    np.testing.assert_array_equal(out["probe_levels"], d["probe_levels"])
    channels, classes = d["probe_channels"], d["probe_mask_classes"]
    assert out["probe_bbox_feats"].shape[1] == 256 and out["probe_mask_logits"].shape[1] == 80
    assert_close(out["probe_bbox_feats"][:, channels], d["probe_bbox_feats"], REL, "probe_bbox_feats")
    assert_close(out["probe_mask_feats"][:, channels], d["probe_mask_feats"], REL, "probe_mask_feats")
    assert_close(out["probe_cls_score"], d["probe_cls_score"], REL, "probe_cls_score")
    assert_close(out["probe_bbox_pred"], d["probe_bbox_pred"], REL, "probe_bbox_pred")
    assert_close(out["probe_mask_logits"][:, classes], d["probe_mask_logits"], REL, "probe_mask_logits")


@pytest.mark.parametrize("case", CASES)
def test_replayed_rpn_proposals(case):
    d = data(case)
    rpn_cls = [nhwc(d[f"rpn_cls{i}"]) for i in range(1, 6)]
    rpn_reg = [nhwc(d[f"rpn_reg{i}"]) for i in range(1, 6)]
    proposals = inference.proposals_from_rpn(rpn_cls, rpn_reg, d["img_shapes"])
    assert [int(p.shape[0]) for p in proposals] == list(d["proposal_counts"])
    got = np.concatenate([ops.convert_to_numpy(p) for p in proposals])
    assert_close(got, d["proposals"], REL, "proposals")


@pytest.mark.parametrize("case", CASES)
def test_replayed_roi_head(case):
    d = data(case)
    proposals = split(d["proposals"], d["proposal_counts"])
    rois, cls_score, bbox_pred = inference.box_head_outputs(detector(), stored_pyramid(d), proposals)
    assert_close(ops.convert_to_numpy(cls_score), d["roi_cls_score"], REL, "roi_cls_score")
    assert_close(ops.convert_to_numpy(bbox_pred), d["roi_bbox_pred"], REL, "roi_bbox_pred")
    levels = ops.convert_to_numpy(inference.map_roi_levels(rois))
    np.testing.assert_array_equal(levels, d["roi_levels"])


def rois_of(proposals, counts):
    """mmdet's bbox2roi of stored proposals: ``[image, x1, y1, x2, y2]``."""
    return np.concatenate(
        [np.concatenate([np.full((len(p), 1), i, np.float32), p[:, :4]], axis=1)
         for i, p in enumerate(split(proposals, counts))]
    )


def replayed_detections(d, score_thr):
    rois = rois_of(d["proposals"], d["proposal_counts"])
    cfg = dict(RCNN_TEST_CFG, score_thr=score_thr)
    return inference.detections(
        ops.convert_to_tensor(rois), ops.convert_to_tensor(d["roi_cls_score"]),
        ops.convert_to_tensor(d["roi_bbox_pred"]), list(d["proposal_counts"]), d["img_shapes"],
        d["scale_factors"], cfg,
    )


@pytest.mark.parametrize("case", CASES)
def test_replayed_detections(case):
    d = data(case)
    results = replayed_detections(d, float(d["low_score_thr"]))
    assert [int(b.shape[0]) for b, _ in results] == list(d["low_det_counts"])
    boxes = np.concatenate([ops.convert_to_numpy(b) for b, _ in results])
    labels = np.concatenate([ops.convert_to_numpy(lab) for _, lab in results])
    assert_close(boxes, d["low_det_bboxes"], REL, "low_det_bboxes")
    np.testing.assert_array_equal(labels, d["low_det_labels"])
    # The published threshold (0.05) keeps nothing with these weights.
    published = replayed_detections(d, RCNN_TEST_CFG["score_thr"])
    assert [int(b.shape[0]) for b, _ in published] == list(d["det_counts"]) == [0] * len(d["det_counts"])


@pytest.mark.parametrize("case", CASES)
def test_replayed_masks(case):
    d = data(case)
    dets = split(d["low_det_bboxes"], d["low_det_counts"])
    labels = split(d["low_det_labels"], d["low_det_counts"])
    probs, mask_boxes = inference.mask_probabilities(
        detector(), stored_pyramid(d), dets, labels, d["scale_factors"]
    )
    assert_close(ops.convert_to_numpy(probs), d["low_mask_probs"], REL, "low_mask_probs")
    # Pasting the reference's own probabilities.
    masks = inference.pasted_masks(
        ops.convert_to_tensor(d["low_mask_probs"]), mask_boxes, d["scale_factors"], d["ori_shapes"], 0.5
    )
    assert_masks([ops.convert_to_numpy(m) for m in masks], d)


@pytest.mark.parametrize("case", CASES)
def test_end_to_end(case):
    out, d = ours(case), data(case)
    np.testing.assert_array_equal(out["proposal_counts"], d["proposal_counts"])
    assert_close(out["proposals"], d["proposals"], REL, "proposals")
    np.testing.assert_array_equal(out["roi_levels"], d["roi_levels"])
    assert_close(out["roi_cls_score"], d["roi_cls_score"], REL, "roi_cls_score")
    assert_close(out["roi_bbox_pred"], d["roi_bbox_pred"], REL, "roi_bbox_pred")
    np.testing.assert_array_equal(out["det_counts"], d["low_det_counts"])
    assert_close(out["det_bboxes"], d["low_det_bboxes"], REL, "det_bboxes")
    np.testing.assert_array_equal(out["det_labels"], d["low_det_labels"])
    assert_close(out["mask_probs"], d["low_mask_probs"], REL, "mask_probs")
    assert_masks([out[f"masks_img{i}"] for i in range(len(d["img_shapes"]))], d)
    # The published threshold on the detector's own RoI outputs: the files' (empty) result.
    counts = list(out["proposal_counts"])
    rois = rois_of(out["proposals"], counts)
    published = inference.detections(
        ops.convert_to_tensor(rois), ops.convert_to_tensor(out["roi_cls_score"]),
        ops.convert_to_tensor(out["roi_bbox_pred"]), counts, *meta(d)[:2], RCNN_TEST_CFG,
    )
    assert [int(b.shape[0]) for b, _ in published] == list(d["det_counts"])
