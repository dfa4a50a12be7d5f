"""Segmentation metrics: confusion matrix, scores, MeanIoU, folder evaluation, ADE20K data.

The expected matrices and scores below are worked out by hand from the tiny
examples; the MeanIoU tests compare the Keras metric (active backend) with the
NumPy path, with an independent NumPy bilinear resize for low-resolution logits.
"""

import math

import keras
import numpy as np
import pytest
from conftest import load_tool
from PIL import Image

from keras_nextvit.segmentation import ade20k
from keras_nextvit.segmentation.metrics import (
    MeanIoU,
    confusion_matrix,
    evaluate_folder,
    segmentation_scores,
)


# -- confusion_matrix -------------------------------------------------------------

# 3 classes. Counted pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0);
# the 255 pixel is not counted whatever its prediction.
LABEL = np.array([[0, 0, 1, 255], [1, 2, 2, 0]], np.uint8)
PRED = np.array([[0, 1, 1, 2], [1, 2, 0, 0]], np.int64)
EXPECTED = np.array(
    [
        [2, 1, 0],  # ground truth 0: twice 0, once 1
        [0, 2, 0],  # ground truth 1: twice 1
        [1, 0, 1],  # ground truth 2: once 0, once 2
    ]
)

# reduce_zero_label: raw 0 -> ignored, 255 stays ignored, v -> v - 1.
RAW_LABEL = np.array([[0, 1, 1, 255], [2, 3, 3, 0]], np.uint8)  # -> [[i, 0, 0, i], [1, 2, 2, i]]
RAW_PRED = np.array([[2, 0, 1, 0], [1, 2, 0, 1]], np.int64)
# counted (gt, pred): (0,0) (0,1) (1,1) (2,2) (2,0)
EXPECTED_REDUCED = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_confusion_matrix_by_hand():
    confusion = confusion_matrix(PRED, LABEL, 3)
    assert confusion.dtype == np.int64 and confusion.shape == (3, 3)
    np.testing.assert_array_equal(confusion, EXPECTED)
    # a batch counts the same as its images
    batch = confusion_matrix(np.stack([PRED, PRED]), np.stack([LABEL, LABEL]), 3)
    np.testing.assert_array_equal(batch, 2 * EXPECTED)


def test_confusion_matrix_reduce_zero_label_by_hand():
    confusion = confusion_matrix(RAW_PRED, RAW_LABEL, 3, reduce_zero_label=True)
    np.testing.assert_array_equal(confusion, EXPECTED_REDUCED)
    # without the rule, raw 3 is outside 3 classes
    with pytest.raises(ValueError, match="value"):
        confusion_matrix(RAW_PRED, RAW_LABEL, 3)


