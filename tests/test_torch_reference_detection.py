"""The independent PyTorch reference of Next-ViT + Mask R-CNN
(tools/torch_reference_detection.py): mmdet's state-dict names, shapes and
order and the README's parameter counts for every variant, its operators
against literal transcriptions of mmcv's CPU kernels, and the golden outputs
of tests/data/detection for the synthetic weights (raw tensors, each
post-processing stage replayed on the stored raw outputs, and end to end)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close, golden, load_tool

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
DET_DATA = HERE / "data" / "detection"

CASES = ["det_maskrcnn_small_128x192", "det_maskrcnn_small_128x128_rescale"]
# README: parameters with norm and proj_head, BatchNorm statistics not counted;
# and without the stem and stage 1 (frozen_stages=1, mmcv's count)
PARAMS_M = {"small": 52.15, "base": 65.21, "large": 78.26}
TRAINABLE_PARAMS_M = {"small": 51.79, "base": 64.85, "large": 77.90}
FROZEN_PARAMS_M = 0.361


det = load_tool("torch_reference_detection", "nextvit_torch_reference_detection")

_MODEL = {}
_DATA = {}
_OUT = {}


def synthetic_detector():
    """Next-ViT-S Mask R-CNN with the synthetic seed-0 weights (cached)."""
    if "small" not in _MODEL:
        _MODEL["small"] = det.load_synthetic(det.build_detector("small"), seed=0)
    return _MODEL["small"]


def data_of(case):
    if case not in _DATA:
        _DATA[case] = golden(f"detection/{case}")
    return _DATA[case]


def end_to_end(case):
    """forward_all on the golden input at the lowered threshold, with the
    probe RoIs (cached)."""
    if case not in _OUT:
        d = data_of(case)
        _OUT[case] = synthetic_detector().forward_all(
            d["input_nchw"], d["img_shapes"], d["scale_factors"], d["ori_shapes"],
            score_thr=float(d["low_score_thr"]), probe_rois=d["probe_rois"],
        )
    return _OUT[case]


def t(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def fpn_levels(d):
    return [t(d[f"fpn{i}"]) for i in range(1, 6)]


def assert_boxes_equal(actual, expected, ulps=2, what="boxes"):
    """Boxes ``(n, 4)`` equal up to ``ulps`` float32 steps of each box's
    largest coordinate: this machine's float32 ``exp`` rounds a few of the
    decoded widths and heights one step away from the ``exp`` that made the
    golden files (a step of the width moves a small x1 by several of its own
    steps)."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    step = np.spacing(np.abs(expected).max(axis=1, keepdims=True).astype(np.float32))
    bad = np.abs(actual.astype(np.float64) - expected) > ulps * step
    assert not bad.any(), f"{what}: {int(bad.sum())} coordinates beyond {ulps} steps"


def match_rows(ours, ref, tol, ours_labels=None, ref_labels=None):
    """Match the rows of ``ref`` (x1, y1, x2, y2, score) one to one with rows
    of ``ours`` whose boxes agree within ``tol`` (and labels, if given);
    returns the index into ``ours`` of each ``ref`` row."""
    assert ours.shape == ref.shape
    free = np.ones(len(ours), bool)
    match = np.empty(len(ref), np.int64)
    for i, row in enumerate(ref):
        dist = np.abs(ours[:, :4] - row[:4]).max(axis=1)
        dist[~free] = np.inf
        if ours_labels is not None:
            dist[ours_labels != ref_labels[i]] = np.inf
        j = int(np.argmin(dist))
        assert dist[j] <= tol, f"row {i} {row} has no match (nearest off by {dist[j]:.3g})"
        free[j] = False
        match[i] = j
    return match


# ---------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["small", "base", "large"])
def test_state_dict_matches_mmdet_naming(variant):
    with torch.device("meta"):
        model = det.build_detector(variant)
    got = [[name, list(v.shape)] for name, v in model.state_dict().items()]
    expected = json.loads((DET_DATA / f"det_maskrcnn_{variant}.keys.json").read_text())
    assert got == expected


