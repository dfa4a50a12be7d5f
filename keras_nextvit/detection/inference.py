"""Mask R-CNN's test-time pipeline (mmdet 2.23's ``simple_test``) on a
:class:`~keras_nextvit.detection.model.MaskRCNN`.

For a padded, normalised NHWC batch and each image's meta data
(``img_shape``: the resized image inside the padding, ``scale_factor``:
``(w_scale, h_scale, w_scale, h_scale)``, ``ori_shape``: the original image)::

    dense     = detector(images)                      # backbone, FPN, RPN head
    proposals = rpn_proposals(...)  per image         # rpn_head.py
    rois      = [image index, x1, y1, x2, y2]          # image by image
    cls, reg  = bbox_head(RoIAlign 7x7 of rois)        # roi_align.py, bbox_head.py
    dets      = multiclass_nms(decode, rescale)  per image
    mask RoIs = dets * scale_factor                    # mmdet rescales back, exactly so
    probs     = sigmoid(mask_head(RoIAlign 14x14)[label])
    masks     = paste_masks(probs, mask RoIs / scale_factor, ori_shape)

Runs eagerly: proposal and detection counts vary from image to image.

:func:`detect` adds mmdet's test pipeline in front (``img_scale=(1333, 800)``):
resize keeping the aspect ratio (the factor is ``min(1333 / long side,
800 / short side)``, each side ``int(side * factor + 0.5)``, bilinear with
half-pixel centres as mmcv's ``imrescale``, rounded to uint8), ImageNet
normalisation, zero padding at the bottom and right to a multiple of 32 (the
batch's largest image). OpenCV resizes uint8 images with fixed-point weights,
so a resized pixel can differ from mmcv's by one grey level.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from .anchors import level_anchors
from .bbox_head import decode_detections, multiclass_nms
from .compiled import bucket, call_layer
from .mask_head import paste_masks
from .roi_align import map_roi_levels, multilevel_roi_align
from .rpn_head import rpn_proposals

BOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14
TEST_SCALE = (1333, 800)
SIZE_DIVISOR = 32
MIN_IMAGE_SIZE = 32


def _nchw(x):
    return np.ascontiguousarray(np.transpose(ops.convert_to_numpy(x), (0, 3, 1, 2)))


def _rois(boxes_per_image):
    """mmdet's ``bbox2roi``: ``[image index, x1, y1, x2, y2]``, image by image."""
    parts = []
    for i, boxes in enumerate(boxes_per_image):
        boxes = ops.convert_to_tensor(boxes, "float32")[:, :4]
        index = ops.full((ops.shape(boxes)[0], 1), float(i), "float32")
        parts.append(ops.concatenate([index, boxes], axis=1))
    return ops.concatenate(parts, axis=0)


def _split(x, counts):
    out, start = [], 0
    for count in counts:
        out.append(x[start:start + count])
        start += count
    return out


def _head(layer, feats, step=64):
    """A RoI head on ``feats``, padded to a bucketed count (one compiled
    shape for many counts on JAX)."""
    count = int(feats.shape[0])
    extra = bucket(count, step) - count
    if extra:
        feats = ops.concatenate([feats, ops.zeros((extra,) + tuple(feats.shape[1:]), "float32")], axis=0)
    outputs = call_layer(layer, feats)
    if isinstance(outputs, (tuple, list)):
        return tuple(o[:count] for o in outputs)
    return outputs[:count]


def _dense(detector, images):
    """The backbone, FPN and RPN head on a batch (compiled whole on JAX, a
    traced graph on TensorFlow)."""
    return call_layer(detector, images, graph=True)


def _image_shape(shape):
    return tuple(int(v) for v in shape[:2])


# --------------------------------------------------------------------------
# The stages (each callable on its own: the parity tests replay them on the
# reference's stored inputs)
# --------------------------------------------------------------------------


