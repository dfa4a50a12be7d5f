"""mmdet 2.23's image pipelines for Mask R-CNN, in NumPy: the rescale that
testing and training share, and training's
``Resize(img_scale=(1333, 800), keep_ratio=True)``, ``RandomFlip``,
``Normalize``, ``Pad(size_divisor=32)`` of one annotated image (the 1x
configs), or the 3x configs' flip, multi-scale ``AutoAugment`` (resize, or
resize, crop and resize), normalize and pad (:func:`multiscale_example`).

* **Rescale** (mmcv's ``imrescale``): the aspect ratio kept, the long side
  at most 1333 and the short side at most 800; the image bilinear (OpenCV's
  half-pixel ``INTER_LINEAR``, rounded to 0..255), each instance mask
  nearest (``INTER_NEAREST``: output pixel ``i`` reads
  ``min(floor(i * in / out), in - 1)``). The scale factor is
  ``(new_w / w, new_h / h)`` (float32), boxes are multiplied by it and
  clipped to the resized image.
* **Flip** (horizontal): the image and masks mirrored, a box
  ``(x1, y1, x2, y2)`` becomes ``(W - x2, y1, W - x1, y2)``, ``W`` the
  resized width.
* **Normalize** with the ImageNet mean and std, then **pad** the image and
  masks with zeros at the bottom and right to multiples of 32.
"""

import dataclasses
import math

import numpy as np

from ..preprocessing import preprocess_input
from ..segmentation.inference import read_image, rescaled_size, resize_bilinear_numpy

SCALE = (1333, 800)
SIZE_DIVISOR = 32
# The 3x configs' AutoAugment (mask_rcnn_nextvit_*_3x.py): the scales,
# (long, short) as mmcv reads a keep-ratio img_scale, and RandomCrop's range.
MULTISCALE_SCALES = tuple((1333, short) for short in range(480, 801, 32))
CROP_RESIZE_SCALES = ((1333, 400), (1333, 500), (1333, 600))
CROP_SIZE_RANGE = (384, 600)


def rescale_image(array, scale=SCALE):
    """``(resized uint8 image, scale_factor (4,) float32)`` of an
    ``(H, W, 3)`` uint8 image."""
    height, width = array.shape[:2]
    new_h, new_w = rescaled_size(height, width, scale)
    if (new_h, new_w) != (height, width):
        array = np.clip(np.round(resize_bilinear_numpy(array, (new_h, new_w))), 0, 255).astype(np.uint8)
    w_scale, h_scale = np.float32(new_w / width), np.float32(new_h / height)
    return array, np.array([w_scale, h_scale, w_scale, h_scale], np.float32)


def resize_nearest(mask, size):
    """OpenCV's ``INTER_NEAREST`` resize of an ``(H, W, ...)`` array to
    ``size`` ``(height, width)``."""
    def index(size_in, size_out):
        ratio = np.float64(size_in) / np.float64(size_out)
        return np.minimum(np.floor(np.arange(size_out, dtype=np.float64) * ratio).astype(np.int64), size_in - 1)

    return mask[index(mask.shape[0], size[0])][:, index(mask.shape[1], size[1])]


def padded_size(height, width, size_divisor=SIZE_DIVISOR):
    return math.ceil(height / size_divisor) * size_divisor, math.ceil(width / size_divisor) * size_divisor


@dataclasses.dataclass
class TrainingExample:
    """One image through the training pipeline: ``image`` ``(Hp, Wp, 3)``
    float32 normalised and padded; ``boxes`` ``(K, 4)``, ``labels`` ``(K,)``,
    ``masks`` ``(K, Hp, Wp)`` uint8; ``img_shape`` the resized size,
    ``pad_shape`` the padded one, ``scale_factor`` (4,), ``flipped``."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    img_shape: tuple
    pad_shape: tuple
    scale_factor: np.ndarray
    flipped: bool


def _loaded(record):
    """The record's uint8 image, boxes, labels and ``(K, H, W)`` masks."""
    array = read_image(record.path)
    if array.shape[:2] != (record.height, record.width):
        raise ValueError(
            f"{record.path} is {array.shape[0]}x{array.shape[1]} pixels; its annotations say "
            f"{record.height}x{record.width}."
        )
    return array, record.boxes.astype(np.float32), record.labels.copy(), record.masks()


