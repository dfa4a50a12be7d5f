"""An independent, eager PyTorch reference of Next-ViT + Mask R-CNN.

Mask R-CNN as the upstream Next-ViT repository trains it for COCO with
mmdetection 2.23 / mmcv-full 1.5 (``detection/configs/mask_rcnn_nextvit_*``),
written from the description in ``tests/data/detection/README.md`` (not
copied from mmdet/mmcv). Its ``state_dict()`` has exactly the tensor names,
shapes and order of mmdet's checkpoints (see
``tests/data/detection/det_maskrcnn_{small,base,large}.keys.json``), so a
published checkpoint's ``state_dict`` loads into it and the project's
synthetic weights give the same values as in the golden data.

The backbone is the segmentation reference's (``tools/torch_reference_segmentation.py``,
itself built on ``tools/torch_reference.py``; both loaded by file path, not
copied) without the extra norms: the detector outputs the raw last-block
output of each stage. ``backbone.norm`` and ``backbone.proj_head`` are in the
state dict but unused. The FPN is the segmentation reference's plus P6.

Post-processing follows mmdet 2.23's CPU paths, each a separate function so
that it can be replayed on given raw outputs:

* :func:`level_anchors` / :func:`grid_anchors` (AnchorGenerator),
* :func:`delta2bbox` (DeltaXYWHBBoxCoder),
* :func:`nms` (mmcv ``nms_cpu``) and :func:`batched_nms` (mmcv),
* :func:`rpn_postprocess` (RPNHead, one image),
* :func:`map_roi_levels`, :func:`roi_align` (mmcv CPU kernel, ``aligned=True``,
  ``sampling_ratio=0``) and :func:`roi_extract` (SingleRoIExtractor),
* :func:`bbox_postprocess` (BBoxHead.get_bboxes with rescale + multiclass_nms),
* :func:`paste_masks` (FCNMaskHead.get_seg_masks, ``_do_paste_mask`` CPU path).

Sorts are stable (ties to the lower index), as the golden files were made.

Usage::

    model = build_detector("small")           # eval mode, random init
    load_synthetic(model, seed=0)             # the project's weights
    out = model.forward_all(images_nchw, img_shapes, scale_factors, ori_shapes)
    dets = model.detect(images_nchw, img_shapes, scale_factors, ori_shapes)

Eager latency (detection end to end, post-processing and mask pasting
included)::

    python tools/torch_reference_detection.py --variant small --size 800x1216

Only ``torch`` and ``numpy`` are imported, never Keras/TensorFlow.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_HERE = Path(__file__).resolve().parent


def _segmentation_reference():
    """``tools/torch_reference_segmentation.py``, by path."""
    name = "_nextvit_torch_reference_segmentation"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, _HERE / "torch_reference_segmentation.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


seg = _segmentation_reference()
ref = seg.ref  # tools/torch_reference.py

VARIANTS = tuple(ref.VARIANTS)
NUM_CLASSES = 80  # COCO
FPN_CHANNELS = 256
STRIDES = (4, 8, 16, 32, 64)  # P2..P6
ROI_STRIDES = STRIDES[:4]  # P6 is never pooled

# RPN (AnchorGenerator, DeltaXYWHBBoxCoder) and test_cfg.rpn
ANCHOR_SCALE = 8
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
RPN_STDS = (1.0, 1.0, 1.0, 1.0)
RPN_NMS_PRE = 1000
RPN_NMS_IOU = 0.7
RPN_MAX_PER_IMG = 1000
RPN_MIN_BBOX_SIZE = 0
WH_RATIO_CLIP = 16 / 1000
# RoI head and test_cfg.rcnn
FINEST_SCALE = 56
BBOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14
MASK_SIZE = 28
FC_CHANNELS = 1024
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
SCORE_THR = 0.05
RCNN_NMS_IOU = 0.5
RCNN_MAX_PER_IMG = 100
MASK_THR_BINARY = 0.5
NMS_SPLIT_THR = 10000  # mmcv batched_nms: per-group NMS from this many boxes on
AMBIGUOUS_MASK_TOL = 1e-5


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class DetBackbone(seg.SegBackbone):
    """Next-ViT as the upstream ``detection/nextvit.py`` builds it
    (``with_extra_norm=False``): the segmentation backbone without
    ``extra_norm_list``; the outputs are the raw last-block outputs of the
    four stages. ``norm`` and ``proj_head`` stay in the state dict, unused."""

    def __init__(self, variant):
        super().__init__(variant)
        del self.extra_norm_list

    def forward(self, x):
        x = self.stem(x)
        outputs = []
        for idx, block in enumerate(self.features):
            x = block(x)
            if idx in self.stage_out_idx:
                outputs.append(x)
        return outputs


class FPN(seg.FPN):
    """mmdet's ``FPN`` with ``num_outs=5``: the segmentation reference's FPN
    (P2..P5) plus P6 = ``max_pool2d(P5, 1, stride=2)``."""

    def forward(self, inputs):
        outs = super().forward(inputs)
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs


class RPNHead(nn.Module):
    """``rpn_conv`` 3x3 + ReLU, ``rpn_cls`` (3 sigmoid logits), ``rpn_reg``
    (12 deltas), shared over the levels."""

    def __init__(self, channels=FPN_CHANNELS, num_anchors=len(ANCHOR_RATIOS)):
        super().__init__()
        self.rpn_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, feats):
        cls, reg = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            cls.append(self.rpn_cls(x))
            reg.append(self.rpn_reg(x))
        return cls, reg


class Shared2FCBBoxHead(nn.Module):
    """``fc_cls``/``fc_reg`` registered before ``shared_fcs`` (mmdet's
    ``BBoxHead`` creates them first). Input ``(R, 256, 7, 7)`` flattened
    channel-major."""

    def __init__(self, num_classes=NUM_CLASSES, in_channels=FPN_CHANNELS,
                 roi_size=BBOX_ROI_SIZE, fc_channels=FC_CHANNELS):
        super().__init__()
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, num_classes * 4)
        self.shared_fcs = nn.ModuleList([
            nn.Linear(in_channels * roi_size * roi_size, fc_channels),
            nn.Linear(fc_channels, fc_channels),
        ])

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    """4 x (3x3 conv + ReLU), ConvTranspose2d 2x2/2 + ReLU, 1x1 logits."""

    def __init__(self, num_classes=NUM_CLASSES, channels=FPN_CHANNELS, num_convs=4):
        super().__init__()
        self.convs = nn.ModuleList(
            seg.ConvModule(channels, channels, 3, padding=1, norm=False, act=True)
            for _ in range(num_convs)
        )
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


class RoIHead(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.bbox_head = Shared2FCBBoxHead(num_classes)
        self.mask_head = FCNMaskHead(num_classes)


class MaskRCNN(nn.Module):
    """``backbone`` -> ``neck`` (FPN, P2..P6) -> ``rpn_head`` -> ``roi_head``."""

    def __init__(self, variant, num_classes=NUM_CLASSES):
        super().__init__()
        self.variant = variant
        self.num_classes = num_classes
        self.backbone = DetBackbone(variant)
        self.neck = FPN(self.backbone.out_channels, FPN_CHANNELS)
        self.rpn_head = RPNHead()
        self.roi_head = RoIHead(num_classes)

    # -- pieces -------------------------------------------------------------

    def extract(self, images):
        """Backbone features (4) and FPN levels P2..P6 (5), NCHW."""
        features = self.backbone(images)
        return features, self.neck(features)

    def bbox_forward(self, fpn, rois):
        """RoIAlign 7x7 (level-mapped) + box head: ``feats, cls_score, bbox_pred``."""
        feats = roi_extract(fpn[: len(ROI_STRIDES)], rois, BBOX_ROI_SIZE)
        cls_score, bbox_pred = self.roi_head.bbox_head(feats)
        return feats, cls_score, bbox_pred

    def mask_forward(self, fpn, rois):
        """RoIAlign 14x14 (level-mapped) + mask head: ``feats, logits (R, 80, 28, 28)``."""
        feats = roi_extract(fpn[: len(ROI_STRIDES)], rois, MASK_ROI_SIZE)
        return feats, self.roi_head.mask_head(feats)

    def mask_predict(self, fpn, det_bboxes_list, det_labels_list, scale_factors):
        """mmdet's ``simple_test_mask`` up to the probabilities: the mask RoIs
        are the (rescaled) detections times ``scale_factor``; returns
        ``(mask_rois (D, 5), probs (D, 28, 28))`` of the labels' channels."""
        boxes = [
            det[:, :4] * _scale_tensor(sf) for det, sf in zip(det_bboxes_list, scale_factors)
        ]
        mask_rois = bbox2roi(boxes)
        if mask_rois.shape[0] == 0:
            return mask_rois, torch.zeros(0, MASK_SIZE, MASK_SIZE)
        _, logits = self.mask_forward(fpn, mask_rois)
        labels = torch.cat(list(det_labels_list))
        probs = logits.sigmoid()[torch.arange(len(labels)), labels]
        return mask_rois, probs

    # -- whole pipeline -----------------------------------------------------

    def _run(self, images, img_shapes, scale_factors, ori_shapes, score_thr=SCORE_THR,
             probe_rois=None):
        images = _as_tensor(images)
        n = images.shape[0]
        img_shapes = [tuple(int(v) for v in s[:2]) for s in np.asarray(img_shapes).reshape(n, -1)]
        ori_shapes = [tuple(int(v) for v in s[:2]) for s in np.asarray(ori_shapes).reshape(n, -1)]
        scale_factors = [np.asarray(s, np.float32) for s in np.asarray(scale_factors).reshape(n, 4)]

        features, fpn = self.extract(images)
        rpn_cls, rpn_reg = self.rpn_head(fpn)
        anchors = level_anchors([f.shape[2:] for f in fpn])
        proposals = [
            rpn_postprocess([c[i] for c in rpn_cls], [r[i] for r in rpn_reg], anchors, img_shapes[i])
            for i in range(n)
        ]
        rois = bbox2roi([p[:, :4] for p in proposals])
        _, cls_score, bbox_pred = self.bbox_forward(fpn, rois)
        counts = [len(p) for p in proposals]
        dets, labels = [], []
        for i, (rois_i, cls_i, reg_i) in enumerate(
            zip(rois.split(counts), cls_score.split(counts), bbox_pred.split(counts))
        ):
            d, lab = bbox_postprocess(rois_i, cls_i, reg_i, img_shapes[i], scale_factors[i], score_thr)
            dets.append(d)
            labels.append(lab)
        mask_rois, mask_probs = self.mask_predict(fpn, dets, labels, scale_factors)
        masks, ambiguous = [], []
        det_counts = [len(d) for d in dets]
        for i, (rois_i, probs_i) in enumerate(zip(mask_rois.split(det_counts), mask_probs.split(det_counts))):
            m, a = paste_masks(probs_i, rois_i[:, 1:] / _scale_tensor(scale_factors[i]), ori_shapes[i])
            masks.append(m)
            ambiguous.append(a)
        out = {
            "features": features, "fpn": fpn, "rpn_cls": rpn_cls, "rpn_reg": rpn_reg,
            "anchors": anchors, "proposals": proposals, "rois": rois,
            "cls_score": cls_score, "bbox_pred": bbox_pred, "det_bboxes": dets,
            "det_labels": labels, "mask_probs": mask_probs, "masks": masks,
            "masks_ambiguous": ambiguous,
        }
        if probe_rois is not None:
            probe_rois = _as_tensor(probe_rois)
            bbox_feats, probe_cls, probe_reg = self.bbox_forward(fpn, probe_rois)
            mask_feats, probe_logits = self.mask_forward(fpn, probe_rois)
            out.update(probe_levels=map_roi_levels(probe_rois), probe_bbox_feats=bbox_feats,
                       probe_mask_feats=mask_feats, probe_cls_score=probe_cls,
                       probe_bbox_pred=probe_reg, probe_mask_logits=probe_logits)
        return out

    @torch.inference_mode()
    def forward_all(self, images_nchw, img_shapes, scale_factors, ori_shapes,
                    score_thr=SCORE_THR, probe_rois=None):
        """Every stage's output as numpy arrays, under the golden files' keys
        and layouts (see ``tests/data/detection/README.md``)."""
        out = self._run(images_nchw, img_shapes, scale_factors, ori_shapes, score_thr, probe_rois)
        res = {}
        for name, key in (("feature", "features"), ("fpn", "fpn"), ("rpn_cls", "rpn_cls"),
                          ("rpn_reg", "rpn_reg"), ("anchors", "anchors")):
            for i, t in enumerate(out[key], start=1):
                res[f"{name}{i}"] = t.numpy()
        res["proposals"] = torch.cat(out["proposals"]).numpy()
        res["proposal_counts"] = np.array([len(p) for p in out["proposals"]], np.int64)
        res["roi_levels"] = map_roi_levels(out["rois"]).numpy().astype(np.int8)
        res["roi_cls_score"] = out["cls_score"].numpy()
        res["roi_bbox_pred"] = out["bbox_pred"].numpy()
        scores = F.softmax(out["cls_score"], dim=-1)[:, :-1]
        res["roi_fg_score_max"] = np.float32(scores.max()) if scores.numel() else np.float32(0)
        res["det_bboxes"] = torch.cat(out["det_bboxes"]).numpy()
        res["det_labels"] = torch.cat(out["det_labels"]).numpy().astype(np.int64)
        res["det_counts"] = np.array([len(d) for d in out["det_bboxes"]], np.int64)
        res["mask_probs"] = out["mask_probs"].numpy()
        for i, (m, a) in enumerate(zip(out["masks"], out["masks_ambiguous"])):
            res[f"masks_img{i}"] = m.numpy()
            res[f"masks_ambiguous_img{i}"] = a.numpy()
        if probe_rois is not None:
            res["probe_levels"] = out["probe_levels"].numpy().astype(np.int8)
            for key in ("probe_bbox_feats", "probe_mask_feats", "probe_cls_score",
                        "probe_bbox_pred", "probe_mask_logits"):
                res[key] = out[key].numpy()
        return res

    @torch.inference_mode()
    def detect(self, images_nchw, img_shapes, scale_factors, ori_shapes, score_thr=SCORE_THR):
        """mmdet's ``simple_test(rescale=True)``: per image
        ``(det_bboxes (D, 5), det_labels (D,), masks (D, ori_h, ori_w) bool)``."""
        out = self._run(images_nchw, img_shapes, scale_factors, ori_shapes, score_thr)
        return list(zip(out["det_bboxes"], out["det_labels"], out["masks"]))

    def forward(self, images_nchw, img_shapes, scale_factors, ori_shapes, score_thr=SCORE_THR):
        return self.detect(images_nchw, img_shapes, scale_factors, ori_shapes, score_thr)


