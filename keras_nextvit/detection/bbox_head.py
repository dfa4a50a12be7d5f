"""mmdet 2.x's ``Shared2FCBBoxHead`` and its test-time detections.

The head, on ``(R, 7, 7, 256)`` RoI features::

    x   = flatten(transpose(roi_feats, to NCHW))   # channel-major: index c * 49 + y * 7 + x
    x   = relu(shared_fcs.0(x))                    # 12544 -> 1024
    x   = relu(shared_fcs.1(x))                    # 1024 -> 1024
    cls = fc_cls(x)                                # num_classes + 1 logits, background LAST
    reg = fc_reg(x)                                # 4 * num_classes deltas, class-specific

The state dict lists ``fc_cls`` and ``fc_reg`` first (mmdet's ``BBoxHead``
registers them before the shared layers), and so does the walk here.

**Detections** (``test_cfg.rcnn``: ``score_thr=0.05``, NMS IoU 0.5,
``max_per_img=100``), per image: softmax over the logits; class ``c``'s box is
the RoI decoded with deltas ``4c .. 4c+3`` and stds ``(0.1, 0.1, 0.2, 0.2)``,
clipped to ``img_shape``, then divided by ``scale_factor`` (``rescale``: the
boxes, and the NMS, are in original-image coordinates). ``multiclass_nms``:
every (RoI, class) pair with ``score > score_thr`` (strictly), RoI-major; one
batched NMS with the class as the group; the first ``max_per_img``.
"""

import keras
from keras import ops

from ..layers import _PACKAGE, _Composite
from .box_coder import BBOX_HEAD_STDS, decode
from .compiled import compiled
from .nms import batched_nms

RCNN_TEST_CFG = {"score_thr": 0.05, "iou_threshold": 0.5, "max_per_img": 100, "mask_thr_binary": 0.5}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Shared2FCBBoxHead(_Composite):
    """``Shared2FCBBoxHead(fc_out_channels=1024, roi_feat_size=7)``; called
    on NHWC RoI features, returns ``(cls_score, bbox_pred)``."""

    TORCH_LINEAR = True  # its Dense layers are nn.Linear in the checkpoint

    def __init__(self, num_classes=80, fc_channels=1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_channels = fc_channels
        self.shared_fcs_0 = keras.layers.Dense(fc_channels, name="shared_fcs_0")
        self.shared_fcs_1 = keras.layers.Dense(fc_channels, name="shared_fcs_1")
        self.fc_cls = keras.layers.Dense(num_classes + 1, name="fc_cls")
        self.fc_reg = keras.layers.Dense(4 * num_classes, name="fc_reg")

    def torch_children(self):
        yield "fc_cls", self.fc_cls
        yield "fc_reg", self.fc_reg
        yield "shared_fcs.0", self.shared_fcs_0
        yield "shared_fcs.1", self.shared_fcs_1

    def build(self, input_shape):
        size = int(input_shape[1]) * int(input_shape[2]) * int(input_shape[3])
        self.shared_fcs_0.build((None, size))
        self.shared_fcs_1.build((None, self.fc_channels))
        self.fc_cls.build((None, self.fc_channels))
        self.fc_reg.build((None, self.fc_channels))

    def call(self, roi_feats, training=None):
        x = ops.transpose(roi_feats, (0, 3, 1, 2))  # NCHW: PyTorch's flattening order
        x = ops.reshape(x, (ops.shape(x)[0], -1))
        x = ops.relu(self.shared_fcs_0(x))
        x = ops.relu(self.shared_fcs_1(x))
        return self.fc_cls(x), self.fc_reg(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes + 1), (input_shape[0], 4 * self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, fc_channels=self.fc_channels)
        return config


@compiled()
def decode_detections(rois, cls_score, bbox_pred, img_shape, scale_factor):
    """Per RoI and class: ``(boxes (R, K, 4), scores (R, K))``, the boxes in
    original-image coordinates (divided by ``scale_factor``), background
    dropped."""
    scores = ops.softmax(cls_score, axis=-1)[:, :-1]
    count = ops.shape(bbox_pred)[0]
    classes = ops.shape(scores)[1]
    deltas = ops.reshape(bbox_pred, (count, classes, 4))
    priors = ops.broadcast_to(rois[:, None, -4:], ops.shape(deltas))
    boxes = decode(priors, deltas, stds=BBOX_HEAD_STDS, max_shape=img_shape)
    boxes = boxes / ops.convert_to_tensor(scale_factor, "float32")
    return boxes, scores


def multiclass_nms(boxes, scores, score_thr, iou_threshold, max_num):
    """mmdet 2.x's ``multiclass_nms`` on ``(R, K, 4)`` boxes and ``(R, K)``
    scores: ``(det_bboxes (D, 5), det_labels (D,))``, best first."""
    classes = int(ops.shape(scores)[1])
    flat_scores = ops.reshape(scores, (-1,))
    index = ops.convert_to_numpy(flat_scores > score_thr).nonzero()[0]
    if index.size == 0:
        return ops.zeros((0, 5), "float32"), ops.zeros((0,), "int32")
    flat_boxes = ops.take(ops.reshape(boxes, (-1, 4)), index, axis=0)
    flat_scores = ops.take(flat_scores, index)
    labels = ops.convert_to_tensor((index % classes).astype("int32"))
    keep = batched_nms(flat_boxes, flat_scores, labels, iou_threshold, max_num, classes)
    dets = ops.concatenate([ops.take(flat_boxes, keep, axis=0), ops.take(flat_scores, keep)[:, None]], axis=1)
    return dets, ops.take(labels, keep)


__all__ = ["RCNN_TEST_CFG", "Shared2FCBBoxHead", "decode_detections", "multiclass_nms"]