def _rescaled(image, boxes, masks, scale):
    """``Resize(img_scale=scale, keep_ratio=True)``: the boxes scaled and
    clipped to the new size, the masks nearest. Also returns the factor."""
    image, scale_factor = rescale_image(image, scale)
    new_h, new_w = image.shape[:2]
    boxes = boxes * scale_factor
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, new_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, new_h)
    if masks.shape[1:] != (new_h, new_w):
        masks = np.ascontiguousarray(resize_nearest(masks.transpose(1, 2, 0), (new_h, new_w)).transpose(2, 0, 1))
    return image, boxes, masks, scale_factor


def _flipped(image, boxes, masks):
    """``RandomFlip`` (horizontal) of the current image."""
    width = image.shape[1]
    boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    return image[:, ::-1], boxes, masks[:, :, ::-1]


def _cropped(image, boxes, labels, masks, size, offset):
    """``RandomCrop``'s crop of ``size`` ``(h, w)`` at ``offset`` ``(y, x)``:
    boxes shifted and clipped to the crop, those left without area dropped
    with their labels and masks (an image may keep none: the 3x configs
    allow negative crops)."""
    (crop_h, crop_w), (y1, x1) = size, offset
    image = image[y1:y1 + crop_h, x1:x1 + crop_w]
    height, width = image.shape[:2]
    boxes = boxes - np.array([x1, y1, x1, y1], np.float32)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return image, boxes[keep], labels[keep], masks[keep][:, y1:y1 + crop_h, x1:x1 + crop_w]


def _finished(image, boxes, labels, masks, scale_factor, flipped, size_divisor):
    """``Normalize`` and ``Pad``: a :class:`TrainingExample`."""
    new_h, new_w = image.shape[:2]
    pad_h, pad_w = padded_size(new_h, new_w, size_divisor)
    padded_image = np.zeros((pad_h, pad_w, 3), np.float32)
    padded_image[:new_h, :new_w] = preprocess_input(image)
    padded_masks = np.zeros((len(masks), pad_h, pad_w), np.uint8)
    padded_masks[:, :new_h, :new_w] = masks
    return TrainingExample(
        image=padded_image, boxes=boxes.astype(np.float32), labels=labels, masks=padded_masks,
        img_shape=(new_h, new_w), pad_shape=(pad_h, pad_w), scale_factor=scale_factor, flipped=bool(flipped),
    )


def training_example(record, flip=False, scale=SCALE, size_divisor=SIZE_DIVISOR):
    """An annotated image (:class:`.dataset.Instances`) through the 1x
    configs' training pipeline (resize, then flip); ``flip``: this draw of
    ``RandomFlip``."""
    image, boxes, labels, masks = _loaded(record)
    image, boxes, masks, scale_factor = _rescaled(image, boxes, masks, scale)
    if flip:
        image, boxes, masks = _flipped(image, boxes, masks)
    return _finished(image, boxes, labels, masks, scale_factor, flip, size_divisor)


