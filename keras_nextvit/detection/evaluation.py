"""COCO evaluation of a detector: box and mask mAP as mmdet reports them.

mmdet's ``CocoDataset.evaluate`` writes the detections as COCO results --
per detection ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
(``w = x2 - x1``, no +1) and, for masks, the same with ``"segmentation"``:
the binary mask at the original size as COCO's run-length encoding, scored
with its box's score -- and runs pycocotools' ``COCOeval`` on them (``bbox``
and ``segm``). The same is done here; pycocotools is an optional dependency
(``pip install "keras-nextvit[coco]"``).

The folder is COCO's layout: ``{split}/*.jpg`` and
``annotations/instances_{split}.json`` (``split`` = ``val2017``).
"""

import contextlib
import io
import json
import os

import numpy as np

from .coco import CATEGORY_IDS

# COCOeval's summary, in its order (stats[0..5]).
METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError(
            "COCO evaluation needs pycocotools: pip install pycocotools "
            '(or pip install "keras-nextvit[coco]").'
        ) from None
    return COCO, COCOeval, mask_utils


def coco_results(result, image_id, category_ids=CATEGORY_IDS, masks=True):
    """One image's detections (a :func:`~keras_nextvit.detect` result) as
    COCO result records (``bbox`` and, with ``masks``, ``segm``)."""
    _, _, mask_utils = _pycocotools()
    boxes, scores, labels = (np.asarray(result[k]) for k in ("boxes", "scores", "labels"))
    bbox, segm = [], []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        x1, y1, x2, y2 = (float(v) for v in box)
        record = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label)]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        }
        bbox.append(record)
        if masks:
            rle = mask_utils.encode(np.asfortranarray(np.asarray(result["masks"][i], np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            segm.append(dict(record, segmentation=rle))
    return bbox, segm


def _summary(coco, results, iou_type):
    """COCOeval's six summary numbers for ``results`` (a list of records)."""
    COCO, COCOeval, _ = _pycocotools()
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    detections = coco.loadRes(results)
    evaluator = COCOeval(coco, detections, iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {name: float(value) for name, value in zip(METRICS, evaluator.stats[:6])}


def evaluate_coco(predict, coco_root, split="val2017", limit=None, progress=True, results_prefix=None,
                  masks=True, category_ids=None, quiet=False):
    """Detect every image of a COCO-layout folder and score the detections.

    Args:
        predict: ``image (H, W, 3) uint8 -> result`` (e.g.
            ``lambda image: keras_nextvit.detect(detector, image)``).
        coco_root: the folder holding ``{split}/`` and ``annotations/``.
        split: ``val2017`` by default.
        limit: evaluate only the first ``limit`` images (by image id).
        progress: show a progress bar.
        results_prefix: write ``{prefix}.bbox.json`` and ``{prefix}.segm.json``
            (COCO results, as mmdet's ``format_results``).
        masks: score the masks too (``segm``).
        category_ids: the category id of each class index (default: the
            annotation file's categories in its order, as
            :func:`.dataset.read_coco` numbers them; COCO's 80 for COCO).
        quiet: print nothing (no progress bar, no pycocotools messages,
            no COCOeval tables); the scores are returned either way.

    Returns:
        ``{"bbox": {metric: value}, "segm": {...}, "num_images": n}`` with
        COCOeval's mAP, mAP_50, mAP_75, mAP_s/m/l (fractions, not percent).
    """
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return _evaluate(predict, coco_root, split, limit, progress, results_prefix, masks, category_ids)


def _evaluate(predict, coco_root, split, limit, progress, results_prefix, masks, category_ids):
    import keras

    from ..segmentation.inference import read_image

    COCO, _, _ = _pycocotools()
    annotation_file = os.path.join(coco_root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"COCO annotations not found: {annotation_file}")
    coco = COCO(annotation_file)
    image_ids = sorted(coco.getImgIds())
    if limit is not None:
        image_ids = image_ids[: int(limit)]
    if not image_ids:
        raise ValueError(f"{annotation_file} lists no images.")
    coco.dataset["images"] = [img for img in coco.dataset["images"] if img["id"] in set(image_ids)]
    coco.createIndex()
    if category_ids is None:
        category_ids = [c["id"] for c in coco.dataset["categories"]]
    bar = keras.utils.Progbar(len(image_ids), unit_name="image") if progress else None
    bbox, segm = [], []
    for done, image_id in enumerate(image_ids, 1):
        info = coco.imgs[image_id]
        path = os.path.join(coco_root, split, info["file_name"])
        image = read_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"{path} is {image.shape[0]}x{image.shape[1]}; the annotations say "
                f"{info['height']}x{info['width']}."
            )
        boxes, masks_ = coco_results(predict(image), image_id, category_ids, masks=masks)
        bbox += boxes
        segm += masks_
        if bar is not None:
            bar.update(done)
    if results_prefix:
        for name, records in (("bbox", bbox), ("segm", segm)):
            if name == "segm" and not masks:
                continue
            with open(f"{results_prefix}.{name}.json", "w") as handle:
                json.dump(records, handle)
    scores = {"bbox": _summary(coco, bbox, "bbox"), "num_images": len(image_ids)}
    if masks:
        scores["segm"] = _summary(coco, segm, "segm")
    return scores


__all__ = ["METRICS", "coco_results", "evaluate_coco"]
