"""Detecting photographs: mmdet's test pipeline in front of the detector
(:func:`keras_nextvit.detect`), drawing the result, the ``keras-nextvit
detect`` command, and their errors. Tiny detectors and small test scales:
the numbers are checked by test_detection_parity / test_detection_reference."""

import json

import numpy as np
import pytest
from conftest import DATA

import keras_nextvit
from keras_nextvit import cli, synthetic, visualize
from keras_nextvit.detection import coco, inference
from keras_nextvit.preprocessing import SAMPLE_IMAGE, preprocess_input

TINY = (1, 1, 5, 1)
SMALL_SCALE = (160, 96)


@pytest.fixture(scope="module")
def detector():
    return keras_nextvit.NextViTMaskRCNN(TINY, num_classes=5)


def test_prepare_is_mmdets_test_pipeline():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (40, 200, 3), dtype=np.uint8)
    batch, img_shapes, scale_factors, ori_shapes = inference.prepare([photo, wide])
    # 300x451: factor min(1333/451, 800/300) = 2.667 -> 800 x int(451 * 2.667 + 0.5) = 1203
    # 40x200: factor min(1333/200, 800/40) = 6.665 -> int(266.6 + 0.5) = 267 x 1333
    np.testing.assert_array_equal(img_shapes, [[800, 1203, 3], [267, 1333, 3]])
    np.testing.assert_array_equal(ori_shapes, [[300, 451, 3], [40, 200, 3]])
    np.testing.assert_array_equal(
        scale_factors, np.array([[1203 / 451, 800 / 300] * 2, [1333 / 200, 267 / 40] * 2], np.float32)
    )
    assert batch.shape == (2, 800, 1344, 3) and batch.dtype == np.float32  # padded to 32
    assert not batch[0, :, 1203:].any() and not batch[1, 267:].any()  # zero padding
    # an image already at the test scale is only normalised
    exact = rng.integers(0, 256, (800, 1000, 3), dtype=np.uint8)
    batch, img_shapes, scale_factors, _ = inference.prepare([exact])
    np.testing.assert_array_equal(batch[0, :800, :1000], preprocess_input(exact))
    assert batch.shape == (1, 800, 1024, 3) and (scale_factors == 1).all()


def test_detect_one_image_and_a_list(detector):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (50, 64, 3), dtype=np.uint8)
    one = keras_nextvit.detect(detector, a, score_thr=0.0, scale=SMALL_SCALE)
    assert set(one) == {"boxes", "scores", "labels", "masks"}
    count = len(one["scores"])
    assert 0 < count <= 100
    assert one["boxes"].shape == (count, 4) and one["masks"].shape == (count, 70, 90)
    assert one["masks"].dtype == bool and one["labels"].dtype == np.int64
    assert (np.diff(one["scores"]) <= 0).all()  # best first
    assert (one["boxes"][:, [0, 2]] <= 90).all() and (one["boxes"][:, [1, 3]] <= 70).all()
    assert ((one["labels"] >= 0) & (one["labels"] < 5)).all()
    both = keras_nextvit.detect(detector, [a, b], score_thr=0.0, scale=SMALL_SCALE)
    assert len(both) == 2 and both[1]["masks"].shape[1:] == (50, 64)
    for key in one:
        np.testing.assert_array_equal(both[0][key], one[key])
    # a batch of two sizes, padded together, gives one result per image
    batched = keras_nextvit.detect(detector, [a, b], score_thr=0.0, scale=SMALL_SCALE, batch_size=2)
    assert [r["masks"].shape[1:] for r in batched] == [(70, 90), (50, 64)]
    # the published threshold keeps fewer (here: the untrained head's scores are ~1/6)
    high = keras_nextvit.detect(detector, a, score_thr=0.5, scale=SMALL_SCALE)
    assert len(high["scores"]) <= count and (high["scores"] > 0.5).all()


