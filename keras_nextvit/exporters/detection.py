"""The Mask R-CNN as one ONNX graph: the dense part through tf2onnx, the
post-processing written as ONNX operators.

The exported graph takes one padded, normalised NHWC image of a fixed size
and its meta data, and returns what mmdet's ``simple_test(rescale=True)``
returns before pasting::

    inputs   images (1, H, W, 3), img_shape (2,) = (h, w) of the image inside
             the padding, scale_factor (4,) = (w_s, h_s, w_s, h_s),
             score_thr () = the detections' score threshold
    outputs  proposals (P, 5); boxes (D, 4) in original-image coordinates,
             scores (D,), labels (D,) int64; mask_probs (D, 28, 28)

The post-processing maps onto ONNX's own operators where their semantics are
mmcv's: ``TopK`` (ties: the lower index first), ``NonMaxSuppression``
(greedy, ``IoU > threshold``, ``inter / (area_i + area_j - inter)``, on the
boxes shifted per group as mmcv's ``batched_nms`` does, one class) and
``RoiAlign`` (``coordinate_transformation_mode="half_pixel"``,
``sampling_ratio=0``: the sampling grid adapts to each RoI's size, as in
mmcv). Decoding, the level mapping and the heads are elementwise operators,
``Gemm`` and ``Conv``. The masks are pasted on the host
(:func:`keras_nextvit.detection.paste_masks`): an image-sized mask per
detection is the largest tensor of the pipeline and no runtime operator
reproduces mmdet's painted region.
"""

import dataclasses
import math

import numpy as np

from ..detection.anchors import level_anchors
from ..detection.box_coder import BBOX_HEAD_STDS, WH_RATIO_CLIP
from ..detection.roi_align import FINEST_SCALE, ROI_STRIDES

OPSET = 17
OUTPUTS = ("proposals", "boxes", "scores", "labels", "mask_probs")


class _Graph:
    """A small ONNX graph builder: ``op(type, inputs, **attributes)``
    returns the new node's output name."""

    def __init__(self, prefix="post"):
        self.nodes, self.initializers, self.prefix, self.count = [], [], prefix, 0

    def name(self, hint="t"):
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def const(self, value, dtype=np.float32, hint="c"):
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, outputs=1, hint=None, **attributes):
        from onnx import helper

        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names

    # -- helpers ----------------------------------------------------------
    def column(self, x, index):
        return self.op("Gather", [x, self.const(index, np.int64)], axis=1)

    def flat(self, x):
        return self.op("Reshape", [x, self.const([-1], np.int64)])

    def nonzero(self, mask):
        return self.flat(self.op("NonZero", [mask]))


def _decode(g, priors, deltas, stds, max_shape_xyxy):
    """``delta2bbox`` (means 0) on ``(..., 4)`` priors and deltas, clipped to
    ``max_shape_xyxy`` = ``(w, h, w, h)``; operation for operation as in
    :func:`keras_nextvit.detection.box_coder.decode`."""
    half = g.const(0.5)
    limit = abs(math.log(WH_RATIO_CLIP))
    denorm = deltas if stds is None else g.op("Mul", [deltas, g.const(stds)])
    dxy = g.op("Slice", [denorm, g.const([0], np.int64), g.const([2], np.int64), g.const([-1], np.int64)])
    dwh = g.op("Slice", [denorm, g.const([2], np.int64), g.const([4], np.int64), g.const([-1], np.int64)])
    p1 = g.op("Slice", [priors, g.const([0], np.int64), g.const([2], np.int64), g.const([-1], np.int64)])
    p2 = g.op("Slice", [priors, g.const([2], np.int64), g.const([4], np.int64), g.const([-1], np.int64)])
    pxy = g.op("Mul", [g.op("Add", [p1, p2]), half])
    pwh = g.op("Sub", [p2, p1])
    dwh = g.op("Clip", [dwh, g.const(-limit), g.const(limit)])
    gxy = g.op("Add", [pxy, g.op("Mul", [pwh, dxy])])
    gwh = g.op("Mul", [pwh, g.op("Exp", [dwh])])
    low = g.op("Sub", [gxy, g.op("Mul", [gwh, half])])
    high = g.op("Add", [gxy, g.op("Mul", [gwh, half])])
    boxes = g.op("Concat", [low, high], axis=-1)
    zero = g.const(0.0)
    return g.op("Min", [g.op("Max", [boxes, zero]), max_shape_xyxy])