def test_confusion_matrix_other_ignore_index():
    label = np.where(LABEL == 255, 7, LABEL)
    np.testing.assert_array_equal(confusion_matrix(PRED, label, 3, ignore_index=7), EXPECTED)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError) as info:
        confusion_matrix(PRED, np.array([[0, 5, 1, 255], [9, 2, 2, 5]]), 3)
    message = str(info.value)
    assert "5, 9" in message and "num_classes=3" in message and "255" in message

    with pytest.raises(ValueError) as info:
        confusion_matrix(PRED[:, :3], LABEL, 3)
    assert "(2, 3)" in str(info.value) and "(2, 4)" in str(info.value)

    with pytest.raises(ValueError, match="pred holds value"):
        confusion_matrix(np.where(PRED == 2, 3, PRED), LABEL, 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(PRED.astype(np.float32), LABEL, 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(PRED, LABEL, 0)
    # a prediction at an ignored pixel may be anything
    pred = PRED.copy()
    pred[0, 3] = 200
    np.testing.assert_array_equal(confusion_matrix(pred, LABEL, 3), EXPECTED)


# -- segmentation_scores ----------------------------------------------------------


def test_scores_by_hand_with_an_absent_class():
    confusion = np.zeros((4, 4), np.int64)
    confusion[:3, :3] = EXPECTED  # class 3 is neither labelled nor predicted
    scores = segmentation_scores(confusion)
    # intersection 2, 2, 1; labelled 3, 2, 2; predicted 3, 3, 1; union 4, 3, 2
    np.testing.assert_allclose(scores["IoU"][:3], [2 / 4, 2 / 3, 1 / 2])
    np.testing.assert_allclose(scores["Acc"][:3], [2 / 3, 2 / 2, 1 / 2])
    assert math.isnan(scores["IoU"][3]) and math.isnan(scores["Acc"][3])
    assert scores["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert scores["mAcc"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert scores["aAcc"] == pytest.approx(5 / 7)


def test_scores_class_predicted_but_not_labelled():
    # class 1 is predicted once and never labelled: IoU 0 (counts), Acc NaN (skipped)
    scores = segmentation_scores([[1, 1], [0, 0]])
    np.testing.assert_allclose(scores["IoU"], [0.5, 0.0])
    assert scores["Acc"][0] == 0.5 and math.isnan(scores["Acc"][1])
    assert scores["mIoU"] == pytest.approx(0.25)
    assert scores["mAcc"] == pytest.approx(0.5)
    assert scores["aAcc"] == pytest.approx(0.5)


def test_scores_errors_and_empty():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        segmentation_scores(np.zeros((2, 3)))
    scores = segmentation_scores(np.zeros((3, 3)))
    assert math.isnan(scores["mIoU"]) and math.isnan(scores["aAcc"])


# -- MeanIoU ----------------------------------------------------------------------


def _resize_bilinear_numpy(x, height, width):
    """Half-pixel bilinear resize of (N, h, w, C), edges clamped (PyTorch align_corners=False)."""

    def along(x, axis, size_out):
        size_in = x.shape[axis]
        source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        frac = source - np.floor(source)
        shape = [1] * x.ndim
        shape[axis] = -1
        frac = frac.reshape(shape)
        return np.take(x, low, axis) * (1 - frac) + np.take(x, high, axis) * frac

    return along(along(x.astype(np.float64), 1, height), 2, width)


def test_mean_iou_matches_numpy_over_several_batches():
    rng = np.random.default_rng(0)
    num_classes = 5
    metric = MeanIoU(num_classes, reduce_zero_label=True)
    expected = np.zeros((num_classes, num_classes), np.int64)
    for step, (h, w) in enumerate([(2, 3), (16, 12), (3, 5)]):  # stride 4, same size, odd
        labels = rng.integers(0, num_classes + 1, (2, 12, 16)).astype(np.uint8)
        labels[:, 0, :4] = 255
        logits = rng.normal(size=(2, h, w, num_classes)).astype("float32")
        if step == 1:
            logits = logits.reshape(2, 12, 16, num_classes)
        metric.update_state(labels[..., None] if step == 2 else labels, logits)
        resized = _resize_bilinear_numpy(logits, 12, 16)
        expected += confusion_matrix(
            resized.argmax(-1), labels, num_classes, reduce_zero_label=True
        )
    np.testing.assert_array_equal(metric.confusion_matrix(), expected)
    scores = segmentation_scores(expected)
    assert float(metric.result()) == pytest.approx(scores["mIoU"], rel=1e-6)
    assert metric.scores()["mIoU"] == pytest.approx(scores["mIoU"])
    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0 and float(metric.result()) == 0.0


def test_mean_iou_class_maps_and_sample_weight():
    metric = MeanIoU(3, from_logits=False)
    metric.update_state(LABEL[None], PRED[None, ..., None])
    np.testing.assert_array_equal(metric.confusion_matrix(), EXPECTED)
    assert float(metric.result()) == pytest.approx(segmentation_scores(EXPECTED)["mIoU"])
    # a zero weight masks the second image out; a per-pixel mask drops one pixel
    metric.update_state(np.stack([LABEL, LABEL]), np.stack([PRED, PRED]), sample_weight=[1, 0])
    np.testing.assert_array_equal(metric.confusion_matrix(), 2 * EXPECTED)
    mask = np.ones((1, 2, 4), np.float32)
    mask[0, 1, 1] = 0  # the (2, 2) pixel
    metric.update_state(LABEL[None], PRED[None], sample_weight=mask)
    expected = 3 * EXPECTED
    expected[2, 2] -= 1
    np.testing.assert_array_equal(metric.confusion_matrix(), expected)


def test_mean_iou_skips_absent_classes():
    metric = MeanIoU(4, from_logits=False)  # class 3 never occurs
    assert float(metric.result()) == 0.0  # nothing seen yet
    metric.update_state(LABEL[None], PRED[None])
    assert float(metric.result()) == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3, rel=1e-6)


def test_mean_iou_shape_errors():
    metric = MeanIoU(3)
    with pytest.raises(ValueError, match="4 channels"):
        metric.update_state(LABEL[None], np.zeros((1, 2, 4, 4), "float32"))
    with pytest.raises(ValueError, match=r"\(1, 2, 4\)"):
        metric.update_state(LABEL[None], np.zeros((1, 2, 4), "float32"))
    with pytest.raises(ValueError, match="same size"):
        MeanIoU(3, from_logits=False).update_state(LABEL[None], PRED[None, :, :3])
    with pytest.raises(ValueError, match="num_classes"):
        MeanIoU(0)


def test_mean_iou_config_round_trip():
    metric = MeanIoU(7, ignore_index=0, reduce_zero_label=True, from_logits=False, name="miou")
    config = metric.get_config()
    assert config["num_classes"] == 7 and config["ignore_index"] == 0
    assert config["reduce_zero_label"] and not config["from_logits"]
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(copy, MeanIoU)
    assert copy.get_config() == config
    assert keras.saving.get_registered_name(MeanIoU) == "keras_nextvit>MeanIoU"


def test_mean_iou_in_compiled_model():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(4, 8, 12, 3)).astype("float32")
    labels = rng.integers(0, 4, (4, 8, 12))
    labels[:, 0] = 255
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, strides=2)(inputs))  # stride-2 logits
    model.compile(loss=lambda y, p: keras.ops.mean(p**2), metrics=[MeanIoU(4)])
    result = model.evaluate(images, labels, batch_size=2, verbose=0, return_dict=True)
    logits = model.predict(images, verbose=0)
    expected = confusion_matrix(_resize_bilinear_numpy(logits, 8, 12).argmax(-1), labels, 4)
    assert result["mean_iou"] == pytest.approx(segmentation_scores(expected)["mIoU"], rel=1e-5)