def test_detect_bad_input(detector, tmp_path):
    with pytest.raises(ValueError, match=r"image is 20x80 pixels; the detector needs at least 32"):
        keras_nextvit.detect(detector, np.zeros((20, 80, 3), np.uint8))
    with pytest.raises(ValueError, match=r"score_thr must be a number in \[0, 1\], got 1.5"):
        keras_nextvit.detect(detector, np.zeros((64, 64, 3), np.uint8), score_thr=1.5)
    with pytest.raises(FileNotFoundError, match=r"Image file not found"):
        keras_nextvit.detect(detector, tmp_path / "missing.jpg")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"not an image file"):
        keras_nextvit.detect(detector, text)


def test_plot_detections(detector):
    import matplotlib

    matplotlib.use("Agg")
    image = np.full((60, 80, 3), 100, np.uint8)
    result = {
        "boxes": np.array([[5, 5, 40, 30], [10, 20, 70, 55]], np.float32),
        "scores": np.array([0.9, 0.4], np.float32),
        "labels": np.array([0, 17], np.int64),
        "masks": np.zeros((2, 60, 80), bool),
    }
    result["masks"][0, 5:30, 5:40] = True
    overlay = visualize.overlay_detections(image, result)
    assert (overlay[10, 10] != 100).any() and (overlay[50, 75] == 100).all()
    fig = visualize.plot_detections(image, result)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [f"{coco.CLASSES[0]} 0.90", f"{coco.CLASSES[17]} 0.40"]
    assert len(fig.axes[0].patches) == 2
    fig = visualize.plot_detections(image, result, top=1)
    assert len(fig.axes[0].patches) == 1


@pytest.mark.slow
def test_detect_command(tmp_path, capsys):
    from PIL import Image

    keys = json.loads((DATA / "detection" / "det_maskrcnn_small.keys.json").read_text())
    checkpoint = tmp_path / "det_small.npz"
    np.savez(checkpoint, **synthetic.synthetic_state_dict([(n, tuple(s)) for n, s in keys]))
    out, record = tmp_path / "out.png", tmp_path / "out.json"
    photo = tmp_path / "photo.png"
    with Image.open(SAMPLE_IMAGE) as image:
        image.resize((96, 64)).save(photo)
    argv = ["detect", str(photo), "--weights", str(checkpoint), "--score-thr", "0", "-o", str(out),
            "--json", str(record)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "detected 100 objects in photo.png (96x64)" in printed
    detections = json.loads(record.read_text())["detections"]
    assert len(detections) == 100 and detections[0]["name"] in coco.CLASSES
    assert detections[0]["score"] >= detections[-1]["score"]
    with Image.open(out) as drawn:
        assert drawn.size[0] > 100


def test_detect_command_bad_input_has_no_traceback(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert cli.main(["detect", str(text)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not an image file" in err and "Traceback" not in err
    assert cli.main(["detect", str(text.with_name("nope.png"))]) == 2
    assert "not found" in capsys.readouterr().err
    small = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(small)
    assert cli.main(["detect", str(small)]) == 2
    assert "at least 32 pixels" in capsys.readouterr().err
    assert cli.main(["detect", str(SAMPLE_IMAGE), "--score-thr", "2"]) == 2
    assert "score_thr must be a number in [0, 1]" in capsys.readouterr().err
    seg = tmp_path / "seg.npz"
    seg_keys = json.loads((DATA / "segmentation" / "seg_fpn_small.keys.json").read_text())
    np.savez(seg, **{n: np.zeros(s, np.float32) for n, s in seg_keys})
    assert cli.main(["detect", str(SAMPLE_IMAGE), "--weights", str(seg)]) == 2
    err = capsys.readouterr().err
    assert "segmentation model (Next-ViT-S + Semantic FPN" in err and "Traceback" not in err


@pytest.mark.slow
def test_info_detection_prints_sizes_and_flops(capsys):
    assert cli.main(["info", "--detection"]) == 0
    out = capsys.readouterr().out
    for count in ("51,124,912", "64,180,400", "77,235,888", "289.0", "339.3", "389.6"):
        assert count in out
    assert "45.9/41.8, 48.0/43.2" in out