def build_detector(variant, num_classes=NUM_CLASSES):
    """Next-ViT ``variant`` + Mask R-CNN (mmdet 2.23 naming) in eval mode."""
    if variant not in ref.VARIANTS:
        raise ValueError(f"variant must be one of {sorted(ref.VARIANTS)}, got {variant!r}")
    return MaskRCNN(variant, num_classes).eval()


# ---------------------------------------------------------------------------
# Synthetic weights
# ---------------------------------------------------------------------------


# The synthetic weights (tensor index i = the position in the model's state
# dict, here mmdet's order) and inputs, as the segmentation reference makes them.
synthetic_numpy_state = seg.synthetic_numpy_state
load_synthetic = seg.load_synthetic
synthetic_input = seg.synthetic_input


# ---------------------------------------------------------------------------
# Anchors and box coding
# ---------------------------------------------------------------------------


def _as_tensor(x, dtype=torch.float32):
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32))).to(dtype)


def _scale_tensor(scale_factor):
    return torch.from_numpy(np.asarray(scale_factor, np.float32).reshape(4).copy())


def base_anchors(stride, scale=ANCHOR_SCALE, ratios=ANCHOR_RATIOS):
    """``(3, 4)`` float32 anchors centred on 0 (ratio 0.5 first: the wide one)."""
    ratios = torch.tensor(ratios, dtype=torch.float32)
    scales = torch.tensor([scale], dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).view(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def grid_anchors(shape, stride):
    """``(h * w * 3, 4)`` anchors of one level, index ``(y * w + x) * 3 + a``."""
    h, w = (int(v) for v in shape)
    shift_x = torch.arange(w).to(torch.float32) * stride
    shift_y = torch.arange(h).to(torch.float32) * stride
    xx = shift_x.repeat(h)
    yy = shift_y.view(-1, 1).repeat(1, w).view(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base_anchors(stride)[None, :, :] + shifts[:, None, :]).view(-1, 4)


def level_anchors(shapes, strides=STRIDES):
    """The anchors of every level (P2..P6) for the given ``(h, w)`` shapes."""
    return [grid_anchors(s, st) for s, st in zip(shapes, strides)]


def delta2bbox(rois, deltas, stds=RPN_STDS, max_shape=None):
    """mmdet 2.23 ``delta2bbox`` (means 0, ``wh_ratio_clip`` 16/1000, no
    centre clamp): ``rois (R, 4)``, ``deltas (R, 4k)`` -> ``(R, 4k)``, clipped
    to ``max_shape = (h, w)`` if given."""
    num, k = deltas.shape[0], deltas.shape[1] // 4
    if num == 0:
        return deltas
    deltas = deltas.reshape(-1, 4)
    stds_t = deltas.new_tensor(stds).view(1, -1)
    means_t = deltas.new_zeros(1, 4)
    denorm = deltas * stds_t + means_t
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    rois_ = rois.repeat(1, k).reshape(-1, 4)
    pxy = (rois_[:, :2] + rois_[:, 2:]) * 0.5
    pwh = rois_[:, 2:] - rois_[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = float(np.abs(np.log(WH_RATIO_CLIP)))
    dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_shape is not None:
        boxes[:, 0::2].clamp_(min=0, max=max_shape[1])
        boxes[:, 1::2].clamp_(min=0, max=max_shape[0])
    return boxes.reshape(num, -1)


def bbox2roi(boxes_list):
    """``[batch_index, x1, y1, x2, y2]``, image by image."""
    rois = []
    for i, boxes in enumerate(boxes_list):
        idx = boxes.new_full((boxes.shape[0], 1), float(i))
        rois.append(torch.cat([idx, boxes[:, :4]], dim=-1))
    return torch.cat(rois) if rois else torch.zeros(0, 5)


# ---------------------------------------------------------------------------
# NMS (mmcv 1.5 nms_cpu, batched_nms)
# ---------------------------------------------------------------------------


def _stable_desc(scores):
    return torch.sort(scores, descending=True, stable=True)[1]


def _overlaps(boxes, iou_threshold, chunk=1024):
    """``(n, n)`` numpy bool: IoU > threshold, as ``nms_cpu`` computes it in
    float32 (offset 0: areas and intersection without +1)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    thr = torch.tensor(iou_threshold, dtype=torch.float32)
    n = boxes.shape[0]
    out = np.zeros((n, n), bool)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        xx1 = torch.maximum(x1[s:e, None], x1[None, :])
        yy1 = torch.maximum(y1[s:e, None], y1[None, :])
        xx2 = torch.minimum(x2[s:e, None], x2[None, :])
        yy2 = torch.minimum(y2[s:e, None], y2[None, :])
        w = (xx2 - xx1).clamp(min=0)
        h = (yy2 - yy1).clamp(min=0)
        inter = w * h
        iou = inter / (areas[s:e, None] + areas[None, :] - inter)
        out[s:e] = (iou > thr).numpy()
    return out


def _greedy(overlaps_list):
    """``nms_cpu``'s walk over boxes in score order, run for several
    independent groups at once: ``overlaps_list[g]`` is group g's IoU test
    in score order; returns one boolean keep vector per group."""
    sizes = [o.shape[0] for o in overlaps_list]
    length = max(sizes, default=0)
    over = np.zeros((len(sizes), length, length), bool)
    keep = np.zeros((len(sizes), length), bool)
    for g, o in enumerate(overlaps_list):
        over[g, : sizes[g], : sizes[g]] = o
        keep[g, : sizes[g]] = True
    for r in range(length):
        active = keep[:, r]
        if active.any():
            keep[:, r + 1:] &= ~(over[:, r, r + 1:] & active[:, None])
    return [keep[g, : sizes[g]] for g in range(len(sizes))]


def _nms_keep_many(groups, iou_threshold):
    """``[(boxes, scores), ...]`` -> kept indices (score order) per group."""
    orders = [_stable_desc(s) for _, s in groups]
    overlaps = [_overlaps(b[o], iou_threshold) for (b, _), o in zip(groups, orders)]
    keeps = _greedy(overlaps)
    return [o[torch.from_numpy(k)] for o, k in zip(orders, keeps)]


def nms(boxes, scores, iou_threshold):
    """mmcv ``nms`` (``nms_cpu``, offset 0) with a stable sort: returns
    ``(dets (k, 5), keep (k,))``, kept boxes in descending score order."""
    boxes, scores = _as_tensor(boxes), _as_tensor(scores)
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, 5), torch.zeros(0, dtype=torch.long)
    (keep,) = _nms_keep_many([(boxes, scores)], iou_threshold)
    return torch.cat([boxes[keep], scores[keep, None]], dim=1), keep


def batched_nms(boxes, scores, idxs, iou_threshold, split_thr=NMS_SPLIT_THR):
    """mmcv ``batched_nms``: NMS on the boxes shifted by
    ``group * (boxes.max() + 1)`` (float32); below ``split_thr`` boxes one
    NMS over all of them, from it one NMS per group (on the same shifted
    boxes) whose union is sorted by score. Returns ``(dets, keep)`` with the
    unshifted boxes."""
    boxes, scores = _as_tensor(boxes), _as_tensor(scores)
    idxs = torch.as_tensor(idxs)
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, 5), torch.zeros(0, dtype=torch.long)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if shifted.shape[0] < split_thr:
        _, keep = nms(shifted, scores, iou_threshold)
    else:
        members = [torch.nonzero(idxs == g).view(-1) for g in torch.unique(idxs)]
        kept = _nms_keep_many([(shifted[m], scores[m]) for m in members], iou_threshold)
        mask = torch.zeros(scores.shape[0], dtype=torch.bool)
        for m, k in zip(members, kept):
            mask[m[k]] = True
        keep = torch.nonzero(mask).view(-1)
        keep = keep[_stable_desc(scores[keep])]
    return torch.cat([boxes[keep], scores[keep, None]], dim=1), keep


# ---------------------------------------------------------------------------
# RPN post-processing
# ---------------------------------------------------------------------------


def rpn_postprocess(rpn_cls_list, rpn_reg_list, anchors, img_shape, nms_pre=RPN_NMS_PRE,
                    iou_threshold=RPN_NMS_IOU, max_per_img=RPN_MAX_PER_IMG):
    """One image's proposals ``(P, 5)`` (x1, y1, x2, y2, score), sorted by
    score, from its per-level RPN maps ``rpn_cls (3, h, w)``, ``rpn_reg
    (12, h, w)`` and the levels' anchors; ``img_shape = (h, w)`` clips."""
    scores_l, deltas_l, anchors_l, ids_l = [], [], [], []
    for level, (cls, reg, anc) in enumerate(zip(rpn_cls_list, rpn_reg_list, anchors)):
        cls, reg, anc = _as_tensor(cls), _as_tensor(reg), _as_tensor(anc)
        scores = cls.permute(1, 2, 0).reshape(-1).sigmoid()
        deltas = reg.permute(1, 2, 0).reshape(-1, 4)
        if scores.shape[0] > nms_pre:
            order = _stable_desc(scores)[:nms_pre]
            scores, deltas, anc = scores[order], deltas[order], anc[order]
        scores_l.append(scores)
        deltas_l.append(deltas)
        anchors_l.append(anc)
        ids_l.append(torch.full((scores.shape[0],), level, dtype=torch.long))
    scores = torch.cat(scores_l)
    proposals = delta2bbox(torch.cat(anchors_l), torch.cat(deltas_l), RPN_STDS,
                           tuple(int(v) for v in img_shape[:2]))
    ids = torch.cat(ids_l)
    w = proposals[:, 2] - proposals[:, 0]
    h = proposals[:, 3] - proposals[:, 1]
    valid = (w > RPN_MIN_BBOX_SIZE) & (h > RPN_MIN_BBOX_SIZE)
    if not bool(valid.all()):
        proposals, scores, ids = proposals[valid], scores[valid], ids[valid]
    if proposals.numel() == 0:
        return proposals.new_zeros(0, 5)
    dets, _ = batched_nms(proposals, scores, ids, iou_threshold)
    return dets[:max_per_img]


# ---------------------------------------------------------------------------
# RoI feature extraction (mmcv RoIAlign, mmdet SingleRoIExtractor)
# ---------------------------------------------------------------------------


def map_roi_levels(rois, num_levels=len(ROI_STRIDES), finest_scale=FINEST_SCALE):
    """``floor(log2(sqrt(area) / 56 + 1e-6))`` clamped to [0, 3] (int64)."""
    rois = _as_tensor(rois)
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def _axis_samples(start, bin_size, grid, i, out_size, limit):
    """Sample coordinate ``i`` of every bin along one axis, for RoIs ``(R,)``:
    ``(inside (R, out), low, high (R, out) int64, l, h (R, out) weights)``
    with the kernel's clamping rules."""
    p = torch.arange(out_size, dtype=torch.float32)
    c = (start[:, None] + p[None, :] * bin_size[:, None]) + (i + 0.5) * bin_size[:, None] / grid[:, None]
    inside = (c >= -1.0) & (c <= limit)
    c = torch.where(c <= 0, torch.zeros_like(c), c)
    low = c.to(torch.int64)  # truncation; c >= 0 here
    edge = low >= limit - 1
    low = torch.where(edge, torch.full_like(low, limit - 1), low)
    high = torch.where(edge, low, low + 1)
    c = torch.where(edge, low.to(torch.float32), c)
    frac = c - low.to(torch.float32)
    return inside, low, high, frac, 1.0 - frac


def roi_align(feature, rois, out_size, spatial_scale):
    """mmcv RoIAlign (CPU kernel, ``aligned=True``, ``sampling_ratio=0``,
    average) of ``feature (N, C, H, W)`` over ``rois (R, 5)``:
    ``(R, C, out, out)``. The samples of each bin are summed in the kernel's
    order (rows, then columns) and divided by their number."""
    rois = _as_tensor(rois)
    n, c, height, width = feature.shape
    r = rois.shape[0]
    if r == 0:
        return feature.new_zeros(0, c, out_size, out_size)
    scale = torch.tensor(spatial_scale, dtype=torch.float32)
    start_w = rois[:, 1] * scale - 0.5
    start_h = rois[:, 2] * scale - 0.5
    roi_w = (rois[:, 3] * scale - 0.5) - start_w
    roi_h = (rois[:, 4] * scale - 0.5) - start_h
    if bool((roi_w < 0).any() or (roi_h < 0).any()):
        raise ValueError("ROIs in ROIAlign cannot have non-negative size!")
    bin_w = roi_w / out_size
    bin_h = roi_h / out_size
    grid_w = torch.ceil(roi_w / out_size).to(torch.int64)
    grid_h = torch.ceil(roi_h / out_size).to(torch.int64)
    count = torch.clamp(grid_h * grid_w, min=1).to(torch.float32)
    batch = rois[:, 0].to(torch.int64)
    flat = feature.permute(0, 2, 3, 1).reshape(n * height * width, c)
    acc = feature.new_zeros(r, out_size, out_size, c)
    gh_f, gw_f = grid_h.to(torch.float32), grid_w.to(torch.float32)
    for iy in range(int(grid_h.max())):
        rows = grid_h > iy
        for ix in range(int(grid_w.max())):
            sel = torch.nonzero(rows & (grid_w > ix)).view(-1)
            if sel.numel() == 0:
                continue
            y_in, y0, y1, ly, hy = _axis_samples(start_h[sel], bin_h[sel], gh_f[sel], iy, out_size, height)
            x_in, x0, x1, lx, hx = _axis_samples(start_w[sel], bin_w[sel], gw_f[sel], ix, out_size, width)
            inside = (y_in[:, :, None] & x_in[:, None, :]).to(torch.float32)
            w1 = (hy[:, :, None] * hx[:, None, :]) * inside
            w2 = (hy[:, :, None] * lx[:, None, :]) * inside
            w3 = (ly[:, :, None] * hx[:, None, :]) * inside
            w4 = (ly[:, :, None] * lx[:, None, :]) * inside
            base = (batch[sel] * (height * width))[:, None, None]
            y0w, y1w = (y0 * width)[:, :, None], (y1 * width)[:, :, None]
            x0, x1 = x0[:, None, :], x1[:, None, :]
            shape = (sel.numel(), out_size, out_size, c)

            def corner(index):
                return flat.index_select(0, index.reshape(-1)).view(shape)

            # ((w1 v1 + w2 v2) + w3 v3) + w4 v4, then added to the bin's sum
            val = w1[..., None] * corner(base + y0w + x0)
            val += w2[..., None] * corner(base + y0w + x1)
            val += w3[..., None] * corner(base + y1w + x0)
            val += w4[..., None] * corner(base + y1w + x1)
            acc.index_add_(0, sel, val)
    acc = acc / count[:, None, None, None]
    return acc.permute(0, 3, 1, 2).contiguous()


def roi_extract(feats, rois, out_size, strides=ROI_STRIDES):
    """mmdet's ``SingleRoIExtractor``: each RoI pooled from its level."""
    rois = _as_tensor(rois)
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], out_size, out_size)
    levels = map_roi_levels(rois, len(feats))
    for lvl, (feat, stride) in enumerate(zip(feats, strides)):
        inds = torch.nonzero(levels == lvl).view(-1)
        if inds.numel():
            out[inds] = roi_align(feat, rois[inds], out_size, 1.0 / stride)
    return out