def multiscale_example(record, rng, scales=MULTISCALE_SCALES, crop_resize_scales=CROP_RESIZE_SCALES,
                       crop_size_range=CROP_SIZE_RANGE, size_divisor=SIZE_DIVISOR):
    """An annotated image through the 3x configs' training pipeline, its
    random choices drawn from ``rng`` (a NumPy ``Generator``) in mmdet's
    order: ``RandomFlip(flip_ratio=0.5)`` of the original image, then
    ``AutoAugment`` choosing one of two policies with equal chance:

    1. resize to one of ``scales`` (:data:`MULTISCALE_SCALES`: short side
       480, 512, ... 800, long side at most 1333), each equally likely;
    2. resize to one of ``crop_resize_scales`` (short side 400, 500 or 600),
       ``RandomCrop(crop_type="absolute_range", crop_size=crop_size_range,
       allow_negative_crop=True)`` (height and width each uniform in
       384..600, at most the image's; the offset uniform), then resize to
       one of ``scales``.

    Then ``Normalize`` and ``Pad``. ``scale_factor`` is the last resize's,
    as mmdet's ``Resize(override=True)`` leaves it."""
    image, boxes, labels, masks = _loaded(record)
    flip = bool(rng.random() < 0.5)
    if flip:
        image, boxes, masks = _flipped(image, boxes, masks)
    if rng.integers(2) == 1:
        first = crop_resize_scales[rng.integers(len(crop_resize_scales))]
        image, boxes, masks, _ = _rescaled(image, boxes, masks, first)
        height, width = image.shape[:2]
        low, high = crop_size_range
        size = (int(rng.integers(min(height, low), min(height, high) + 1)),
                int(rng.integers(min(width, low), min(width, high) + 1)))
        offset = (int(rng.integers(0, height - size[0] + 1)), int(rng.integers(0, width - size[1] + 1)))
        image, boxes, labels, masks = _cropped(image, boxes, labels, masks, size, offset)
    scale = scales[rng.integers(len(scales))]
    image, boxes, masks, scale_factor = _rescaled(image, boxes, masks, scale)
    return _finished(image, boxes, labels, masks, scale_factor, flip, size_divisor)


def collate(examples, max_instances=None):
    """A batch of :class:`TrainingExample`: the images padded together to the
    largest (as mmdet's collate: each keeps its own ``pad_shape``), the
    ground truth padded to ``max_instances`` boxes (default: the most in
    the batch, at least one) with a validity mask. Returns a dict: ``images`` (B, H, W, 3),
    ``gt_boxes`` (B, G, 4), ``gt_labels`` (B, G), ``gt_valid`` (B, G),
    ``img_shapes`` and ``pad_shapes`` (B, 2), ``masks`` (a list of each
    image's ``(K, Hp, Wp)``)."""
    if not examples:
        raise ValueError("collate needs at least one example.")
    counts = [len(e.boxes) for e in examples]
    # at least one slot: a batch of images without instances (crops that
    # missed every box) still has a (padded) ground truth to assign against
    size = max(max(counts), 1) if max_instances is None else int(max_instances)
    if max(counts) > size:
        raise ValueError(f"An image has {max(counts)} instances; max_instances is {size}.")
    height = max(e.image.shape[0] for e in examples)
    width = max(e.image.shape[1] for e in examples)
    images = np.zeros((len(examples), height, width, 3), np.float32)
    gt_boxes = np.zeros((len(examples), size, 4), np.float32)
    gt_labels = np.zeros((len(examples), size), np.int32)
    gt_valid = np.zeros((len(examples), size), bool)
    for b, (example, count) in enumerate(zip(examples, counts)):
        images[b, : example.image.shape[0], : example.image.shape[1]] = example.image
        gt_boxes[b, :count], gt_labels[b, :count], gt_valid[b, :count] = example.boxes, example.labels, True
    return {
        "images": images, "gt_boxes": gt_boxes, "gt_labels": gt_labels, "gt_valid": gt_valid,
        "img_shapes": np.array([e.img_shape for e in examples]),
        "pad_shapes": np.array([e.pad_shape for e in examples]),
        "masks": [e.masks for e in examples],
    }


__all__ = ["CROP_RESIZE_SCALES", "CROP_SIZE_RANGE", "MULTISCALE_SCALES", "SCALE", "SIZE_DIVISOR",
           "TrainingExample", "collate", "multiscale_example", "padded_size", "rescale_image",
           "resize_nearest", "training_example"]
