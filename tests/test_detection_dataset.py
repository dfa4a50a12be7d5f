"""COCO-format instance annotations read for training
(keras_nextvit.detection.dataset), against hand-computed records and
pycocotools' own decoding."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_nextvit.detection import dataset


def write_coco(path):
    square = np.zeros((60, 80), np.uint8)
    square[10:30, 40:70] = 1
    compressed = mask_utils.encode(np.asfortranarray(square))
    compressed["counts"] = compressed["counts"].decode()
    data = {
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 9, "name": "bird"}],
        "images": [
            {"id": 7, "file_name": "b.png", "height": 60, "width": 80},
            {"id": 3, "file_name": "a.png", "height": 60, "width": 80},
            {"id": 4, "file_name": "small.png", "height": 20, "width": 80},
            {"id": 8, "file_name": "empty.png", "height": 60, "width": 80},
        ],
        "annotations": [
            # image 7: a polygon in two parts (dog), compressed RLE (bird), a crowd
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [5, 5, 20, 25], "area": 300,
             "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15], [5, 20, 15, 20, 15, 30, 5, 30]]},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [40, 10, 30, 20], "area": 600,
             "segmentation": compressed},
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [0, 40, 80, 20], "area": 1600,
             "iscrowd": 1, "segmentation": {"size": [60, 80], "counts": [2440, 1600, 760]}},
            # image 3: uncompressed RLE (cat), and the skipped ones
            {"id": 4, "image_id": 3, "category_id": 5, "bbox": [0, 0, 10, 60], "area": 600,
             "segmentation": {"size": [60, 80], "counts": [0, 600, 4200]}},
            {"id": 5, "image_id": 3, "category_id": 5, "bbox": [100, 0, 10, 10], "area": 100,
             "segmentation": [[0, 0, 1, 0, 1, 1]]},  # outside the image
            {"id": 6, "image_id": 3, "category_id": 5, "bbox": [1, 1, 0.5, 10], "area": 5,
             "segmentation": [[0, 0, 1, 0, 1, 1]]},  # narrower than 1
            {"id": 7, "image_id": 3, "category_id": 2, "bbox": [1, 1, 10, 10], "area": 0,
             "segmentation": [[0, 0, 1, 0, 1, 1]]},  # no area
            {"id": 8, "image_id": 3, "category_id": 2, "bbox": [1, 1, 10, 10], "area": 100, "ignore": 1,
             "segmentation": [[0, 0, 1, 0, 1, 1]]},
            {"id": 9, "image_id": 3, "category_id": 77, "bbox": [1, 1, 10, 10], "area": 100,
             "segmentation": [[0, 0, 1, 0, 1, 1]]},  # unknown category
            {"id": 10, "image_id": 4, "category_id": 2, "bbox": [1, 1, 10, 10], "area": 100,
             "segmentation": [[1, 1, 11, 1, 11, 11]]},  # on an image below 32 pixels
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_records_as_mmdet_reads_them(tmp_path):
    path = write_coco(tmp_path / "instances.json")
    names, records = dataset.read_coco(str(path), str(tmp_path / "images"))
    assert names == ["cat", "dog", "bird"]  # the file's order: label 0 is category 5
    assert [r.image_id for r in records] == [7, 3]  # the file's order; small and empty images left out
    first, second = records
    assert first.path == str(tmp_path / "images" / "b.png") and (first.height, first.width) == (60, 80)
    np.testing.assert_array_equal(first.boxes, [[5, 5, 25, 30], [40, 10, 70, 30]])
    np.testing.assert_array_equal(first.labels, [1, 2])
    np.testing.assert_array_equal(first.ignored_boxes, [[0, 40, 80, 60]])  # the crowd
    np.testing.assert_array_equal(second.boxes, [[0, 0, 10, 60]])
    np.testing.assert_array_equal(second.labels, [0])
    assert second.ignored_boxes.shape == (0, 4)
    _, every = dataset.read_coco(str(path), str(tmp_path), filter_empty_gt=False, min_size=0)
    assert [r.image_id for r in every] == [7, 3, 4, 8] and every[3].boxes.shape == (0, 4)
    assert every[3].masks().shape == (0, 60, 80)


def test_masks_are_pycocotools_decoding(tmp_path):
    path = write_coco(tmp_path / "instances.json")
    _, records = dataset.read_coco(str(path), str(tmp_path))
    coco = COCO(str(path))
    for record, annotation_ids in zip(records, ([1, 2], [4])):
        masks = record.masks()
        assert masks.shape == (len(annotation_ids), 60, 80) and masks.dtype == np.uint8
        for mask, annotation_id in zip(masks, annotation_ids):
            expected = coco.annToMask(coco.anns[annotation_id])
            np.testing.assert_array_equal(mask, expected)
            assert mask.any()
    assert records[0].masks()[1, 10:30, 40:70].all() and records[0].masks()[1].sum() == 600
    assert records[1].masks()[0][:, :10].all() and records[1].masks()[0].sum() == 600


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="No COCO annotation file at"):
        dataset.read_coco(str(tmp_path / "missing.json"), str(tmp_path))
    (tmp_path / "notes.json").write_text("not json")
    with pytest.raises(ValueError, match="notes.json is not JSON"):
        dataset.read_coco(str(tmp_path / "notes.json"), str(tmp_path))
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO instances file: it has no annotations, categories"):
        dataset.read_coco(str(tmp_path / "other.json"), str(tmp_path))