def test_mean_iou_run_time_sizes():
    from keras_nextvit.segmentation.metrics import _resize_bilinear

    rng = np.random.default_rng(2)
    for h, w, height, width in [(2, 3, 8, 12), (5, 7, 13, 9), (8, 8, 3, 5)]:
        x = rng.normal(size=(2, h, w, 3)).astype("float32")
        ours = keras.ops.convert_to_numpy(_resize_bilinear(x, height, width))
        np.testing.assert_allclose(ours, _resize_bilinear_numpy(x, height, width), atol=1e-5)
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    labels = rng.integers(0, 3, (1, 12, 16))
    logits = rng.normal(size=(1, 3, 4, 3)).astype("float32")
    metric = MeanIoU(3)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.int64),
            tf.TensorSpec([None, None, None, 3], tf.float32),
        ]
    )
    def update(y_true, y_pred):
        metric.update_state(y_true, y_pred)

    update(labels, logits)
    expected = confusion_matrix(_resize_bilinear_numpy(logits, 12, 16).argmax(-1), labels, 3)
    np.testing.assert_array_equal(metric.confusion_matrix(), expected)


# -- evaluate_folder --------------------------------------------------------------

SIZES = {"a": (6, 8), "b": (5, 7), "c": (4, 9)}  # distinct sizes identify the images


def _write_ade_folder(root, sizes=SIZES, num_classes=4, split="validation"):
    rng = np.random.default_rng(3)
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    annotations = {}
    for stem, (h, w) in sizes.items():
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg")
        annotation = rng.integers(0, num_classes + 1, (h, w)).astype(np.uint8)  # 0 = other
        annotation[0, 0] = 255
        Image.fromarray(annotation, "L").save(root / "annotations" / split / f"{stem}.png")
        annotations[(h, w)] = annotation
    return annotations


