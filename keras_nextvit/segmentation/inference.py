"""Segmenting images: mmseg's test pipeline, whole-image and sliding-window.

The upstream ADE20K evaluation (``test_pipeline`` of the configs) is the
default of :func:`segment`:

1. resize keeping the aspect ratio to the ``(2048, 512)`` scale: the factor
   is ``min(2048 / long side, 512 / short side)``, each side
   ``int(side * factor + 0.5)``, bilinear with half-pixel centres and no
   antialiasing (OpenCV's ``INTER_LINEAR``, what mmcv uses), rounded to uint8;
2. ImageNet normalisation;
3. whole-image inference (the decode logits resized bilinearly to the
   resized image), or sliding windows (``mode="slide"``: crops of
   ``crop_size`` every ``stride`` pixels, logits averaged where they overlap);
4. the logits resized bilinearly back to the original size, then argmax.
"""

import os

import numpy as np

from .. import presets
from ..preprocessing import preprocess_input

TEST_SCALE = (2048, 512)
SLIDE_CROP = (512, 512)
SLIDE_STRIDE = (341, 341)


def read_image(image):
    """A path, PIL image or array -> uint8 ``(H, W, 3)`` RGB, or a clear error."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with Image.open(path) as handle:
                return np.asarray(handle.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path} is not an image file that PIL can read ({error}).") from None
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"Expected an RGB image of shape (height, width, 3), got shape {array.shape}.")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
            raise ValueError(
                "The image is float in [0, 1]; segment() expects uint8 pixels in [0, 255] "
                "(it normalises them itself)."
            )
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return array


def rescaled_size(height, width, scale=TEST_SCALE):
    """mmcv's ``imrescale`` size: keep the aspect ratio, long side at most
    ``max(scale)`` and short side at most ``min(scale)``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _axis_weights(in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.maximum((np.arange(out_size, dtype=np.float32) + 0.5) * scale - 0.5, 0)
    i0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (source - i0).astype(np.float32)


def resize_bilinear_numpy(array, size):
    """Half-pixel bilinear resize of ``(H, W, ...)`` without antialiasing
    (OpenCV's ``INTER_LINEAR``, PyTorch's ``align_corners=False``)."""
    array = np.asarray(array, dtype=np.float32)
    i0, i1, w = _axis_weights(array.shape[0], size[0])
    w = w.reshape((-1,) + (1,) * (array.ndim - 1))
    array = array[i0] + (array[i1] - array[i0]) * w
    j0, j1, v = _axis_weights(array.shape[1], size[1])
    v = v.reshape((1, -1) + (1,) * (array.ndim - 2))
    return array[:, j0] + (array[:, j1] - array[:, j0]) * v


def _forward(model, batch):
    """Logits of ``model`` for one preprocessed NHWC batch, at the batch's
    resolution, as NumPy."""
    out = model.predict_on_batch(batch) if hasattr(model, "predict_on_batch") else model(batch)
    if isinstance(out, (list, tuple)):
        out = out[0]  # the decode head's logits; an auxiliary output follows
    out = np.asarray(out, dtype=np.float32)
    if out.shape[1:3] != batch.shape[1:3]:  # stride-4 logits (upsample=False)
        out = np.stack([resize_bilinear_numpy(o, batch.shape[1:3]) for o in out])
    return out


def _fixed_size(model):
    shape = tuple(model.inputs[0].shape[1:3]) if hasattr(model, "inputs") else (None, None)
    return None if None in shape else shape


def slide_logits(model, image, crop_size=SLIDE_CROP, stride=SLIDE_STRIDE):
    """mmseg's ``slide_inference`` on one preprocessed ``(H, W, 3)`` image:
    windows of ``crop_size`` every ``stride`` (the last one flush with the
    border), logits averaged where windows overlap."""
    height, width = image.shape[:2]
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    total, count = None, np.zeros((height, width, 1), np.float32)
    for r in range(rows):
        for c in range(cols):
            y2 = min(r * stride_h + crop_h, height)
            x2 = min(c * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            crop = image[y1:y2, x1:x2]
            logits = _forward(model, crop[None])[0]
            if total is None:
                total = np.zeros((height, width, logits.shape[-1]), np.float32)
            total[y1:y2, x1:x2] += logits
            count[y1:y2, x1:x2] += 1
    return total / count


def segment(
    model,
    image,
    mode="whole",
    scale=TEST_SCALE,
    crop_size=SLIDE_CROP,
    stride=SLIDE_STRIDE,
    mean=presets.IMAGENET_MEAN,
    std=presets.IMAGENET_STD,
    return_logits=False,
):
    """Segment one image with the upstream test pipeline.

    Args:
        model: a segmenter (:func:`keras_nextvit.NextViTSegmenter`, any
            output stride) or any callable NHWC -> NHWC logits.
        image: a path, a PIL image or a uint8 ``(H, W, 3)`` RGB array.
        mode: ``"whole"`` (the configs' ``test_cfg``) or ``"slide"``.
        scale: the keep-ratio resize target (long, short); ``None`` keeps
            the image's size.
        crop_size, stride: the sliding windows (``mode="slide"``).
        mean, std: normalisation (ImageNet's, as the checkpoints').
        return_logits: also return the logits at the original size.

    Returns:
        An ``int32`` class map ``(H, W)`` at the image's original size (and
        the ``(H, W, classes)`` logits with ``return_logits``).

    >>> classes = keras_nextvit.segment(model, "street.jpg")
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}.")
    pixels = read_image(image)
    height, width = pixels.shape[:2]
    if min(height, width) < presets.MIN_INPUT_SIZE:
        raise ValueError(
            f"The image is {height}x{width} pixels; segmenting needs at least "
            f"{presets.MIN_INPUT_SIZE} pixels on each side."
        )
    size = (height, width) if scale is None else rescaled_size(height, width, scale)
    resized = pixels if size == (height, width) else resize_bilinear_numpy(pixels, size)
    resized = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    batch = preprocess_input(resized[None], mean=mean, std=std)
    fixed = _fixed_size(model)
    if mode == "whole":
        if fixed is not None and fixed != size:
            raise ValueError(
                f"The model takes {fixed[0]}x{fixed[1]} images only, and the resized image is "
                f"{size[0]}x{size[1]}. Use mode='slide' with crop_size={fixed}, or build the "
                "segmenter with input_shape=(None, None, 3)."
            )
        logits = _forward(model, batch)[0]
    else:
        if fixed is not None and tuple(crop_size) != fixed:
            raise ValueError(f"The model takes {fixed} images; pass crop_size={fixed}.")
        if min(size) < min(crop_size) and fixed is not None:
            raise ValueError(
                f"The resized image ({size[0]}x{size[1]}) is smaller than the model's fixed "
                f"window {fixed}."
            )
        logits = slide_logits(model, batch[0], crop_size, stride)
    if logits.shape[:2] != (height, width):
        logits = resize_bilinear_numpy(logits, (height, width))
    classes = np.argmax(logits, axis=-1).astype(np.int32)
    return (classes, logits) if return_logits else classes