def _batched_nms(g, boxes, scores, groups_f, iou, max_num):
    """mmcv's ``batched_nms`` (shift by ``group * (max + 1)``, one NMS):
    the kept indices, best first."""
    largest = g.op("ReduceMax", [boxes], keepdims=0)
    offsets = g.op("Mul", [groups_f, g.op("Add", [largest, g.const(1.0)])])
    shifted = g.op("Add", [boxes, g.op("Unsqueeze", [offsets, g.const([1], np.int64)])])
    selected = g.op(
        "NonMaxSuppression",
        [g.op("Unsqueeze", [shifted, g.const([0], np.int64)]),
         g.op("Unsqueeze", [scores, g.const([0, 1], np.int64)]),
         g.const([max_num], np.int64), g.const([iou])],
    )
    return g.flat(g.column(selected, 2))


def _roi_levels(g, boxes):
    """mmdet's level of each ``(n, 4)`` RoI box (float): floor(log2(scale /
    56 + 1e-6)) clamped to [0, 3]."""
    w = g.op("Sub", [g.column(boxes, 2), g.column(boxes, 0)])
    h = g.op("Sub", [g.column(boxes, 3), g.column(boxes, 1)])
    scale = g.op("Sqrt", [g.op("Mul", [w, h])])
    ratio = g.op("Add", [g.op("Div", [scale, g.const(float(FINEST_SCALE))]), g.const(1e-6)])
    log2 = g.op("Div", [g.op("Log", [ratio]), g.const(math.log(2.0))])
    return g.op("Clip", [g.op("Floor", [log2]), g.const(0.0), g.const(float(len(ROI_STRIDES) - 1))])


def _multilevel_roi_align(g, pyramid_nchw, boxes, size):
    """Each RoI pooled from its level (RoiAlign, half_pixel, adaptive
    sampling), back in RoI order: ``(n, C, size, size)``."""
    levels = _roi_levels(g, boxes)
    orders, pieces = [], []
    for level, (feature, stride) in enumerate(zip(pyramid_nchw, ROI_STRIDES)):
        index = g.nonzero(g.op("Equal", [levels, g.const(float(level))]))
        chosen = g.op("Gather", [boxes, index], axis=0)
        batch = g.op("Mul", [index, g.const(0, np.int64)])  # one image: batch index 0
        pieces.append(g.op(
            "RoiAlign", [feature, chosen, batch], mode="avg", output_height=size, output_width=size,
            sampling_ratio=0, spatial_scale=1.0 / stride, coordinate_transformation_mode="half_pixel",
        ))
        orders.append(index)
    order = g.op("Concat", orders, axis=0)
    pooled = g.op("Concat", pieces, axis=0)
    zeros = g.op("Mul", [pooled, g.const(0.0)])
    return g.op("ScatterND", [zeros, g.op("Unsqueeze", [order, g.const([1], np.int64)]), pooled])


def _numpy(variable):
    from keras import ops

    return np.asarray(ops.convert_to_numpy(variable))


def _gemm(g, x, layer, relu):
    y = g.op("Gemm", [x, g.const(_numpy(layer.kernel)), g.const(_numpy(layer.bias))])
    return g.op("Relu", [y]) if relu else y


def _conv(g, x, layer, relu, pads=(1, 1, 1, 1)):
    kernel = _numpy(layer.kernel).transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    y = g.op("Conv", [x, g.const(kernel), g.const(_numpy(layer.bias))], pads=list(pads))
    return g.op("Relu", [y]) if relu else y