def proposals_from_rpn(rpn_cls, rpn_reg, img_shapes, rpn_cfg=None):
    """Per image ``(P_i, 5)`` proposals from the RPN maps (lists over levels
    of NHWC batches)."""
    anchors = level_anchors([tuple(int(d) for d in c.shape[1:3]) for c in rpn_cls])
    return [
        rpn_proposals([c[n] for c in rpn_cls], [r[n] for r in rpn_reg], anchors,
                      _image_shape(img_shapes[n]), rpn_cfg)
        for n in range(len(img_shapes))
    ]


def box_head_outputs(detector, pyramid, proposals):
    """``(rois, cls_score, bbox_pred)`` for per-image proposals: RoIAlign 7x7
    on P2..P5 and the box head."""
    rois = _rois(proposals)
    feats = multilevel_roi_align(pyramid[:4], rois, BOX_ROI_SIZE)
    cls_score, bbox_pred = _head(detector.bbox_head, feats)
    return rois, cls_score, bbox_pred


def detections(rois, cls_score, bbox_pred, counts, img_shapes, scale_factors, rcnn_cfg):
    """Per image ``(dets (D_i, 5), labels (D_i,))`` in original-image
    coordinates: decoding, rescale and ``multiclass_nms``."""
    out = []
    for n, (r, c, b) in enumerate(zip(_split(rois, counts), _split(cls_score, counts),
                                      _split(bbox_pred, counts))):
        boxes, scores = decode_detections(r, c, b, _image_shape(img_shapes[n]), scale_factors[n])
        out.append(multiclass_nms(boxes, scores, rcnn_cfg["score_thr"], rcnn_cfg["iou_threshold"],
                                  rcnn_cfg["max_per_img"]))
    return out


def mask_probabilities(detector, pyramid, dets, labels, scale_factors):
    """``(D, 28, 28)`` mask probabilities of the detections (all images, in
    order) and the mask RoI boxes per image (``dets * scale_factor``)."""
    scale_factors = np.asarray(scale_factors, np.float32)
    mask_boxes = [ops.convert_to_tensor(d, "float32")[:, :4] * scale_factors[n] for n, d in enumerate(dets)]
    if not sum(int(d.shape[0]) for d in dets):
        return ops.zeros((0, 2 * MASK_ROI_SIZE, 2 * MASK_ROI_SIZE), "float32"), mask_boxes
    feats = multilevel_roi_align(pyramid[:4], _rois(mask_boxes), MASK_ROI_SIZE)
    logits = _head(detector.mask_head, feats)  # (D, 28, 28, num_classes)
    label_all = ops.cast(ops.concatenate([ops.convert_to_tensor(x) for x in labels], axis=0), "int32")
    chosen = ops.take_along_axis(logits, ops.reshape(label_all, (-1, 1, 1, 1)), axis=3)[..., 0]
    return ops.sigmoid(chosen), mask_boxes


def pasted_masks(probs, mask_boxes, scale_factors, ori_shapes, threshold):
    """Per image ``(D_i, H, W)`` boolean masks at the original size."""
    counts = [int(b.shape[0]) for b in mask_boxes]
    scale_factors = np.asarray(scale_factors, np.float32)
    return [
        paste_masks(p, boxes / scale_factors[n], _image_shape(ori_shapes[n]), threshold)
        for n, (p, boxes) in enumerate(zip(_split(probs, counts), mask_boxes))
    ]