@pytest.mark.parametrize("variant", ["small", "base", "large"])
def test_parameter_counts(variant):
    with torch.device("meta"):
        model = det.build_detector(variant)
    total = sum(p.numel() for p in model.parameters())
    backbone = model.backbone
    frozen = sum(p.numel() for p in backbone.stem.parameters())
    frozen += sum(
        p.numel() for idx in range(backbone.stage_out_idx[0] + 1)
        for p in backbone.features[idx].parameters()
    )
    assert round(total / 1e6, 2) == PARAMS_M[variant]
    assert round((total - frozen) / 1e6, 2) == TRAINABLE_PARAMS_M[variant]
    assert round(frozen / 1e6, 3) == FROZEN_PARAMS_M


def test_detector_uses_raw_stage_outputs():
    """No extra norms: the backbone is the classification network's
    ``forward_features``, renamed."""
    model = synthetic_detector()
    assert not hasattr(model.backbone, "extra_norm_list")
    x = det.synthetic_input(1, (1, 3, 64, 64))
    with torch.inference_mode():
        features = model.backbone(x)
        fpn = model.neck(features)
    assert [f.shape[1] for f in features] == [96, 256, 512, 1024]
    assert [tuple(p.shape[2:]) for p in fpn] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    np.testing.assert_array_equal(fpn[4].numpy(), fpn[3][:, :, ::2, ::2].numpy())


# ---------------------------------------------------------------------------
# Operators against literal transcriptions of mmcv's CPU kernels
# ---------------------------------------------------------------------------