def post_processing_graph(detector, image_size):
    """The ONNX post-processing graph for a fixed ``image_size`` (h, w):
    inputs the dense outputs (NHWC) and the meta data, outputs
    :data:`OUTPUTS`. Returns ``(graph, input names)``."""
    from onnx import TensorProto, helper

    height, width = image_size
    rpn_cfg, rcnn_cfg = detector.test_cfg["rpn"], detector.test_cfg["rcnn"]
    shapes = [(math.ceil(height / s), math.ceil(width / s)) for s in (4, 8, 16, 32)]
    shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    anchors = level_anchors(shapes)
    num_anchors = detector.rpn_head.num_anchors
    g = _Graph()
    inputs, names = [], {}
    for i, (h, w) in enumerate(shapes, 1):
        for key, channels in (("rpn_cls", num_anchors), ("rpn_reg", 4 * num_anchors)):
            names[f"{key}{i}"] = f"{key}{i}"
            inputs.append(helper.make_tensor_value_info(f"{key}{i}", TensorProto.FLOAT, [1, h, w, channels]))
        if i <= 4:
            names[f"fpn{i}"] = f"fpn{i}"
            inputs.append(helper.make_tensor_value_info(f"fpn{i}", TensorProto.FLOAT, [1, h, w, detector.channels]))
    inputs.append(helper.make_tensor_value_info("img_shape", TensorProto.FLOAT, [2]))
    inputs.append(helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, [4]))
    inputs.append(helper.make_tensor_value_info("score_thr", TensorProto.FLOAT, []))

    # max shape (w, h, w, h) for clipping
    hw = "img_shape"
    wh = g.op("Gather", [hw, g.const([1, 0], np.int64)], axis=0)
    max_xyxy = g.op("Concat", [wh, wh], axis=0)

    # ---- RPN proposals
    scores_l, deltas_l, priors_l, levels_l = [], [], [], []
    for level, level_anchors_ in enumerate(anchors):
        i = level + 1
        scores = g.op("Sigmoid", [g.flat(names[f"rpn_cls{i}"])])
        deltas = g.op("Reshape", [names[f"rpn_reg{i}"], g.const([-1, 4], np.int64)])
        priors = g.const(level_anchors_)
        count = level_anchors_.shape[0]
        if count > rpn_cfg["nms_pre"]:
            scores, best = g.op("TopK", [scores, g.const([rpn_cfg["nms_pre"]], np.int64)], outputs=2,
                                largest=1, sorted=1)
            deltas = g.op("Gather", [deltas, best], axis=0)
            priors = g.op("Gather", [priors, best], axis=0)
            count = rpn_cfg["nms_pre"]
        scores_l.append(scores)
        deltas_l.append(deltas)
        priors_l.append(priors)
        levels_l.append(np.full(count, level, np.float32))
    scores = g.op("Concat", scores_l, axis=0)
    boxes = _decode(g, g.op("Concat", priors_l, axis=0), g.op("Concat", deltas_l, axis=0), None, max_xyxy)
    levels = g.const(np.concatenate(levels_l))
    w = g.op("Sub", [g.column(boxes, 2), g.column(boxes, 0)])
    h = g.op("Sub", [g.column(boxes, 3), g.column(boxes, 1)])
    size = g.const(float(rpn_cfg["min_bbox_size"]))
    valid = g.nonzero(g.op("And", [g.op("Greater", [w, size]), g.op("Greater", [h, size])]))
    boxes = g.op("Gather", [boxes, valid], axis=0)
    scores = g.op("Gather", [scores, valid], axis=0)
    levels = g.op("Gather", [levels, valid], axis=0)
    keep = _batched_nms(g, boxes, scores, levels, rpn_cfg["iou_threshold"], rpn_cfg["max_per_img"])
    proposal_boxes = g.op("Gather", [boxes, keep], axis=0)
    proposal_scores = g.op("Gather", [scores, keep], axis=0)
    g.op("Concat", [proposal_boxes, g.op("Unsqueeze", [proposal_scores, g.const([1], np.int64)])],
         axis=1, hint="proposals")
    proposals = g.nodes[-1].output[0]

    # ---- the box head
    pyramid = [g.op("Transpose", [names[f"fpn{i}"]], perm=[0, 3, 1, 2]) for i in range(1, 5)]
    feats = _multilevel_roi_align(g, pyramid, proposal_boxes, 7)
    head = detector.bbox_head
    x = g.op("Flatten", [feats], axis=1)  # channel-major, as the checkpoint's fc expects
    x = _gemm(g, x, head.shared_fcs_0, True)
    x = _gemm(g, x, head.shared_fcs_1, True)
    cls_score = _gemm(g, x, head.fc_cls, False)
    bbox_pred = _gemm(g, x, head.fc_reg, False)

    # ---- detections: softmax, class-specific decoding, rescale, multiclass NMS
    classes = head.num_classes
    probs = g.op("Softmax", [cls_score], axis=1)
    probs = g.op("Slice", [probs, g.const([0], np.int64), g.const([classes], np.int64), g.const([1], np.int64)])
    deltas = g.op("Reshape", [bbox_pred, g.const([-1, classes, 4], np.int64)])
    priors = g.op("Expand", [g.op("Unsqueeze", [proposal_boxes, g.const([1], np.int64)]),
                             g.const([1, classes, 4], np.int64)])
    det_boxes = _decode(g, priors, deltas, BBOX_HEAD_STDS, max_xyxy)
    det_boxes = g.op("Div", [det_boxes, "scale_factor"])
    flat_scores = g.flat(probs)
    candidates = g.nonzero(g.op("Greater", [flat_scores, "score_thr"]))
    cand_boxes = g.op("Gather", [g.op("Reshape", [det_boxes, g.const([-1, 4], np.int64)]), candidates], axis=0)
    cand_scores = g.op("Gather", [flat_scores, candidates], axis=0)
    cand_labels = g.op("Mod", [candidates, g.const(classes, np.int64)])
    keep = _batched_nms(g, cand_boxes, cand_scores, g.op("Cast", [cand_labels], to=TensorProto.FLOAT),
                        rcnn_cfg["iou_threshold"], rcnn_cfg["max_per_img"])
    out_boxes = g.op("Gather", [cand_boxes, keep], axis=0, hint="boxes")
    out_scores = g.op("Gather", [cand_scores, keep], axis=0, hint="scores")
    out_labels = g.op("Gather", [cand_labels, keep], axis=0, hint="labels")

    # ---- the mask head on the detections (mmdet's RoIs: the boxes times scale_factor)
    mask_boxes = g.op("Mul", [out_boxes, "scale_factor"])
    x = _multilevel_roi_align(g, pyramid, mask_boxes, 14)
    mask = detector.mask_head
    for conv in mask.convs:
        x = _conv(g, x, conv, True)
    up = _numpy(mask.upsample.kernel).transpose(3, 2, 0, 1)  # (2, 2, out, in) -> (in, out, 2, 2)
    x = g.op("Relu", [g.op("ConvTranspose", [x, g.const(up), g.const(_numpy(mask.upsample.bias))],
                           strides=[2, 2], kernel_shape=[2, 2])])
    logits_kernel = _numpy(mask.conv_logits.kernel).T[:, :, None, None]  # a Dense: (in, out)
    logits = g.op("Conv", [x, g.const(logits_kernel), g.const(_numpy(mask.conv_logits.bias))])
    index = g.op("Expand", [g.op("Reshape", [out_labels, g.const([-1, 1, 1, 1], np.int64)]),
                            g.const([1, 1, 28, 28], np.int64)])
    chosen = g.op("GatherElements", [logits, index], axis=1)
    mask_probs = g.op("Reshape", [g.op("Sigmoid", [chosen]), g.const([-1, 28, 28], np.int64)])

    results = {"proposals": proposals, "boxes": out_boxes, "scores": out_scores, "labels": out_labels,
               "mask_probs": mask_probs}
    for name, tensor in results.items():  # graph outputs under their own names
        g.nodes.append(helper.make_node("Identity", [tensor], [name]))
    outputs = [
        helper.make_tensor_value_info("proposals", TensorProto.FLOAT, [None, 5]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("mask_probs", TensorProto.FLOAT, [None, 28, 28]),
    ]
    graph = helper.make_graph(g.nodes, "mask_rcnn_post_processing", inputs, outputs, g.initializers)
    return graph, [i.name for i in inputs]


# --------------------------------------------------------------------------
# The whole detector
# --------------------------------------------------------------------------

DENSE_OUTPUTS = tuple(f"fpn{i}" for i in range(1, 5)) + tuple(
    f"{key}{i}" for key in ("rpn_cls", "rpn_reg") for i in range(1, 6)
)


def dense_model(detector, image_size, merge_bn=True):
    """A functional model of the dense part for a fixed image size (batch
    1): ``images -> [P2..P5, rpn_cls1..5, rpn_reg1..5]`` (NHWC), the
    backbone's BatchNorms folded (``merge_bn``)."""
    import keras

    from ..reparam import merge_batchnorm

    height, width = image_size
    backbone = detector.backbone
    if merge_bn:
        backbone = merge_batchnorm(backbone, input_shape=(height, width, 3))
    inputs = keras.Input(batch_shape=(1, height, width, 3), name="images")
    pyramid = detector.neck(backbone(inputs))
    cls_maps, reg_maps = detector.rpn_head(pyramid)
    return keras.Model(inputs, list(pyramid[:4]) + list(cls_maps) + list(reg_maps),
                       name=f"{detector.name}_dense")


def check_image_size(image_size):
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}.") from None
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise ValueError(
            f"image_size must be two multiples of 32 of at least 32 (the padded input), got {image_size!r}."
        )
    return height, width


