"""COCO-format instance annotations for training, read as mmdet 2.23's
``CocoDataset`` reads them.

* Classes: the file's categories, in the file's order (label ``i`` is the
  ``i``-th category listed; for COCO itself, the 80 classes of
  :data:`.coco.CLASSES`).
* An annotation is skipped when marked ``ignore``, when its box
  ``(x, y, w, h)`` does not overlap the image, when its ``area`` is not
  positive or ``w`` or ``h`` is below 1, or when its category is unknown;
  a crowd annotation (``iscrowd``) becomes an ignored box, not an instance.
  Boxes become ``(x1, y1, x1 + w, y1 + h)``.
* Training skips images without any instance of the classes and images
  whose shorter side is below 32 pixels (``filter_empty_gt``, ``min_size``).
* Masks are decoded with pycocotools: polygons (the parts of one instance
  merged), uncompressed and compressed RLE.
"""

import dataclasses
import json
import os

import numpy as np


@dataclasses.dataclass
class Instances:
    """One image's annotations: ``boxes`` ``(K, 4)`` float32 ``(x1, y1, x2,
    y2)``, ``labels`` ``(K,)`` int64, ``segmentations`` (COCO's, one per
    instance), ``ignored_boxes`` ``(I, 4)`` (crowds)."""

    path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    segmentations: list
    ignored_boxes: np.ndarray

    def masks(self):
        """``(K, height, width)`` uint8 instance masks."""
        return np.stack([decode_segmentation(s, self.height, self.width) for s in self.segmentations]) if (
            self.segmentations) else np.zeros((0, self.height, self.width), np.uint8)


def _mask_utils():
    from .evaluation import _pycocotools

    return _pycocotools()[2]


def decode_segmentation(segmentation, height, width):
    """A COCO segmentation (polygons, or RLE) as a ``(height, width)`` uint8
    mask."""
    mask_utils = _mask_utils()
    if isinstance(segmentation, list):  # polygons: one instance in parts
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def _instances(image, annotations, label_of, image_dir):
    boxes, labels, segmentations, ignored = [], [], [], []
    for ann in annotations:
        if ann.get("ignore", False):
            continue
        x1, y1, w, h = ann["bbox"]
        inter_w = max(0, min(x1 + w, image["width"]) - max(x1, 0))
        inter_h = max(0, min(y1 + h, image["height"]) - max(y1, 0))
        if inter_w * inter_h == 0 or ann["area"] <= 0 or w < 1 or h < 1:
            continue
        if ann["category_id"] not in label_of:
            continue
        box = [x1, y1, x1 + w, y1 + h]
        if ann.get("iscrowd", False):
            ignored.append(box)
        else:
            boxes.append(box)
            labels.append(label_of[ann["category_id"]])
            segmentations.append(ann.get("segmentation"))
    return Instances(
        path=os.path.join(image_dir, image["file_name"]), image_id=int(image["id"]),
        height=int(image["height"]), width=int(image["width"]),
        boxes=np.array(boxes, np.float32).reshape(-1, 4), labels=np.array(labels, np.int64),
        segmentations=segmentations, ignored_boxes=np.array(ignored, np.float32).reshape(-1, 4),
    )


def read_coco(annotation_file, image_dir, filter_empty_gt=True, min_size=32):
    """``(class_names, [Instances, ...])`` of a COCO-format file, images and
    annotations in the file's order, filtered for training as mmdet does
    (``filter_empty_gt=False``, ``min_size=0`` keep every image)."""
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"No COCO annotation file at {annotation_file}.")
    with open(annotation_file) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{annotation_file} is not JSON: {error}") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise ValueError(f"{annotation_file} is not a COCO instances file: it has no {', '.join(missing)}.")
    categories = data["categories"]
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    with_instances = {ann["image_id"] for ann in data["annotations"] if ann["category_id"] in label_of}
    records = []
    for image in data["images"]:
        if filter_empty_gt and image["id"] not in with_instances:
            continue
        if min(image["width"], image["height"]) < min_size:
            continue
        records.append(_instances(image, by_image.get(image["id"], []), label_of, image_dir))
    return [c["name"] for c in categories], records


__all__ = ["Instances", "decode_segmentation", "read_coco"]