# ---------------------------------------------------------------------------
# Box post-processing and mask pasting
# ---------------------------------------------------------------------------


def multiclass_nms(bboxes, scores, score_thr, iou_threshold=RCNN_NMS_IOU,
                   max_num=RCNN_MAX_PER_IMG):
    """mmdet 2.23 ``multiclass_nms``: ``bboxes (R, 4 * C)``, ``scores
    (R, C + 1)`` (background last) -> ``(dets (D, 5), labels (D,))``."""
    num_classes = scores.shape[1] - 1
    boxes = bboxes.view(scores.shape[0], -1, 4).reshape(-1, 4)
    fg = scores[:, :-1]
    labels = torch.arange(num_classes).view(1, -1).expand_as(fg).reshape(-1)
    fg = fg.reshape(-1)
    inds = torch.nonzero(fg > torch.tensor(score_thr, dtype=torch.float32)).view(-1)
    boxes, fg, labels = boxes[inds], fg[inds], labels[inds]
    if boxes.numel() == 0:
        return bboxes.new_zeros(0, 5), torch.zeros(0, dtype=torch.long)
    dets, keep = batched_nms(boxes, fg, labels, iou_threshold)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return dets, labels[keep]


def bbox_postprocess(rois, cls_score, bbox_pred, img_shape, scale_factor, score_thr=SCORE_THR,
                     iou_threshold=RCNN_NMS_IOU, max_per_img=RCNN_MAX_PER_IMG):
    """mmdet's ``BBoxHead.get_bboxes`` (``rescale=True``) for one image:
    softmax, class-specific decoding (stds 0.1, 0.1, 0.2, 0.2) clipped to
    ``img_shape``, division by ``scale_factor`` (before NMS), multiclass
    NMS. ``rois`` is ``(R, 5)`` or ``(R, 4)``. Returns ``(dets, labels)``."""
    rois, cls_score, bbox_pred = _as_tensor(rois), _as_tensor(cls_score), _as_tensor(bbox_pred)
    scores = F.softmax(cls_score, dim=-1)
    boxes = delta2bbox(rois[:, -4:], bbox_pred, BBOX_STDS, tuple(int(v) for v in img_shape[:2]))
    if boxes.shape[0] > 0:
        sf = _scale_tensor(scale_factor)
        boxes = (boxes.view(boxes.shape[0], -1, 4) / sf).view(boxes.shape[0], -1)
    return multiclass_nms(boxes, scores, score_thr, iou_threshold, max_per_img)