def export_detector_onnx(detector, path, image_size=(800, 1216), merge_bn=True):
    """Write ``detector`` as one ONNX graph for ``image_size`` (the padded
    input, multiples of 32); returns the ``onnx.ModelProto``."""
    import os
    import tempfile

    import onnx
    from onnx import compose, helper

    from .onnx import export_onnx

    height, width = check_image_size(image_size)
    with tempfile.TemporaryDirectory() as folder:
        dense = export_onnx(dense_model(detector, (height, width), merge_bn),
                            os.path.join(folder, "dense.onnx"), batch_size=1, opset=OPSET)
    graph, _ = post_processing_graph(detector, (height, width))
    opsets = [helper.make_opsetid(d.domain, d.version) for d in dense.opset_import]
    post = helper.make_model(graph, opset_imports=opsets, ir_version=dense.ir_version)
    io_map = [(out.name, name) for out, name in zip(dense.graph.output, DENSE_OUTPUTS)]
    merged = compose.merge_models(dense, post, io_map=io_map)
    merged.graph.name = f"{detector.name}_mask_rcnn"
    onnx.save(merged, str(path))
    onnx.checker.check_model(str(path))
    return merged


def export_detector_openvino(detector, path, image_size=(800, 1216), merge_bn=True):
    """The ONNX graph of :func:`export_detector_onnx` converted to OpenVINO
    IR (``.xml`` + ``.bin``)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        onnx_path = os.path.join(folder, "detector.onnx")
        export_detector_onnx(detector, onnx_path, image_size, merge_bn)
        return onnx_to_openvino(onnx_path, path)


def onnx_to_openvino(onnx_path, path):
    """An exported detector's ONNX file as OpenVINO IR at ``path`` (weights
    kept in float32: OpenVINO's default float16 storage moves the anchors
    and coordinates)."""
    from . import openvino as openvino_export

    path = openvino_export.check_path(path)
    ov = openvino_export.require()
    with openvino_export.no_telemetry():
        converted = ov.convert_model(str(onnx_path))
    ov.save_model(converted, str(path), compress_to_fp16=False)
    return converted


def _session(path, threads):
    """``(run(feed) -> {name: array}, input shape)`` for an ``.onnx`` file
    (ONNX Runtime) or an OpenVINO ``.xml`` (float32 arithmetic, as the
    verification needs: OpenVINO would use bfloat16 on CPUs that have it)."""
    if str(path).endswith(".xml"):
        from . import openvino as openvino_export

        from .verify import runtime_threads

        ov = openvino_export.require()
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        threads = runtime_threads(threads)
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        names = {}
        for output in compiled.outputs:
            name = next((n for n in OUTPUTS if n in output.get_names()), None)
            if name:
                names[output] = name
        images = [i for i in compiled.inputs if "images" in i.get_names()]
        shape = [int(d) for d in images[0].get_partial_shape().to_shape()] if images else None

        def run(feed):
            result = compiled(feed)
            return {name: np.asarray(result[output]) for output, name in names.items()}

        return run, shape
    from .onnx import ort_session

    session = ort_session(path, threads)
    output_names = [o.name for o in session.get_outputs()]

    def run(feed):
        return dict(zip(output_names, session.run(None, feed)))

    return run, session.get_inputs()[0].shape


class DetectorRunner:
    """An exported detector (``.onnx`` in ONNX Runtime, ``.xml`` in
    OpenVINO) with the interface of :func:`keras_nextvit.detect`:
    ``runner(images, score_thr=0.05)``."""

    def __init__(self, path, threads=None):
        self._run, shape = _session(path, threads)
        self.image_size = (int(shape[1]), int(shape[2]))

    def raw(self, image, img_shape, scale_factor, score_thr=0.05):
        """The graph's outputs for one padded, normalised ``(1, H, W, 3)`` image."""
        feed = {
            "images": np.asarray(image, np.float32),
            "img_shape": np.asarray(img_shape[:2], np.float32),
            "scale_factor": np.asarray(scale_factor, np.float32),
            "score_thr": np.asarray(score_thr, np.float32),
        }
        return self._run(feed)

    def prepare(self, image, scale=(1333, 800)):
        """mmdet's test pipeline for one image, padded to the exported size:
        ``(padded (1, H, W, 3), img_shapes, scale_factors, ori_shapes)``."""
        from ..detection.inference import prepare

        batch, img_shapes, scale_factors, ori_shapes = prepare([image], scale)
        height, width = self.image_size
        if batch.shape[1] > height or batch.shape[2] > width:
            raise ValueError(
                f"The resized image is {img_shapes[0][0]}x{img_shapes[0][1]}; the exported detector "
                f"takes at most {height}x{width}: resize with a smaller scale."
            )
        padded = np.zeros((1, height, width, 3), np.float32)
        padded[:, : batch.shape[1], : batch.shape[2]] = batch
        return padded, img_shapes, scale_factors, ori_shapes

    def __call__(self, images, score_thr=0.05, scale=(1333, 800)):
        """Detect in one image or a list (mmdet's test pipeline on the host,
        padded to the exported size; masks pasted on the host)."""
        single = not isinstance(images, (list, tuple))
        results = []
        for image in [images] if single else images:
            padded, img_shapes, scale_factors, ori_shapes = self.prepare(image, scale)
            out = self.raw(padded, img_shapes[0], scale_factors[0], score_thr)
            results.append(self.result(out, scale_factors[0], ori_shapes[0]))
        return results[0] if single else results

    @staticmethod
    def result(out, scale_factor, ori_shape):
        """:func:`keras_nextvit.detect`'s result from the graph's outputs:
        the masks pasted at the original size (mmdet's mask RoIs are the
        boxes times ``scale_factor``, pasted after dividing again)."""
        from ..detection.mask_head import paste_masks

        mask_boxes = (out["boxes"] * scale_factor) / scale_factor
        masks = np.asarray(paste_masks(out["mask_probs"], mask_boxes, ori_shape[:2]))
        return {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"], "masks": masks}


def _box_iou(a, b):
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


@dataclasses.dataclass
class DetectionExportReport:
    """How an exported detector agrees with the Keras one on some images:
    detections matched by label and box (IoU >= 0.99), the matched pairs'
    box IoU, score error and mask agreement, and the latencies."""

    format: str
    path: str
    file_size_bytes: int
    image_size: tuple
    images: int
    keras_detections: int
    export_detections: int
    matched: int
    min_box_iou: float
    max_score_error: float
    mask_agreement: float
    proposal_counts_equal: bool
    proposals_max_error: float
    latency_ms: float
    keras_latency_ms: float
    verification_images: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def match_rate(self):
        total = max(self.keras_detections, self.export_detections)
        return 1.0 if total == 0 else self.matched / total

    def __str__(self):
        return "\n".join([
            f"{self.format} -> {self.path} ({self.file_size_bytes / 2**20:.1f} MiB, input {self.image_size})",
            f"  {self.images} images: {self.keras_detections} Keras / {self.export_detections} exported "
            f"detections, {self.matched} matched ({100 * self.match_rate:.1f}%); matched boxes IoU >= "
            f"{self.min_box_iou:.5f}, scores within {self.max_score_error:.2g}, masks "
            f"{100 * self.mask_agreement:.3f}% equal; proposals (raw output) "
            f"{'same counts' if self.proposal_counts_equal else 'OTHER COUNTS'}, as sets within "
            f"{self.proposals_max_error:.2g} of the largest coordinate",
            f"  detect latency {self.latency_ms:.0f} ms vs Keras {self.keras_latency_ms:.0f} ms (first image, "
            "after the verification run; tools/benchmark.py --task detection measures properly)",
        ])


def _set_error(ours, theirs):
    """The largest distance (max over the five values) from a row of
    ``ours`` to its nearest row of ``theirs``, relative to the largest
    coordinate: proposals compared as sets, as the detection README says,
    since near-tied scores may come out in another order."""
    if not len(ours):
        return 0.0
    largest = max(float(np.abs(theirs[:, :4]).max()), 1e-12)
    nearest = np.abs(ours[:, None, :] - theirs[None, :, :]).max(-1).min(1)
    return float(nearest.max()) / largest


def compare_detections(ours, theirs, iou=0.99):
    """``(matched, min IoU, max score error, equal mask pixels, mask
    pixels)`` between two results of one image (match: same label, box IoU
    >= ``iou``, each used once, best score first)."""
    matched, min_iou, score_error, equal, total = 0, 1.0, 0.0, 0, 0
    if len(ours["scores"]) and len(theirs["scores"]):
        overlaps = _box_iou(np.asarray(ours["boxes"]), np.asarray(theirs["boxes"]))
        overlaps[np.asarray(ours["labels"])[:, None] != np.asarray(theirs["labels"])[None, :]] = 0
        used = set()
        for i in range(len(ours["scores"])):
            order = [j for j in np.argsort(-overlaps[i]) if j not in used]
            if not order or overlaps[i, order[0]] < iou:
                continue
            j = order[0]
            used.add(j)
            matched += 1
            min_iou = min(min_iou, float(overlaps[i, j]))
            score_error = max(score_error, abs(float(ours["scores"][i]) - float(theirs["scores"][j])))
            a, b = np.asarray(ours["masks"][i]), np.asarray(theirs["masks"][j])
            equal += int((a == b).sum())
            total += a.size
    return matched, min_iou, score_error, equal, total


def verify_detector(detector, runner, images, path, fmt="onnx", repeats=1):
    """Run ``images`` through both and report (:class:`DetectionExportReport`)."""
    import os
    import time

    from ..detection.inference import detect, run

    scale = (max(runner.image_size), min(runner.image_size))
    score_thr = detector.test_cfg["rcnn"]["score_thr"]
    totals = dict(keras=0, export=0, matched=0, equal=0, pixels=0)
    min_iou, score_error, counts_equal, proposal_error = 1.0, 0.0, True, 0.0
    for image in images:
        # both on the same padded input (the exported size)
        padded, img_shapes, scale_factors, ori_shapes = runner.prepare(image, scale)
        keras_out = run(detector, padded, img_shapes, scale_factors, ori_shapes, score_thr, raw=False)
        ours = {"boxes": keras_out["det_bboxes"][:, :4], "scores": keras_out["det_bboxes"][:, 4],
                "labels": keras_out["det_labels"], "masks": keras_out["masks_img0"]}
        raw = runner.raw(padded, img_shapes[0], scale_factors[0], score_thr)  # one run: result and proposals
        theirs = runner.result(raw, scale_factors[0], ori_shapes[0])
        exported = raw["proposals"]
        if exported.shape == keras_out["proposals"].shape:
            proposal_error = max(proposal_error, _set_error(exported, keras_out["proposals"]))
        else:
            counts_equal = False
        matched, low, error, equal, pixels = compare_detections(ours, theirs)
        totals["keras"] += len(ours["scores"])
        totals["export"] += len(theirs["scores"])
        totals["matched"] += matched
        totals["equal"] += equal
        totals["pixels"] += pixels
        min_iou, score_error = min(min_iou, low), max(score_error, error)

    def median_ms(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(images[0])
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))

    size = os.path.getsize(path)
    if str(path).endswith(".xml") and os.path.exists(os.path.splitext(str(path))[0] + ".bin"):
        size += os.path.getsize(os.path.splitext(str(path))[0] + ".bin")  # OpenVINO's weights
    return DetectionExportReport(
        format=fmt, path=str(path), file_size_bytes=size,
        image_size=tuple(runner.image_size), images=len(images), keras_detections=totals["keras"],
        export_detections=totals["export"], matched=totals["matched"], min_box_iou=min_iou,
        max_score_error=score_error,
        mask_agreement=1.0 if not totals["pixels"] else totals["equal"] / totals["pixels"],
        proposal_counts_equal=counts_equal, proposals_max_error=proposal_error,
        verification_images=list(images),
        latency_ms=median_ms(lambda image: runner(image, score_thr, scale=scale)),
        keras_latency_ms=median_ms(lambda image: detect(detector, image, scale=scale)),
    )


__all__ = ["DetectionExportReport", "DetectorRunner", "compare_detections", "export_detector_openvino",
           "onnx_to_openvino", "verify_detector", "OPSET", "OUTPUTS", "dense_model", "export_detector_onnx", "post_processing_graph"]
