"""mmdet 2.23's image pipelines for Mask R-CNN, in NumPy: the rescale that
testing and training share, and training's
``Resize(img_scale=(1333, 800), keep_ratio=True)``, ``RandomFlip``,
``Normalize``, ``Pad(size_divisor=32)`` of one annotated image.

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


def training_example(record, flip=False, scale=SCALE, size_divisor=SIZE_DIVISOR):
    """An annotated image (:class:`.dataset.Instances`) through mmdet's
    training pipeline; ``flip``: this draw of ``RandomFlip``."""
    array = read_image(record.path)
    if array.shape[:2] != (record.height, record.width):
        raise ValueError(
            f"{record.path} is {array.shape[0]}x{array.shape[1]} pixels; its annotations say "
            f"{record.height}x{record.width}."
        )
    image, scale_factor = rescale_image(array, scale)
    new_h, new_w = image.shape[:2]
    boxes = record.boxes * scale_factor
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, new_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, new_h)
    masks = record.masks()
    if masks.shape[1:] != (new_h, new_w):
        masks = np.ascontiguousarray(resize_nearest(masks.transpose(1, 2, 0), (new_h, new_w)).transpose(2, 0, 1))
    if flip:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], axis=1)
    pad_h, pad_w = padded_size(new_h, new_w, size_divisor)
    padded_image = np.zeros((pad_h, pad_w, 3), np.float32)
    padded_image[:new_h, :new_w] = preprocess_input(image)
    padded_masks = np.zeros((len(masks), pad_h, pad_w), np.uint8)
    padded_masks[:, :new_h, :new_w] = masks
    return TrainingExample(
        image=padded_image, boxes=boxes.astype(np.float32), labels=record.labels.copy(), masks=padded_masks,
        img_shape=(new_h, new_w), pad_shape=(pad_h, pad_w), scale_factor=scale_factor, flipped=bool(flip),
    )


def collate(examples, max_instances=None):
    """A batch of :class:`TrainingExample`: the images padded together to the
    largest (as mmdet's collate: each keeps its own ``pad_shape``), the
    ground truth padded to ``max_instances`` boxes (default: the most in
    the batch) with a validity mask. Returns a dict: ``images`` (B, H, W, 3),
    ``gt_boxes`` (B, G, 4), ``gt_labels`` (B, G), ``gt_valid`` (B, G),
    ``img_shapes`` and ``pad_shapes`` (B, 2), ``masks`` (a list of each
    image's ``(K, Hp, Wp)``)."""
    if not examples:
        raise ValueError("collate needs at least one example.")
    counts = [len(e.boxes) for e in examples]
    size = max(counts) if max_instances is None else int(max_instances)
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


__all__ = ["SCALE", "SIZE_DIVISOR", "TrainingExample", "collate", "padded_size", "rescale_image",
           "resize_nearest", "training_example"]
