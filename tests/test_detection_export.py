"""The detector as one ONNX graph (keras_nextvit.exporters.detection), run in
ONNX Runtime.

The post-processing graph (ONNX's TopK, NonMaxSuppression and RoiAlign, the
heads as Gemm/Conv) is checked on the golden cases' own stored raw outputs:
it must give the reference's proposals, low-threshold detections and mask
probabilities, and with them the pasted masks. The dense part is tf2onnx's
conversion of the Keras layers (tests/test_export.py checks it for the
classifier); the whole export is checked on a tiny detector against the
Keras detector through keras_nextvit.export's report.
"""

import functools
import importlib.util
import json

import numpy as np
import pytest
from conftest import DATA, assert_close, golden

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper  # noqa: E402

import keras  # noqa: E402
import keras_nextvit  # noqa: E402
from keras_nextvit import synthetic  # noqa: E402
from keras_nextvit.detection import paste_masks  # noqa: E402
from keras_nextvit.exporters import detection as export_lib  # noqa: E402

CASES = ["det_maskrcnn_small_128x192", "det_maskrcnn_small_128x128_rescale"]
TINY = (1, 1, 5, 1)


@functools.lru_cache(maxsize=None)
def detector():
    keys = json.loads((DATA / "detection" / "det_maskrcnn_small.keys.json").read_text())
    model = keras_nextvit.NextViTMaskRCNN("small")
    keras_nextvit.load_torch_weights(model, synthetic.synthetic_state_dict([(n, tuple(s)) for n, s in keys]))
    return model


def run_post_processing(d, score_thr, runtime="onnxruntime", folder=None):
    height, width = (int(v) for v in d["pad_shape"])
    graph, names = export_lib.post_processing_graph(detector(), (height, width))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", export_lib.OPSET)])
    onnx.checker.check_model(model)
    if runtime == "openvino":
        import openvino as ov

        path = folder / "post.onnx"
        onnx.save(model, str(path))
        ov.save_model(ov.convert_model(str(path)), str(folder / "post.xml"), compress_to_fp16=False)
        run = export_lib._session(folder / "post.xml", None)[0]
    else:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

        def run(feed):
            return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    feed = {"img_shape": d["img_shapes"][0][:2].astype(np.float32),
            "scale_factor": d["scale_factors"][0].astype(np.float32),
            "score_thr": np.array(score_thr, np.float32)}
    for name in names:
        if name not in feed:
            feed[name] = np.ascontiguousarray(d[name].transpose(0, 2, 3, 1))
    return run(feed)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", CASES)
def test_post_processing_graph_replays_the_reference(case, runtime, tmp_path):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    d = golden(f"detection/{case}")
    out = run_post_processing(d, float(d["low_score_thr"]), runtime, tmp_path)
    assert out["proposals"].shape == d["proposals"].shape
    assert_close(out["proposals"], d["proposals"], 1e-4, "proposals")
    assert len(out["boxes"]) == int(d["low_det_counts"][0])
    assert_close(out["boxes"], d["low_det_bboxes"][:, :4], 1e-4, "boxes")
    assert_close(out["scores"], d["low_det_bboxes"][:, 4], 1e-4, "scores")
    np.testing.assert_array_equal(out["labels"], d["low_det_labels"])
    assert_close(out["mask_probs"], d["low_mask_probs"], 1e-4, "mask_probs")
    scale = d["scale_factors"][0]
    masks = np.asarray(paste_masks(out["mask_probs"], (out["boxes"] * scale) / scale, d["ori_shapes"][0][:2]))
    wrong = (masks != d["low_masks_img0"]) & ~d["low_masks_ambiguous_img0"]
    assert not wrong.any(), f"{int(wrong.sum())} mask pixels differ"
    # the published threshold: no detections, empty outputs of the right shapes
    published = run_post_processing(d, 0.05, runtime, tmp_path)
    assert published["boxes"].shape == (0, 4) and published["mask_probs"].shape == (0, 28, 28)


@pytest.mark.slow
def test_exports_of_a_tiny_detector_agree_with_keras(tmp_path):
    """One export, run in ONNX Runtime and (converted) in OpenVINO, against
    the Keras detector on the same padded inputs. A random detector scores
    every class about 1/6, so at score_thr 0 its detections are near-ties
    that float32 rounding of another runtime's convolutions can reorder
    (OpenVINO: rarely one of 200): the bars below allow 2% unmatched; the
    post-processing itself is exact on the golden inputs (above). Seeded:
    the proposals must match in number, and unseeded weights (whatever the
    worker's earlier tests drew) once put two RPN boxes' IoU within the
    runtimes' rounding of NMS's 0.7, and the counts differed."""
    keras.utils.set_random_seed(0)
    model = keras_nextvit.NextViTMaskRCNN(TINY, num_classes=5, test_cfg={"rcnn": {"score_thr": 0.0}})
    path = tmp_path / "detector.onnx"
    reports = [keras_nextvit.export(model, path, format="onnx", input_size=(64, 96))]
    assert "matched" in str(reports[0]) and "proposals (raw output)" in str(reports[0])
    if importlib.util.find_spec("openvino") is not None:
        export_lib.onnx_to_openvino(path, tmp_path / "detector.xml")
        runner = export_lib.DetectorRunner(tmp_path / "detector.xml")
        report = export_lib.verify_detector(model, runner, reports[0].verification_images,
                                            tmp_path / "detector.xml", "openvino")
        assert report.file_size_bytes > 50 * 2**20  # .xml + .bin
        reports.append(report)
    for report in reports:
        assert report.images == 2 and report.keras_detections == 200, report
        assert report.match_rate >= 0.98 and report.min_box_iou > 0.99, report
        assert report.max_score_error < 1e-4 and report.mask_agreement > 0.999, report
        assert report.proposal_counts_equal and report.proposals_max_error < 1e-4, report
    runner = export_lib.DetectorRunner(path)
    with pytest.raises(ValueError, match=r"takes at most 64x96"):
        runner(np.zeros((200, 300, 3), np.uint8))


def test_detector_export_requests():
    model = keras_nextvit.NextViTMaskRCNN(TINY, num_classes=3)
    with pytest.raises(ValueError, match=r"detector exports to ONNX \(format='onnx'\) or OpenVINO"):
        keras_nextvit.export(model, "x.tflite", format="tflite")
    with pytest.raises(ValueError, match=r"TensorRT engine is built from its ONNX export"):
        keras_nextvit.export(model, "x.plan", format="tensorrt")
    with pytest.raises(ValueError, match=r"float32 only"):
        keras_nextvit.export(model, "x.onnx", format="onnx", quantize="int8")
    with pytest.raises(ValueError, match=r"multiples of 32"):
        keras_nextvit.export(model, "x.onnx", format="onnx", input_size=(100, 96))