def test_evaluate_folder_perfect_and_corrupted(tmp_path):
    annotations = _write_ade_folder(tmp_path)
    seen = []

    def perfect(image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        seen.append(image.shape[:2])
        # annotation - 1 is the class; "other" (0) and 255 are ignored, predict anything
        return np.clip(annotations[image.shape[:2]].astype(np.int64) - 1, 0, 3)

    result = evaluate_folder(perfect, tmp_path, num_classes=4, progress=False)
    assert sorted(seen) == sorted(SIZES.values()) and result["num_images"] == 3
    assert result["mIoU"] == 1.0 and result["aAcc"] == 1.0 and result["mAcc"] == 1.0
    confusion = result["confusion"]
    assert confusion.dtype == np.int64
    np.testing.assert_array_equal(confusion, np.diag(np.diag(confusion)))
    counts = [sum(int((a == k + 1).sum()) for a in annotations.values()) for k in range(4)]
    np.testing.assert_array_equal(np.diag(confusion), counts)

    # everything predicted as class 0: IoU_0 = n_0 / total, the others 0; aAcc = n_0 / total
    result = evaluate_folder(
        lambda image: np.zeros(image.shape[:2], np.uint8), tmp_path, num_classes=4, progress=True
    )
    total = sum(counts)
    np.testing.assert_allclose(result["IoU"], [counts[0] / total, 0, 0, 0])
    np.testing.assert_allclose(result["Acc"], [1, 0, 0, 0])
    assert result["mIoU"] == pytest.approx(counts[0] / total / 4)
    assert result["aAcc"] == pytest.approx(counts[0] / total)

    # limit takes the first images by name
    result = evaluate_folder(perfect, tmp_path, num_classes=4, limit=2, progress=False)
    assert result["num_images"] == 2 and result["confusion"].sum() == sum(
        int(((a > 0) & (a < 255)).sum()) for a in (annotations[SIZES["a"]], annotations[SIZES["b"]])
    )


def test_evaluate_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_folder(lambda image: None, tmp_path / "nowhere", progress=False)
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .jpg images"):
        evaluate_folder(lambda image: None, tmp_path, progress=False)

    root = tmp_path / "ade"
    _write_ade_folder(root)
    (root / "annotations" / "validation" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.jpg has no annotation"):
        evaluate_folder(lambda image: None, root, num_classes=4, progress=False)

    root = tmp_path / "ade2"
    _write_ade_folder(root)
    with pytest.raises(ValueError) as info:
        evaluate_folder(
            lambda image: np.zeros((3, 3), int), root, num_classes=4, progress=False
        )
    assert "a.jpg" in str(info.value) and "(3, 3)" in str(info.value)
    assert "(6, 8)" in str(info.value)
    # annotations hold 1..4: with 3 classes, 4 - 1 = 3 is out of range
    with pytest.raises(ValueError) as info:
        evaluate_folder(
            lambda image: np.zeros(image.shape[:2], int), root, num_classes=3, progress=False
        )
    assert "a.jpg" in str(info.value) and "num_classes=3" in str(info.value)
    with pytest.raises(ValueError, match="limit"):
        evaluate_folder(lambda image: None, root, limit=0, progress=False)


# -- tools/eval_segmentation.py ---------------------------------------------------


def _eval_tool():
    return load_tool("eval_segmentation")


def test_eval_tool_user_errors(tmp_path, capsys):
    tool = _eval_tool()
    assert tool.main([str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err
    assert tool.main([str(tmp_path), "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert tool.main([str(tmp_path), "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err


def test_eval_tool_with_a_stand_in_segmenter(tmp_path, capsys, monkeypatch):
    """The whole script, with NextViTSegmenter and segment replaced by stand-ins."""
    import keras_nextvit.segmentation as segmentation

    annotations = _write_ade_folder(tmp_path / "ade", num_classes=3)  # classes 0..2 of 150
    weights = tmp_path / "ckpt.pth"
    weights.write_bytes(b"")
    calls = {}

    def fake_segmenter(**kwargs):
        calls["build"] = kwargs
        return "model"

    def fake_segment(model, image, mode="whole"):
        calls["mode"] = mode
        return np.clip(annotations[image.shape[:2]].astype(np.int64) - 1, 0, 149)

    monkeypatch.setattr(segmentation, "NextViTSegmenter", fake_segmenter)
    monkeypatch.setattr(segmentation, "segment", fake_segment, raising=False)
    tool = _eval_tool()
    argv = [str(tmp_path / "ade"), "--weights", str(weights), "--variant", "base"]
    assert tool.main(argv + ["--head", "upernet", "--slide", "--no-progress"]) == 0
    assert calls["build"] == dict(
        variant="base", head="upernet", num_classes=150, weights=str(weights)
    )
    assert calls["mode"] == "slide"
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["wall", "100.00", "100.00"]
    assert "flag" in out and "nan" in out  # classes absent from the tiny folder
    assert "aAcc 100.00  mIoU 100.00  mAcc 100.00  (3 images)" in out


# -- ADE20K data and colorize -----------------------------------------------------


def test_ade20k_classes_and_palette():
    assert len(ade20k.CLASSES) == len(ade20k.PALETTE) == 150 == ade20k.NUM_CLASSES
    assert ade20k.CLASSES[0] == "wall" and ade20k.CLASSES[2] == "sky"
    assert ade20k.CLASSES[7] == "bed" and ade20k.CLASSES[149] == "flag"
    assert ade20k.CLASSES[148] == "clock"
    assert ade20k.PALETTE[0] == (120, 120, 120) and ade20k.PALETTE[1] == (180, 120, 120)
    assert ade20k.PALETTE[149] == (92, 0, 255)
    assert len(set(ade20k.CLASSES)) == 150
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ade20k.PALETTE)


def test_colorize():
    image = ade20k.colorize(np.array([[0, 1], [255, 149]]))
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    np.testing.assert_array_equal(
        image, [[[120, 120, 120], [180, 120, 120]], [[0, 0, 0], [92, 0, 255]]]
    )
    own = ade20k.colorize(np.array([[0, 1, 9]]), palette=[(1, 2, 3), (4, 5, 6)], ignore_index=9)
    np.testing.assert_array_equal(own, [[[1, 2, 3], [4, 5, 6], [0, 0, 0]]])
    with pytest.raises(ValueError) as info:
        ade20k.colorize(np.array([[0, 150]]))
    assert "150" in str(info.value) and "150 colours" in str(info.value)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        ade20k.colorize(np.zeros((2, 2, 3), int))