def nms_cpu_loop(boxes, scores, iou_threshold):
    """mmcv ``nms_cpu`` (offset 0) line by line in float32 scalars, with a
    stable descending sort."""
    f = np.float32
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for a in range(len(order)):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(i)
        for b in range(a + 1, len(order)):
            j = order[b]
            if suppressed[j]:
                continue
            w = max(f(0), min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(f(0), min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > f(iou_threshold):
                suppressed[j] = True
    return np.array(keep, np.int64)


def random_boxes(rng, n, extent=60.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(0, extent / 3, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    # ties in score (broken toward the lower index) and repeated boxes
    scores = rng.integers(0, 40, n).astype(np.float32) / 40
    boxes[5] = boxes[4]
    return boxes, scores


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_is_nms_cpu(iou):
    rng = np.random.default_rng(int(iou * 10))
    boxes, scores = random_boxes(rng, 160)
    dets, keep = det.nms(boxes, scores, iou)
    expected = nms_cpu_loop(boxes, scores, iou)
    np.testing.assert_array_equal(keep.numpy(), expected)
    np.testing.assert_array_equal(dets.numpy(), np.c_[boxes[expected], scores[expected]])


def test_batched_nms_single_pass_equals_per_group():
    """Below ``split_thr`` one NMS over the shifted boxes, from it one NMS
    per group: the same detections (distinct scores, as in the golden
    cases); both equal the literal NMS on the shifted boxes."""
    rng = np.random.default_rng(3)
    boxes, _ = random_boxes(rng, 300)
    scores = rng.permutation(300).astype(np.float32) / 300
    groups = rng.integers(0, 5, 300)
    single, keep_single = det.batched_nms(boxes, scores, groups, 0.5)
    split, keep_split = det.batched_nms(boxes, scores, groups, 0.5, split_thr=1)
    np.testing.assert_array_equal(keep_single.numpy(), keep_split.numpy())
    np.testing.assert_array_equal(single.numpy(), split.numpy())
    shifted = boxes + (groups.astype(np.float32) * (boxes.max() + np.float32(1)))[:, None]
    np.testing.assert_array_equal(keep_single.numpy(), nms_cpu_loop(shifted, scores, 0.5))
    assert len(np.unique(groups[keep_single.numpy()])) == 5


def roi_align_loop(feature, rois, out, scale):
    """mmcv's CPU RoIAlign (aligned, sampling_ratio 0, average), sample by
    sample in float32 scalars (all channels at once)."""
    f = np.float32
    _, c, height, width = feature.shape
    result = np.zeros((len(rois), c, out, out), np.float32)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        start_w, start_h = roi[1] * f(scale) - f(0.5), roi[2] * f(scale) - f(0.5)
        roi_w = (roi[3] * f(scale) - f(0.5)) - start_w
        roi_h = (roi[4] * f(scale) - f(0.5)) - start_h
        bin_w, bin_h = roi_w / f(out), roi_h / f(out)
        grid_w, grid_h = int(np.ceil(roi_w / f(out))), int(np.ceil(roi_h / f(out)))
        count = f(max(grid_h * grid_w, 1))
        for ph in range(out):
            for pw in range(out):
                acc = np.zeros(c, np.float32)
                for iy in range(grid_h):
                    y = start_h + f(ph) * bin_h + f(iy + 0.5) * bin_h / f(grid_h)
                    for ix in range(grid_w):
                        x = start_w + f(pw) * bin_w + f(ix + 0.5) * bin_w / f(grid_w)
                        if y < -1 or y > height or x < -1 or x > width:
                            continue
                        yy, xx = max(y, f(0)), max(x, f(0))
                        y_low, x_low = int(yy), int(xx)
                        if y_low >= height - 1:
                            y_low = y_high = height - 1
                            yy = f(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_low = x_high = width - 1
                            xx = f(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = yy - f(y_low), xx - f(x_low)
                        hy, hx = f(1) - ly, f(1) - lx
                        v = feature[b, :, [y_low, y_low, y_high, y_high], [x_low, x_high, x_low, x_high]]
                        acc = acc + (hy * hx * v[0] + hy * lx * v[1] + ly * hx * v[2] + ly * lx * v[3])
                result[r, :, ph, pw] = acc / count
    return result


def test_roi_align_is_the_mmcv_kernel():
    """Fractional, tiny, elongated, partly and wholly outside, empty RoIs;
    two images. Equal to the sample-by-sample kernel to float rounding."""
    rng = np.random.default_rng(7)
    feature = rng.normal(size=(2, 3, 9, 11)).astype(np.float32)
    rois = np.array([
        [0, 3.3, 4.1, 20.7, 17.9],
        [1, 0.0, 0.0, 44.0, 36.0],    # the whole map at stride 4
        [0, 10.2, 10.2, 11.4, 11.9],  # under a pixel: grid 1
        [1, 1.0, 2.0, 43.0, 6.0],     # elongated: many samples per bin
        [0, -8.0, -6.0, 12.0, 50.0],  # partly outside
        [1, 60.0, 60.0, 90.0, 70.0],  # wholly outside: zeros
        [0, 5.0, 5.0, 5.0, 30.0],     # zero width: zeros
        [1, 43.5, 35.5, 44.0, 36.0],  # the last pixel
    ], np.float32)
    for out in (2, 7):
        got = det.roi_align(t(feature), t(rois), out, 0.25).numpy()
        expected = roi_align_loop(feature, rois, out, 0.25)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        assert not got[5].any() and not got[6].any()
    with pytest.raises(ValueError, match="non-negative size"):
        det.roi_align(t(feature), t(np.array([[0, 5.0, 5.0, 4.0, 6.0]], np.float32)), 7, 0.25)


def test_roi_levels_at_the_boundaries():
    sizes = [1.0, 111.0, 112.0, 223.9, 224.0, 447.0, 448.0, 2000.0]
    rois = np.array([[0, 0, 0, s, s] for s in sizes], np.float32)
    assert det.map_roi_levels(t(rois)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_base_anchors_as_the_readme_gives_them():
    expected = np.array(
        [[-22.627417, -11.313708, 22.627417, 11.313708],
         [-16, -16, 16, 16],
         [-11.313708, -22.627417, 11.313708, 22.627417]], np.float32,
    )
    np.testing.assert_allclose(det.base_anchors(4).numpy(), expected, rtol=1e-7)


# ---------------------------------------------------------------------------
# Golden cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_golden_input_and_raw_tensors(case):
    d = data_of(case)
    assert str(d["variant"]) == "small"
    images = d["input_nchw"]
    expected = det.synthetic_input(int(d["input_seed"]), images.shape).numpy()
    h, w = (int(v) for v in d["img_shapes"][0][:2])
    expected[:, :, h:, :] = 0
    expected[:, :, :, w:] = 0
    np.testing.assert_array_equal(images, expected)
    out = end_to_end(case)
    for key in [f"feature{i}" for i in range(1, 5)] + [
        f"{name}{i}" for name in ("fpn", "rpn_cls", "rpn_reg") for i in range(1, 6)
    ]:
        assert_close(out[key], d[key], rel=1e-5, what=f"{case} {key}")
    for i in range(1, 6):
        np.testing.assert_array_equal(out[f"anchors{i}"], d[f"anchors{i}"], err_msg=f"anchors{i}")
        assert out[f"anchors{i}"].dtype == np.float32


@pytest.mark.parametrize("case", CASES)
def test_rpn_postprocess_on_the_stored_rpn_outputs(case):
    d = data_of(case)
    proposals = det.rpn_postprocess(
        [t(d[f"rpn_cls{i}"][0]) for i in range(1, 6)],
        [t(d[f"rpn_reg{i}"][0]) for i in range(1, 6)],
        [t(d[f"anchors{i}"]) for i in range(1, 6)],
        d["img_shapes"][0],
    ).numpy()
    assert len(proposals) == int(d["proposal_counts"][0])
    np.testing.assert_array_equal(proposals[:, 4], d["proposals"][:, 4])  # same order
    assert_boxes_equal(proposals[:, :4], d["proposals"][:, :4], what=f"{case} proposals")


@pytest.mark.parametrize("case", CASES)
def test_roi_head_on_the_stored_proposals(case):
    d = data_of(case)
    rois = det.bbox2roi([t(d["proposals"])])
    np.testing.assert_array_equal(det.map_roi_levels(rois).numpy(), d["roi_levels"])
    with torch.inference_mode():
        _, cls_score, bbox_pred = synthetic_detector().bbox_forward(fpn_levels(d), rois)
    assert_close(cls_score.numpy(), d["roi_cls_score"], rel=1e-5, what="roi_cls_score")
    assert_close(bbox_pred.numpy(), d["roi_bbox_pred"], rel=1e-5, what="roi_bbox_pred")


@pytest.mark.parametrize("case", CASES)
def test_probe_rois(case):
    d = data_of(case)
    rois = t(d["probe_rois"])
    np.testing.assert_array_equal(det.map_roi_levels(rois).numpy(), d["probe_levels"])
    channels, classes = d["probe_channels"], d["probe_mask_classes"]
    model = synthetic_detector()
    with torch.inference_mode():
        bbox_feats, cls_score, bbox_pred = model.bbox_forward(fpn_levels(d), rois)
        mask_feats, mask_logits = model.mask_forward(fpn_levels(d), rois)
    assert bbox_feats.shape == (len(rois), 256, 7, 7) and mask_feats.shape == (len(rois), 256, 14, 14)
    assert mask_logits.shape == (len(rois), 80, 28, 28)
    got = {
        "probe_bbox_feats": bbox_feats[:, channels], "probe_mask_feats": mask_feats[:, channels],
        "probe_cls_score": cls_score, "probe_bbox_pred": bbox_pred,
        "probe_mask_logits": mask_logits[:, classes],
    }
    for key, value in got.items():
        assert_close(value.numpy(), d[key], what=f"{case} {key}")


@pytest.mark.parametrize("case", CASES)
def test_box_postprocess_on_the_stored_roi_outputs(case):
    d = data_of(case)
    rois = det.bbox2roi([t(d["proposals"])])
    args = (rois, t(d["roi_cls_score"]), t(d["roi_bbox_pred"]), d["img_shapes"][0], d["scale_factors"][0])
    dets, labels = det.bbox_postprocess(*args, score_thr=float(d["low_score_thr"]))
    assert len(dets) == int(d["low_det_counts"][0]) == 100
    np.testing.assert_array_equal(labels.numpy(), d["low_det_labels"])
    np.testing.assert_array_equal(dets[:, 4].numpy(), d["low_det_bboxes"][:, 4])
    assert_boxes_equal(dets[:, :4].numpy(), d["low_det_bboxes"][:, :4], what=f"{case} low_det_bboxes")
    # the published threshold: no detections
    dets, labels = det.bbox_postprocess(*args)
    assert dets.shape == (0, 5) and labels.shape == (0,)
    assert d["det_bboxes"].shape == (0, 5) and int(d["det_counts"][0]) == 0
    fg = torch.softmax(t(d["roi_cls_score"]), dim=-1)[:, :-1]
    assert float(fg.max()) == float(d["roi_fg_score_max"])


@pytest.mark.parametrize("case", CASES)
def test_masks_on_the_stored_detections(case):
    d = data_of(case)
    with torch.inference_mode():
        mask_rois, probs = synthetic_detector().mask_predict(
            fpn_levels(d), [t(d["low_det_bboxes"])], [t(d["low_det_labels"])], d["scale_factors"]
        )
    assert_close(probs.numpy(), d["low_mask_probs"], rel=1e-5, what="low_mask_probs")
    boxes = mask_rois[:, 1:] / torch.from_numpy(d["scale_factors"][0])
    ambiguous = d["low_masks_ambiguous_img0"]
    for source in (t(d["low_mask_probs"]), probs):  # the stored probabilities, ours
        masks, our_ambiguous = det.paste_masks(source, boxes, d["ori_shapes"][0])
        assert masks.shape == ambiguous.shape
        assert not ((masks.numpy() != d["low_masks_img0"]) & ~ambiguous).any()
        np.testing.assert_array_equal(our_ambiguous.numpy(), ambiguous)


@pytest.mark.parametrize("case", CASES)
def test_end_to_end(case):
    """forward_all on the golden input: proposals and detections as sets
    (neighbours within the float error may swap), RoI outputs of the
    matched proposals, masks of the matched detections."""
    d = data_of(case)
    out = end_to_end(case)
    np.testing.assert_array_equal(out["proposal_counts"], d["proposal_counts"])
    ref = d["proposals"]
    match = match_rows(out["proposals"], ref, tol=1e-5 * np.abs(ref[:, :4]).max())
    assert np.abs(out["proposals"][match, 4] - ref[:, 4]).max() <= 1e-6
    np.testing.assert_array_equal(out["roi_levels"][match], d["roi_levels"])
    assert_close(out["roi_cls_score"][match], d["roi_cls_score"], rel=1e-5, what="roi_cls_score")
    assert_close(out["roi_bbox_pred"][match], d["roi_bbox_pred"], rel=1e-5, what="roi_bbox_pred")

    np.testing.assert_array_equal(out["det_counts"], d["low_det_counts"])
    ref = d["low_det_bboxes"]
    match = match_rows(out["det_bboxes"], ref, 1e-5 * np.abs(ref[:, :4]).max(),
                       out["det_labels"], d["low_det_labels"])
    assert np.abs(out["det_bboxes"][match, 4] - ref[:, 4]).max() <= 1e-8
    assert out["det_labels"].dtype == np.int64
    assert_close(out["mask_probs"][match], d["low_mask_probs"], rel=1e-5, what="mask_probs")
    masks = out["masks_img0"][match]
    assert not ((masks != d["low_masks_img0"]) & ~d["low_masks_ambiguous_img0"]).any()

    for key in ("probe_bbox_feats", "probe_mask_feats"):
        assert_close(out[key][:, d["probe_channels"]], d[key], what=key)
    assert_close(out["probe_mask_logits"][:, d["probe_mask_classes"]], d["probe_mask_logits"])
    for key in ("probe_cls_score", "probe_bbox_pred"):
        assert_close(out[key], d[key], what=key)
    np.testing.assert_array_equal(out["probe_levels"], d["probe_levels"])

    # the published threshold on the same RoI outputs: no detections
    dets, _ = det.bbox_postprocess(
        det.bbox2roi([t(out["proposals"])]), t(out["roi_cls_score"]), t(out["roi_bbox_pred"]),
        d["img_shapes"][0], d["scale_factors"][0],
    )
    assert len(dets) == 0


def test_detect_at_the_published_threshold():
    """``detect`` (the benchmark's call) on the rescale case: no detections,
    empty masks of the original shape."""
    d = data_of(CASES[1])
    (bboxes, labels, masks), = synthetic_detector().detect(
        d["input_nchw"], d["img_shapes"], d["scale_factors"], d["ori_shapes"]
    )
    assert bboxes.shape == (0, 5) and labels.shape == (0,)
    assert masks.shape == (0, 150, 160) and masks.dtype == torch.bool
