"""Turning images into what the checkpoints expect.

The published checkpoints were evaluated with timm's transform: resize the
shorter side to ``input_size / crop_pct`` (bicubic), center-crop
``input_size``, scale to [0, 1], normalise with the ImageNet mean and std.
Each preset carries those numbers (:data:`keras_nextvit.PRESETS`).
"""

import os
import pathlib

import numpy as np
from keras import ops

from . import presets

DATA_DIR = pathlib.Path(__file__).parent / "data"
SAMPLE_IMAGE = DATA_DIR / "chelsea.jpg"  # scikit-image's "chelsea" (CC0): a tabby cat


def preprocess_input(x, mean=presets.IMAGENET_MEAN, std=presets.IMAGENET_STD):
    """Scale channels-last RGB images from [0, 255] and normalise them.

    ``x`` is uint8 or float, shape ``(..., 3)``; returns float32 in the same
    framework as ``x`` (NumPy for NumPy input, a backend tensor otherwise).
    """
    if np.shape(x)[-1] != len(mean):
        raise ValueError(
            f"preprocess_input expects channels-last RGB images (..., {len(mean)}), "
            f"got shape {tuple(np.shape(x))}."
        )
    mean = np.asarray(mean, dtype="float32") * 255.0
    scale = 1.0 / (np.asarray(std, dtype="float32") * 255.0)
    if isinstance(x, np.ndarray):
        return (x.astype("float32") - mean) * scale
    return (ops.cast(x, "float32") - mean) * scale


def _preset_transform(preset):
    if preset is None:
        return 224, 0.95, "bicubic"
    config = presets.PRESETS[preset] if isinstance(preset, str) else preset
    return config["input_size"], config["crop_pct"], config["interpolation"]


def load_image(image=None, preset="nextvit_small.bd_in1k", size=None, crop_pct=None):
    """Resize and center-crop an image as the preset's evaluation did.

    Args:
        image: a path, a PIL image or a uint8 ``(H, W, 3)`` array; ``None``
            gives the sample photograph the package ships.
        preset: preset name (or its dict) for size, crop and interpolation.
        size, crop_pct: override the preset's.

    Returns:
        uint8 array ``(size, size, 3)``; feed it to :func:`preprocess_input`.
    """
    from PIL import Image

    default_size, default_crop, interpolation = _preset_transform(preset)
    size = size or default_size
    crop_pct = crop_pct or default_crop
    if image is None:
        image = SAMPLE_IMAGE
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as handle:
            image = handle.convert("RGB")
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"Expected an (H, W, 3) RGB image, got shape {image.shape}.")
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    else:
        image = image.convert("RGB")
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[interpolation]
    scale_size = int(size / crop_pct)
    w, h = image.size
    if w <= h:
        new_w, new_h = scale_size, int(round(scale_size * h / w))
    else:
        new_w, new_h = int(round(scale_size * w / h)), scale_size
    image = image.resize((new_w, new_h), resample)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def imagenet_classes():
    """The 1000 ImageNet-1K class names, in the checkpoints' order."""
    return (DATA_DIR / "imagenet_classes.txt").read_text().splitlines()


def decode_predictions(logits, top=5, class_names=None):
    """``[[(class_index, name, probability), ...], ...]`` per image: the
    ``top`` classes by softmax probability, named by ``class_names``
    (default: ImageNet-1K's, for 1000 logits)."""
    logits = np.asarray(logits, dtype="float64")
    width = 1000 if class_names is None else len(class_names)
    if logits.ndim != 2 or logits.shape[-1] != width:
        raise ValueError(f"decode_predictions expects (batch, {width}) logits, got {logits.shape}.")
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    names = imagenet_classes() if class_names is None else list(class_names)
    return [
        [(int(i), names[i], float(row[i])) for i in np.argsort(-row)[:top]] for row in probs
    ]
