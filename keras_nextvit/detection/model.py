"""Next-ViT + Mask R-CNN, as the published mmdetection 2.23 COCO checkpoints
compute it.

The parts, with the checkpoint names beside them::

    images -> backbone    (Next-ViT: stem + four stages, raw    backbone.stem / backbone.features
                           last-block outputs, strides 4-32)
           -> neck        (FPN, 256 channels, P2..P5 + P6)      neck.lateral_convs / neck.fpn_convs
           -> rpn_head    (RPNHead on every level)              rpn_head.rpn_{conv,cls,reg}
           -> proposals   (anchors, decoding, top 1000 per level, NMS 0.7)
           -> bbox_head   (RoIAlign 7x7 on P2..P5 + Shared2FCBBoxHead) roi_head.bbox_head.*
           -> detections  (decoding, rescale, multiclass NMS 0.5, top 100)
           -> mask_head   (RoIAlign 14x14 + FCNMaskHead)        roi_head.mask_head.*
           -> masks       (pasted at the original image size)

Calling the model runs the dense part (backbone, neck, RPN head) on a batch;
the post-processing lives in :mod:`.inference`. The backbone is the
classification network without its final norm (upstream's
``with_extra_norm=False``); the checkpoint's ``backbone.norm.*`` and
``backbone.proj_head.*`` are never used.
"""

import keras

from .. import presets
from ..layers import _PACKAGE, InputCheck
from ..model import build_stages, stage_plan
from ..segmentation.fpn import FPN
from ..segmentation.model import variant_depths
from .bbox_head import RCNN_TEST_CFG, Shared2FCBBoxHead
from .mask_head import FCNMaskHead
from .rpn_head import RPN_TEST_CFG, RPNHead

# Box / mask mAP on COCO val2017 of the six published detectors (upstream
# README; Mask R-CNN, ImageNet-1K pretraining).
PUBLISHED = {
    ("small", "1x"): (45.9, 41.8),
    ("base", "1x"): (47.2, 42.8),
    ("large", "1x"): (48.0, 43.2),
    ("small", "3x"): (48.0, 43.2),
    ("base", "3x"): (49.5, 44.4),
    ("large", "3x"): (50.2, 44.8),
}
# Parameters (M) and GFLOPs at 1280x800 that the upstream README reports
# (mmcv's counter: trainable tensors with frozen_stages=1, no attention products).
PUBLISHED_PARAMS_M = {"small": 51.8, "base": 64.9, "large": 77.9}
PUBLISHED_GFLOPS = {"small": 290, "base": 340, "large": 391}
# Stochastic depth of the upstream detection backbones (``nextvit_small`` 0.1,
# ``_base`` and ``_large`` 0.2: presets.VARIANTS); 0.2 for custom depths.
DROP_PATH_RATE = 0.2
FPN_CHANNELS = 256  # the neck's, RPN's and mask head's width (mmdet's neck.out_channels)
FC_CHANNELS = 1024  # the box head's two layers (bbox_head.fc_out_channels)
NUM_ANCHORS = 3
# The test_cfg of all six published configs.
TEST_CFG = {"rpn": dict(RPN_TEST_CFG), "rcnn": dict(RCNN_TEST_CFG)}


def _test_cfg(test_cfg):
    cfg = {"rpn": dict(RPN_TEST_CFG), "rcnn": dict(RCNN_TEST_CFG)}
    for part, values in (test_cfg or {}).items():
        if part not in cfg:
            raise ValueError(f"test_cfg has parts 'rpn' and 'rcnn', got {part!r}.")
        unknown = set(values) - set(cfg[part])
        if unknown:
            raise ValueError(f"test_cfg[{part!r}] has no {sorted(unknown)}; it takes {sorted(cfg[part])}.")
        cfg[part].update(values)
    thr = cfg["rcnn"]["score_thr"]
    if not 0.0 <= float(thr) <= 1.0:
        raise ValueError(f"score_thr must be in [0, 1], got {thr!r}.")
    return cfg