def paste_masks(probs, boxes, ori_shape, threshold=MASK_THR_BINARY, tol=AMBIGUOUS_MASK_TOL):
    """mmdet's ``_do_paste_mask`` (CPU path: one mask at a time,
    ``skip_empty``): ``probs (D, 28, 28)``, ``boxes (D, 4)`` in original-image
    coordinates -> ``(masks, ambiguous)``, both ``(D, ori_h, ori_w)`` bool;
    ``ambiguous`` marks pasted probabilities within ``tol`` of the threshold."""
    probs, boxes = _as_tensor(probs), _as_tensor(boxes)
    img_h, img_w = (int(v) for v in ori_shape[:2])
    masks = torch.zeros(len(probs), img_h, img_w, dtype=torch.bool)
    ambiguous = torch.zeros_like(masks)
    for i in range(len(probs)):
        box = boxes[i: i + 1]
        x0_int, y0_int = torch.clamp(box.min(dim=0).values.floor()[:2] - 1, min=0).to(torch.int32)
        x1_int = int(torch.clamp(box[:, 2].max().ceil() + 1, max=img_w).to(torch.int32))
        y1_int = int(torch.clamp(box[:, 3].max().ceil() + 1, max=img_h).to(torch.int32))
        x0_int, y0_int = int(x0_int), int(y0_int)
        if x1_int <= x0_int or y1_int <= y0_int:
            continue
        x0, y0, x1, y1 = torch.split(box, 1, dim=1)
        img_y = torch.arange(y0_int, y1_int).to(torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int).to(torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
        img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
        gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
        gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
        grid = torch.stack([gx, gy], dim=3)
        pasted = F.grid_sample(probs[i][None, None], grid, mode="bilinear",
                               padding_mode="zeros", align_corners=False)[0, 0]
        masks[i, y0_int:y1_int, x0_int:x1_int] = pasted >= threshold
        ambiguous[i, y0_int:y1_int, x0_int:x1_int] = (pasted - threshold).abs() <= tol
    return masks, ambiguous


# ---------------------------------------------------------------------------
# Training losses (mmdet 2.23 forward_train), the reference of the training
# step's benchmark (tools/benchmark_detection_training.py)
# ---------------------------------------------------------------------------

RPN_TRAIN = dict(nms_pre=2000, max_per_img=1000, iou_threshold=0.7)
RPN_ASSIGN = dict(pos=0.7, neg=0.3, min_pos=0.3)
RPN_SAMPLE = dict(num=256, pos_fraction=0.5)
RCNN_ASSIGN = dict(pos=0.5, neg=0.5, min_pos=0.5)
RCNN_SAMPLE = dict(num=512, pos_fraction=0.25)
LOSS_EPS = float(np.finfo(np.float32).eps)


def box_overlaps(a, b):
    """IoU ``(len(a), len(b))``, mmdet's ``bbox_overlaps`` (union >= 1e-6)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-6)


def max_iou_assign(boxes, gt_boxes, pos, neg, min_pos):
    """MaxIoUAssigner with low-quality matches (gt_max_assign_all):
    ``(B,)`` -1 ignored, 0 background, k + 1 the k-th ground-truth box."""
    assigned = torch.full((boxes.shape[0],), -1, dtype=torch.long)
    if gt_boxes.shape[0] == 0:
        assigned[:] = 0
        return assigned
    overlaps = box_overlaps(gt_boxes, boxes)  # (G, B)
    best, best_gt = overlaps.max(dim=0)
    assigned[(best >= 0) & (best < neg)] = 0
    assigned[best >= pos] = best_gt[best >= pos] + 1
    gt_best = overlaps.max(dim=1).values
    for k in range(gt_boxes.shape[0]):
        if gt_best[k] >= min_pos:
            assigned[overlaps[k] == gt_best[k]] = k + 1
    return assigned


def random_sample(assigned, num, pos_fraction, generator):
    """RandomSampler: up to ``num * pos_fraction`` positives, the rest
    negatives, each chosen uniformly; returns their indices."""
    positives = torch.nonzero(assigned > 0).view(-1)
    negatives = torch.nonzero(assigned == 0).view(-1)
    take_pos = min(int(num * pos_fraction), positives.numel())
    positives = positives[torch.randperm(positives.numel(), generator=generator)[:take_pos]]
    take_neg = min(num - take_pos, negatives.numel())
    negatives = negatives[torch.randperm(negatives.numel(), generator=generator)[:take_neg]]
    return positives, negatives


def bbox2delta(boxes, gt, stds):
    """DeltaXYWHBBoxCoder.encode (means 0)."""
    pxy, pwh = (boxes[:, :2] + boxes[:, 2:]) * 0.5, boxes[:, 2:] - boxes[:, :2]
    gxy, gwh = (gt[:, :2] + gt[:, 2:]) * 0.5, gt[:, 2:] - gt[:, :2]
    deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=1)
    return deltas / deltas.new_tensor(stds)


def training_losses(model, images, gt_boxes, gt_labels, gt_masks, generator):
    """mmdet's five Mask R-CNN losses of a batch of equal-size images (NCHW),
    their ground truth per image (boxes ``(G, 4)``, labels ``(G,)``, masks
    ``(G, H, W)``), sampling with ``generator``."""
    batch, _, height, width = images.shape
    _, fpn = model.extract(images)
    rpn_cls, rpn_reg = model.rpn_head(fpn)
    anchors = level_anchors([tuple(c.shape[-2:]) for c in rpn_cls])
    all_anchors = torch.cat([_as_tensor(a) for a in anchors])
    flat_cls = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1) for c in rpn_cls], 1)
    flat_reg = torch.cat([r.permute(0, 2, 3, 1).reshape(batch, -1, 4) for r in rpn_reg], 1)

    rpn_cls_terms, rpn_reg_terms, rpn_factor = [], [], 0.0
    rois, labels, box_targets, is_positive = [], [], [], []
    mask_rois, mask_labels, mask_targets = [], [], []
    for b in range(batch):
        assigned = max_iou_assign(all_anchors, gt_boxes[b], **RPN_ASSIGN)
        pos, neg = random_sample(assigned, generator=generator, **RPN_SAMPLE)
        target = torch.zeros(pos.numel() + neg.numel())
        target[: pos.numel()] = 1.0
        chosen = torch.cat([pos, neg])
        rpn_cls_terms.append(F.binary_cross_entropy_with_logits(flat_cls[b, chosen], target, reduction="sum"))
        deltas = bbox2delta(all_anchors[pos], gt_boxes[b][assigned[pos] - 1], RPN_STDS)
        rpn_reg_terms.append((flat_reg[b, pos] - deltas).abs().sum())
        rpn_factor += max(pos.numel(), 1) + max(neg.numel(), 1)

        with torch.no_grad():
            proposals = rpn_postprocess([c[b] for c in rpn_cls], [r[b] for r in rpn_reg], anchors,
                                        (height, width), RPN_TRAIN["nms_pre"], RPN_TRAIN["iou_threshold"],
                                        RPN_TRAIN["max_per_img"])[:, :4]
        candidates = torch.cat([gt_boxes[b], proposals])
        assigned = max_iou_assign(candidates, gt_boxes[b], **RCNN_ASSIGN)
        pos, neg = random_sample(assigned, generator=generator, **RCNN_SAMPLE)
        index = torch.full((pos.numel() + neg.numel(), 1), float(b))
        rois.append(torch.cat([index, candidates[torch.cat([pos, neg])]], 1))
        pos_gt = assigned[pos] - 1
        label = torch.full((pos.numel() + neg.numel(),), NUM_CLASSES, dtype=torch.long)
        label[: pos.numel()] = gt_labels[b][pos_gt]
        labels.append(label)
        box_targets.append(bbox2delta(candidates[pos], gt_boxes[b][pos_gt], BBOX_STDS))
        is_positive.append(torch.arange(pos.numel() + neg.numel()) < pos.numel())
        mask_rois.append(torch.cat([torch.full((pos.numel(), 1), float(b)), candidates[pos]], 1))
        mask_labels.append(gt_labels[b][pos_gt])
        with torch.no_grad():  # the masks cropped by their RoIs (clipped to the image), >= 0.5
            boxes = candidates[pos].clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            crop_rois = torch.cat([pos_gt[:, None].float(), boxes], 1)
            cropped = roi_align(gt_masks[b][:, None].float(), crop_rois, MASK_SIZE, 1.0)
            mask_targets.append((cropped[:, 0] >= 0.5).float())

    loss_rpn_cls = sum(rpn_cls_terms) / (rpn_factor + LOSS_EPS)
    loss_rpn_bbox = sum(rpn_reg_terms) / (rpn_factor + LOSS_EPS)

    _, cls_score, bbox_pred = model.bbox_forward(fpn, torch.cat(rois))
    labels = torch.cat(labels)
    sampled = labels.numel()
    loss_cls = F.cross_entropy(cls_score, labels, reduction="sum") / (max(sampled, 1) + LOSS_EPS)
    positive = torch.nonzero(torch.cat(is_positive)).view(-1)
    own = bbox_pred.view(sampled, NUM_CLASSES, 4)[positive, labels[positive]]
    loss_bbox = (own - torch.cat(box_targets)).abs().sum() / (sampled + LOSS_EPS)

    _, mask_logits = model.mask_forward(fpn, torch.cat(mask_rois))
    mask_labels = torch.cat(mask_labels)
    own_masks = mask_logits[torch.arange(mask_labels.numel()), mask_labels]
    loss_mask = F.binary_cross_entropy_with_logits(own_masks, torch.cat(mask_targets), reduction="mean")
    return {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox, "loss_cls": loss_cls,
            "loss_bbox": loss_bbox, "loss_mask": loss_mask}


# ---------------------------------------------------------------------------
# Eager latency benchmark
# ---------------------------------------------------------------------------


def benchmark(variant="small", size=(800, 1216), batch=1, warmup=2, repeats=5,
              score_thr=SCORE_THR):
    """Median (and all) latencies in ms of ``detect`` (backbone to pasted
    masks) on synthetic images of ``size = (h, w)`` (img_shape = ori_shape,
    scale factor 1)."""
    h, w = size
    model = load_synthetic(build_detector(variant))
    x = synthetic_input(0, (batch, 3, h, w))
    shapes = np.array([[h, w, 3]] * batch)
    scales = np.ones((batch, 4), np.float32)
    return ref.time_eager(
        lambda images: model.detect(images, shapes, scales, shapes, score_thr), x, warmup, repeats
    )


def parse_size(text):
    parts = [int(v) for v in text.lower().split("x")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"size must be H or HxW, got {text!r}")
    return tuple(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="small", choices=sorted(ref.VARIANTS))
    parser.add_argument("--size", type=parse_size, default=(800, 1216), help="H or HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--score-thr", type=float, default=SCORE_THR)
    args = parser.parse_args(argv)
    median, times = benchmark(args.variant, args.size, args.batch, args.warmup, args.repeats,
                              args.score_thr)
    h, w = args.size
    print(
        f"nextvit_{args.variant} + Mask R-CNN torch {torch.__version__} eager, inference_mode, "
        f"batch {args.batch}, {h}x{w}, score_thr {args.score_thr}, "
        f"{torch.get_num_threads()} threads: median {median:.2f} ms over {len(times)} runs "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )


if __name__ == "__main__":
    main()