def _no_grad():
    """PyTorch records no graph for inference; other backends need nothing."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def check_score_thr(score_thr):
    if score_thr is None:
        return None
    try:
        value = float(score_thr)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"score_thr must be a number in [0, 1], got {score_thr!r}.")
    return value


def run(detector, images, img_shapes, scale_factors, ori_shapes, score_thr=None, probe_rois=None,
        raw=True):
    """The whole test-time pipeline; a dict of NumPy arrays (golden layouts).
    ``raw=False`` leaves out the backbone, FPN and RPN maps."""
    score_thr = check_score_thr(score_thr)
    with _no_grad():
        return _run(detector, images, img_shapes, scale_factors, ori_shapes, score_thr, probe_rois, raw)


def _run(detector, images, img_shapes, scale_factors, ori_shapes, score_thr, probe_rois, raw):
    images = ops.convert_to_tensor(images, "float32")
    img_shapes = np.asarray(img_shapes)
    scale_factors = np.asarray(scale_factors, np.float32)
    ori_shapes = np.asarray(ori_shapes)
    rcnn = dict(detector.test_cfg["rcnn"])
    if score_thr is not None:
        rcnn["score_thr"] = float(score_thr)

    dense = _dense(detector, images)
    pyramid = dense["fpn"]
    out = {}
    if raw:
        for i, x in enumerate(dense["features"], 1):
            out[f"feature{i}"] = _nchw(x)
        for i, (p, c, r) in enumerate(zip(pyramid, dense["rpn_cls"], dense["rpn_reg"]), 1):
            out[f"fpn{i}"], out[f"rpn_cls{i}"], out[f"rpn_reg{i}"] = _nchw(p), _nchw(c), _nchw(r)
        for i, a in enumerate(level_anchors([tuple(int(d) for d in p.shape[1:3]) for p in pyramid]), 1):
            out[f"anchors{i}"] = a

    proposals = proposals_from_rpn(dense["rpn_cls"], dense["rpn_reg"], img_shapes, detector.test_cfg["rpn"])
    counts = [int(p.shape[0]) for p in proposals]
    rois, cls_score, bbox_pred = box_head_outputs(detector, pyramid, proposals)
    out["proposals"] = ops.convert_to_numpy(ops.concatenate(proposals, axis=0))
    out["proposal_counts"] = np.asarray(counts, np.int64)
    out["roi_levels"] = ops.convert_to_numpy(map_roi_levels(rois)).astype(np.int8)
    out["roi_cls_score"] = ops.convert_to_numpy(cls_score)
    out["roi_bbox_pred"] = ops.convert_to_numpy(bbox_pred)

    results = detections(rois, cls_score, bbox_pred, counts, img_shapes, scale_factors, rcnn)
    dets = [d for d, _ in results]
    labels = [lab for _, lab in results]
    out["det_bboxes"] = ops.convert_to_numpy(ops.concatenate(dets, axis=0))
    out["det_labels"] = ops.convert_to_numpy(ops.concatenate(labels, axis=0)).astype(np.int64)
    out["det_counts"] = np.asarray([int(d.shape[0]) for d in dets], np.int64)

    probs, mask_boxes = mask_probabilities(detector, pyramid, dets, labels, scale_factors)
    out["mask_probs"] = ops.convert_to_numpy(probs)
    masks = pasted_masks(probs, mask_boxes, scale_factors, ori_shapes, rcnn["mask_thr_binary"])
    for n, m in enumerate(masks):
        out[f"masks_img{n}"] = ops.convert_to_numpy(m)

    if probe_rois is not None:
        probe_rois = ops.convert_to_tensor(probe_rois, "float32")
        bbox_feats = multilevel_roi_align(pyramid[:4], probe_rois, BOX_ROI_SIZE)
        mask_feats = multilevel_roi_align(pyramid[:4], probe_rois, MASK_ROI_SIZE)
        probe_cls, probe_reg = _head(detector.bbox_head, bbox_feats)
        out["probe_levels"] = ops.convert_to_numpy(map_roi_levels(probe_rois)).astype(np.int8)
        out["probe_bbox_feats"] = _nchw(bbox_feats)
        out["probe_mask_feats"] = _nchw(mask_feats)
        out["probe_cls_score"] = ops.convert_to_numpy(probe_cls)
        out["probe_bbox_pred"] = ops.convert_to_numpy(probe_reg)
        out["probe_mask_logits"] = _nchw(_head(detector.mask_head, mask_feats))
    return out


def reference_outputs(detector, images, img_shapes, scale_factors, ori_shapes, score_thr=None,
                      probe_rois=None):
    """The detector's outputs under the golden files' keys and layouts.

    ``images``: the padded, normalised NHWC batch; ``img_shapes``,
    ``ori_shapes``: ``(N, 3)`` ``(h, w, 3)``; ``scale_factors``: ``(N, 4)``.
    ``score_thr``: the detections for that threshold instead of the test_cfg's.
    ``probe_rois``: ``(R, 5)`` RoIs to pool and run the heads on directly
    (adds ``probe_*`` with all channels and all classes).
    """
    return run(detector, images, img_shapes, scale_factors, ori_shapes, score_thr, probe_rois)


def prepare(images, scale=TEST_SCALE, size_divisor=SIZE_DIVISOR):
    """mmdet's test pipeline for a list of images (paths, PIL images or uint8
    arrays): ``(batch (N, H, W, 3) float32, img_shapes, scale_factors,
    ori_shapes)``, the batch padded to its largest image, a multiple of
    ``size_divisor``."""
    from ..preprocessing import preprocess_input
    from ..segmentation.inference import read_image
    from .pipeline import padded_size, rescale_image

    arrays = [read_image(image) for image in images]
    resized, img_shapes, ori_shapes, scale_factors = [], [], [], []
    for array in arrays:
        height, width = array.shape[:2]
        if min(height, width) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"The image is {height}x{width} pixels; the detector needs at least "
                f"{MIN_IMAGE_SIZE} pixels on each side."
            )
        array, scale_factor = rescale_image(array, scale)
        resized.append(preprocess_input(array))
        img_shapes.append(array.shape)
        ori_shapes.append((height, width, 3))
        scale_factors.append(scale_factor)
    pad_h, pad_w = padded_size(max(s[0] for s in img_shapes), max(s[1] for s in img_shapes), size_divisor)
    batch = np.zeros((len(resized), pad_h, pad_w, 3), np.float32)
    for i, image in enumerate(resized):
        batch[i, : image.shape[0], : image.shape[1]] = image
    return batch, np.array(img_shapes), np.array(scale_factors, np.float32), np.array(ori_shapes)


def detect(detector, images, score_thr=None, scale=TEST_SCALE, batch_size=1):
    """Detect objects (boxes, scores, labels, masks) in one image or a list.

    Args:
        detector: a :func:`~keras_nextvit.NextViTMaskRCNN`.
        images: a path, PIL image or uint8 ``(H, W, 3)`` RGB array, or a
            list of them (sizes may differ).
        score_thr: keep detections scoring above this (default: the
            detector's ``test_cfg``, 0.05 as published); in [0, 1].
        scale: the test scale ``(long, short)``: each image is resized so
            that its sides fit ``max(scale)`` and ``min(scale)``.
        batch_size: images per forward pass (padded to the largest).

    Returns:
        Per image a dict: ``boxes`` ``(D, 4)`` float32 ``(x1, y1, x2, y2)``
        in the original image's pixels, ``scores`` ``(D,)``, ``labels``
        ``(D,)`` int64 (COCO's 80 classes: :data:`coco.CLASSES`), ``masks``
        ``(D, H, W)`` bool at the original size; best score first. A list
        for a list of images.

    Example:

    >>> import numpy as np, keras_nextvit
    >>> detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3)
    >>> result = keras_nextvit.detect(detector, np.zeros((64, 80, 3), "uint8"), score_thr=0.0)
    >>> result["masks"].shape[1:], result["boxes"].shape[1]
    ((64, 80), 4)
    """
    score_thr = check_score_thr(score_thr)
    single = not isinstance(images, (list, tuple))
    images = [images] if single else list(images)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}.")
    results = []
    for first in range(0, len(images), int(batch_size)):
        batch, img_shapes, scale_factors, ori_shapes = prepare(images[first:first + int(batch_size)], scale)
        out = run(detector, batch, img_shapes, scale_factors, ori_shapes, score_thr, raw=False)
        counts = list(out["det_counts"])
        for i, (dets, labels) in enumerate(zip(_split(out["det_bboxes"], counts),
                                               _split(out["det_labels"], counts))):
            results.append({
                "boxes": np.ascontiguousarray(dets[:, :4]),
                "scores": np.ascontiguousarray(dets[:, 4]),
                "labels": labels,
                "masks": out[f"masks_img{i}"],
            })
    return results[0] if single else results


__all__ = [
    "detect", "prepare",
    "box_head_outputs", "detections", "mask_probabilities", "pasted_masks", "proposals_from_rpn",
    "reference_outputs", "run",
]