def build_backbone(depths, drop_path_rate=DROP_PATH_RATE, name="backbone"):
    """The detection backbone: images -> the raw outputs of the four stages."""
    inputs = keras.Input(shape=(None, None, 3), name="images")
    x = InputCheck(channels=3, min_size=presets.MIN_INPUT_SIZE, name="input_check")(inputs)
    features = build_stages(x, stage_plan(depths), drop_path_rate=drop_path_rate)
    return keras.Model(inputs, features, name=name)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskRCNN(keras.Model):
    """The detector built by :func:`NextViTMaskRCNN` (see there).

    ``detector(images)`` (NHWC, normalised, padded to a multiple of 32)
    returns a dict of lists, NHWC: ``features`` (4 backbone maps), ``fpn``
    (P2..P6), ``rpn_cls`` and ``rpn_reg`` (5 levels each).
    """

    def __init__(self, depths=(3, 4, 10, 3), num_classes=80, test_cfg=None,
                 drop_path_rate=DROP_PATH_RATE, channels=FPN_CHANNELS, fc_channels=FC_CHANNELS, **kwargs):
        super().__init__(**kwargs)
        self.depths = tuple(int(d) for d in depths)
        self.num_classes = int(num_classes)
        self.test_cfg = _test_cfg(test_cfg)
        self.drop_path_rate = drop_path_rate
        self.channels, self.fc_channels = int(channels), int(fc_channels)
        self.backbone = build_backbone(self.depths, drop_path_rate)
        self.neck = FPN(self.channels, num_levels=4, num_outs=5, name="neck")
        self.rpn_head = RPNHead(self.channels, NUM_ANCHORS, name="rpn_head")
        self.bbox_head = Shared2FCBBoxHead(self.num_classes, self.fc_channels, name="bbox_head")
        self.mask_head = FCNMaskHead(self.num_classes, self.channels, name="mask_head")
        shapes = [tuple(t.shape) for t in self.backbone.outputs]
        self.neck.build(shapes)
        self.rpn_head.build(self.neck.compute_output_shape(shapes))
        self.bbox_head.build((None, 7, 7, self.channels))
        self.mask_head.build((None, 14, 14, self.channels))
        self.built = True

    def torch_parts(self):
        """``(checkpoint prefix, layer)`` in mmdet's state-dict order."""
        for layer in self.backbone.layers:
            yield "backbone." + layer.name.replace("_", "."), layer
        yield "neck", self.neck
        yield "rpn_head", self.rpn_head
        yield "roi_head.bbox_head", self.bbox_head
        yield "roi_head.mask_head", self.mask_head

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        pyramid = self.neck(features)
        rpn_cls, rpn_reg = self.rpn_head(pyramid)
        return {"features": list(features), "fpn": list(pyramid), "rpn_cls": rpn_cls, "rpn_reg": rpn_reg}

    def get_config(self):
        config = super().get_config()
        config.update(
            depths=list(self.depths),
            num_classes=self.num_classes,
            test_cfg=self.test_cfg,
            drop_path_rate=self.drop_path_rate,
            channels=self.channels,
            fc_channels=self.fc_channels,
        )
        return config


def NextViTMaskRCNN(variant="small", num_classes=80, weights=None, backbone_weights=None,
                    test_cfg=None, name=None, drop_path_rate=None, channels=FPN_CHANNELS,
                    fc_channels=FC_CHANNELS):
    """Next-ViT + Mask R-CNN, as the upstream COCO detectors (mmdet 2.23).

    Args:
        variant: ``"small"``, ``"base"`` or ``"large"``, or four stage depths
            (e.g. ``(1, 1, 5, 1)`` for quick experiments).
        num_classes: object classes (COCO: 80; background is extra).
        weights: a detection checkpoint (mmdet ``.pth`` with ``state_dict``,
            ``.safetensors``, ``.npz``, a dict, or a Keras ``.weights.h5``).
        backbone_weights: an ImageNet preset name or classification
            checkpoint to start the backbone from.
        test_cfg: overrides of the published test settings,
            ``{"rpn": {...}, "rcnn": {"score_thr": ..., ...}}``.
        name: model name (default ``nextvit_{variant}_mask_rcnn``).
        drop_path_rate: the backbone's stochastic depth in training
            (default: upstream's, 0.1 for small, 0.2 for base, large and
            custom depths).
        channels: the width of the FPN, the RPN and the mask head (256 in
            every published detector); fc_channels: the box head's two
            layers (1024). Narrower ones (e.g. 64 and 256) make a detector
            that trains in minutes on a CPU, for experiments and the
            tutorials; the published checkpoints do not load into them.

    Example:

    >>> import numpy as np, keras_nextvit
    >>> detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3)
    >>> out = detector(np.zeros((1, 64, 96, 3), "float32"))
    >>> [tuple(p.shape) for p in out["fpn"]]
    [(1, 16, 24, 256), (1, 8, 12, 256), (1, 4, 6, 256), (1, 2, 3, 256), (1, 1, 2, 256)]
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if weights is not None and backbone_weights is not None:
        raise ValueError(
            "Pass weights= (a whole detection checkpoint) or backbone_weights= (an ImageNet "
            "checkpoint for the backbone), not both."
        )
    for what, value in (("channels", channels), ("fc_channels", fc_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    depths = variant_depths(variant)
    tag = variant if isinstance(variant, str) else "custom"
    if drop_path_rate is None:
        drop_path_rate = presets.VARIANTS[variant]["drop_path_rate"] if isinstance(variant, str) else DROP_PATH_RATE
    detector = MaskRCNN(depths, num_classes, test_cfg, drop_path_rate=float(drop_path_rate), channels=channels,
                        fc_channels=fc_channels, name=name or f"nextvit_{tag}_mask_rcnn")

    from .. import weights as weights_lib

    if weights is not None:
        weights_lib.load_checkpoint(detector, weights)
    elif backbone_weights is not None:
        weights_lib.load_backbone_weights(detector.backbone, backbone_weights)
    return detector


__all__ = [
    "FC_CHANNELS", "FPN_CHANNELS", "MaskRCNN", "NextViTMaskRCNN", "PUBLISHED", "PUBLISHED_GFLOPS",
    "PUBLISHED_PARAMS_M", "TEST_CFG", "build_backbone",
]
