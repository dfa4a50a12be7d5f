"""The Mask R-CNN model itself: its state dict against mmdet's key lists, its
size against the upstream README, saving and loading, and clear errors for
the checkpoints and settings it cannot take."""

import json

import keras
import numpy as np
import pytest
from conftest import DATA, synthetic_checkpoint

import keras_nextvit
from keras_nextvit import flops, synthetic, weights
from keras_nextvit.detection import NextViTMaskRCNN, roi_align
from keras_nextvit.detection.model import PUBLISHED_GFLOPS
from keras_nextvit.finetune import freeze_stages

DET_DATA = DATA / "detection"
UNUSED = ("backbone.norm.", "backbone.proj_head.")
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
# Trainable parameters with upstream's frozen_stages=1 plus the unused
# norm and classifier: the upstream README's 51.8 / 64.9 / 77.9 M are these,
# as mmcv's get_model_complexity_info counts them.
FROZEN_COUNT_M = {"small": 51.79, "base": 64.85, "large": 77.90}
TINY = (1, 1, 5, 1)


def key_list(variant):
    keys = json.loads((DET_DATA / f"det_maskrcnn_{variant}.keys.json").read_text())
    return [(name, tuple(shape)) for name, shape in keys]


def numel(shape):
    return int(np.prod(shape, dtype=np.int64))


@pytest.fixture(scope="module")
def small():
    return NextViTMaskRCNN("small")


def test_state_dict_is_mmdets_without_the_unused_tensors(small):
    expected = [(n, s) for n, s in key_list("small") if not n.startswith(UNUSED)]
    assert weights.torch_state_dict_spec(small) == expected


@pytest.mark.parametrize("variant", ["small", "base", "large"])
@pytest.mark.slow
def test_parameter_counts(variant, small):
    detector = small if variant == "small" else NextViTMaskRCNN(variant)
    keys = key_list(variant)
    used = [(n, s) for n, s in keys if not n.startswith(UNUSED)]
    parameters = sum(numel(s) for n, s in used if not n.endswith(BN_STATISTICS))
    statistics = sum(numel(s) for n, s in used if n.endswith(("running_mean", "running_var")))
    assert detector.count_params() - statistics == parameters

    unused = sum(numel(s) for n, s in keys if n.startswith(UNUSED))
    freeze_stages(detector.backbone, 1)
    try:
        trainable = sum(numel(w.shape) for w in detector.trainable_weights)
    finally:
        keras_nextvit.unfreeze(detector.backbone)
    assert round((trainable + unused) / 1e6, 2) == FROZEN_COUNT_M[variant]

    # MACs at 1280x800 as mmdet's get_flops.py counts them (no attention
    # products), against the upstream README's GFLOPs: within 0.5%
    plain = flops.count_detector_macs(detector, (1280, 800), attention=False) / 1e9
    assert abs(plain / PUBLISHED_GFLOPS[variant] - 1) < 0.005, plain
    assert flops.count_detector_macs(detector, (1280, 800)) / 1e9 > plain + 10  # + attention


def test_save_and_load_round_trip(tmp_path):
    detector = NextViTMaskRCNN(TINY, num_classes=3, test_cfg={"rcnn": {"score_thr": 0.3}})
    images = np.random.default_rng(0).uniform(-1, 1, (1, 64, 96, 3)).astype("float32")
    expected = detector(images)
    path = tmp_path / "detector.keras"
    detector.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.num_classes == 3 and loaded.depths == TINY
    assert loaded.test_cfg["rcnn"]["score_thr"] == 0.3
    got = loaded(images)
    for key in ("fpn", "rpn_cls", "rpn_reg"):
        for a, b in zip(got[key], expected[key]):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6)
    h5 = tmp_path / "detector.weights.h5"
    detector.save_weights(h5)
    again = NextViTMaskRCNN(TINY, num_classes=3, weights=h5)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(again.bbox_head.fc_cls.kernel),
        keras.ops.convert_to_numpy(detector.bbox_head.fc_cls.kernel),
    )


def test_the_wrong_checkpoints_say_what_they_are(small):
    tiny = NextViTMaskRCNN(TINY, num_classes=80)
    classification = synthetic_checkpoint("small", "official")
    with pytest.raises(weights.CheckpointError, match=r"ImageNet classification checkpoint .*backbone_weights="):
        keras_nextvit.load_torch_weights(small, classification)
    seg_keys = json.loads((DATA / "segmentation" / "seg_fpn_small.keys.json").read_text())
    segmentation = {name: np.zeros(shape, np.float32) for name, shape in seg_keys}
    with pytest.raises(weights.CheckpointError, match=r"segmentation model \(Next-ViT-S \+ Semantic FPN"):
        keras_nextvit.load_torch_weights(small, segmentation)
    detection = synthetic.synthetic_state_dict(key_list("small"))
    with pytest.raises(weights.CheckpointError, match=r"Next-ViT-S \+ Mask R-CNN, 80 classes; .* another backbone"):
        keras_nextvit.load_torch_weights(tiny, detection)
    three = NextViTMaskRCNN("small", num_classes=3)
    before = keras.ops.convert_to_numpy(three.rpn_head.rpn_conv.kernel).copy()
    with pytest.raises(weights.CheckpointError, match=r"fc_cls.weight.*80 classes: build the detector with that num_classes"):
        keras_nextvit.load_torch_weights(three, detection)
    # nothing was assigned by the failed load (rpn_conv comes before the heads)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(three.rpn_head.rpn_conv.kernel), before)
    # the classifier and the segmenter say what a detection checkpoint is
    classifier = keras_nextvit.NextViT(TINY, input_shape=(64, 64, 3))
    with pytest.raises(weights.CheckpointError, match=r"detection model \(Next-ViT-S \+ Mask R-CNN, 80 classes\)"):
        keras_nextvit.load_torch_weights(classifier, detection)
    # ... and its backbone starts a detector, a classifier's backbone too
    keras_nextvit.load_backbone_weights(small.backbone, detection)
    keras_nextvit.load_backbone_weights(small.backbone, classification)


def test_bad_settings_and_inputs():
    with pytest.raises(ValueError, match=r"score_thr must be in \[0, 1\], got 1.5"):
        NextViTMaskRCNN(TINY, test_cfg={"rcnn": {"score_thr": 1.5}})
    with pytest.raises(ValueError, match=r"test_cfg\['rcnn'\] has no \['iou'\]"):
        NextViTMaskRCNN(TINY, test_cfg={"rcnn": {"iou": 0.5}})
    with pytest.raises(ValueError, match=r"num_classes must be a positive integer"):
        NextViTMaskRCNN(TINY, num_classes=0)
    with pytest.raises(ValueError, match=r"variant must be one of"):
        NextViTMaskRCNN("tiny")
    detector = NextViTMaskRCNN(TINY, num_classes=3)
    with pytest.raises(ValueError, match=r"image height 16 is below the minimum of 32 pixels"):
        detector(np.zeros((1, 16, 64, 3), "float32"))
    with pytest.raises(ValueError, match=r"x2 >= x1"):
        roi_align(np.zeros((1, 8, 8, 4), "float32"), np.array([[0, 5, 0, 2, 4]], "float32"), 7, 0.25)
