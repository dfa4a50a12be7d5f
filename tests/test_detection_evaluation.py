"""COCO evaluation (keras_nextvit.detection.evaluation, tools/eval_detection.py)
on a small COCO-layout folder the test writes: results in COCO's format, and
the same mAP as pycocotools computes directly from the written results."""

import json
import sys

import numpy as np
import pytest
from conftest import load_tool

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from keras_nextvit.detection import coco, evaluation  # noqa: E402

SIZES = [(64, 80), (72, 72), (48, 96)]


def _load_tool():
    return load_tool("eval_detection")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """Three images with two or three objects each (boxes and polygons)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, (h, w) in enumerate(SIZES, start=3):  # ids need not start at 1
        name = f"{image_id:012d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val2017" / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for k in range(2 + image_id % 2):
            x, y = float(rng.integers(0, w // 2)), float(rng.integers(0, h // 2))
            bw, bh = float(rng.integers(8, w // 2)), float(rng.integers(8, h // 2))
            polygon = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": coco.CATEGORY_IDS[(image_id * 7 + k * 13) % 80],
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0, "segmentation": [polygon],
            })
    categories = [{"id": i, "name": n} for i, n in zip(coco.CATEGORY_IDS, coco.CLASSES)]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


def ground_truth_predictor(root, shift=0.0):
    """A predictor that answers with the annotations (boxes moved by ``shift``)."""
    gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    by_size = {(img["height"], img["width"]): img["id"] for img in gt.dataset["images"]}

    def predict(image):
        anns = gt.loadAnns(gt.getAnnIds(imgIds=by_size[image.shape[:2]]))
        boxes = np.array([[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
                           a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32)
        return {
            "boxes": boxes,
            "scores": np.linspace(0.9, 0.5, len(anns)).astype(np.float32),
            "labels": np.array([coco.CATEGORY_IDS.index(a["category_id"]) for a in anns]),
            "masks": np.stack([gt.annToMask(a).astype(bool) for a in anns]),
        }

    return predict


def direct(root, results_file, iou_type):
    """pycocotools on its own, from the written results file."""
    gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(results_file)), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[:6]


def test_perfect_detections_score_one(coco_root, tmp_path):
    scores = evaluation.evaluate_coco(ground_truth_predictor(coco_root), coco_root, progress=False,
                                      results_prefix=str(tmp_path / "gt"))
    assert scores["num_images"] == 3
    assert scores["bbox"]["mAP"] == pytest.approx(1.0) and scores["segm"]["mAP"] == pytest.approx(1.0)
    records = json.loads((tmp_path / "gt.bbox.json").read_text())
    first = records[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score"}
    segm = json.loads((tmp_path / "gt.segm.json").read_text())[0]
    assert segm["bbox"] == first["bbox"] and isinstance(segm["segmentation"]["counts"], str)
    decoded = mask_utils.decode(segm["segmentation"])
    assert decoded.shape == SIZES[0]


def test_scores_equal_pycocotools_on_the_written_results(coco_root, tmp_path, capsys):
    prefix = tmp_path / "shifted"
    scores = evaluation.evaluate_coco(ground_truth_predictor(coco_root, shift=3.0), coco_root,
                                      progress=False, results_prefix=str(prefix))
    assert 0.0 < scores["bbox"]["mAP"] < 1.0
    for kind in ("bbox", "segm"):
        expected = direct(coco_root, f"{prefix}.{kind}.json", kind)
        np.testing.assert_allclose(list(scores[kind].values()), expected)
    limited = evaluation.evaluate_coco(ground_truth_predictor(coco_root), coco_root, limit=1, progress=False)
    assert limited["num_images"] == 1
    predict = ground_truth_predictor(coco_root, shift=3.0)
    assert "Average Precision" in capsys.readouterr().out  # COCOeval's tables, unless quiet
    quiet = evaluation.evaluate_coco(predict, coco_root, quiet=True)
    assert quiet == scores and capsys.readouterr().out == ""


@pytest.mark.slow
def test_the_tool_with_a_detector(coco_root, tmp_path, capsys):
    tool = _load_tool()
    out = tmp_path / "results" / "small"
    argv = [str(coco_root), "--variant", "small", "--score-thr", "0", "--scale", "96", "64",
            "--out", str(out), "--no-progress"]
    assert tool.main(argv) == 0
    printed = capsys.readouterr()
    assert "bbox: mAP" in printed.out and "segm: mAP" in printed.out and "(3 images)" in printed.out
    assert "random weights" in printed.err
    records = json.loads(out.with_suffix(".bbox.json").read_text())
    assert len(records) == 300  # 100 per image at score_thr 0
    bbox_map = float(printed.out.split("bbox: mAP ")[1].split()[0])
    assert bbox_map == pytest.approx(100 * direct(coco_root, out.with_suffix(".bbox.json"), "bbox")[0], abs=0.05)


def test_the_tool_reports_errors(coco_root, tmp_path, capsys, monkeypatch):
    tool = _load_tool()
    assert tool.main([str(tmp_path), "--no-progress"]) == 2
    assert "COCO annotations not found" in capsys.readouterr().err
    assert tool.main([str(coco_root), "--weights", str(tmp_path / "none.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert tool.main([str(coco_root), "--score-thr", "3"]) == 2
    assert "score_thr must be a number in [0, 1]" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    assert tool.main([str(coco_root), "--no-progress"]) == 2
    assert "needs pycocotools" in capsys.readouterr().err
