"""Semantic segmentation data: folders of (image, mask) pairs as ``tf.data`` pipelines.

Training follows mmsegmentation 0.x's ADE20K recipe (the one Next-ViT's
``fpn_512_*`` and ``upernet_512_*`` configs use), one (image, mask) pair at a
time, in this order:

1. :func:`random_rescale` - draw ``r ~ U(ratio_range)`` (0.5..2.0), target
   scale ``(int(2048 r), int(512 r))``, rescale keeping the aspect ratio so the
   long edge is at most the larger and the short edge at most the smaller
   target (:func:`rescaled_size`). Image bilinear, mask nearest.
2. :func:`random_crop` - a ``crop_size`` window (512 x 512) placed uniformly;
   with ``cat_max_ratio`` (0.75) a window is accepted only if it holds more
   than one class and the most frequent class covers less than 75% of its
   labelled (not ``ignore_index``) pixels; up to 10 windows are checked, and
   if none passes a further, unchecked one is used (mmseg's loop). An image
   smaller than the crop is kept whole.
3. :func:`random_flip` - horizontal flip of image and mask with probability 0.5.
4. :func:`photometric_distortion` - mmseg's ``PhotoMetricDistortion`` (image only).
5. Normalise with the ImageNet mean and std (mmseg's ``img_norm_cfg``: mean
   123.675/116.28/103.53, std 58.395/57.12/57.375, i.e.
   :func:`keras_nextvit.data.normalize`), then pad bottom/right to
   ``crop_size``: the image with 0, the mask with ``ignore_index`` (255).

Masks are loaded as stored (uint8, one channel); with ``reduce_zero_label``
(ADE20K: 0 is "other") value 0 becomes ``ignore_index`` and every other value
``v`` becomes ``v - 1`` (255 stays 255), as mmseg's ``LoadAnnotations``.

Every random draw is stateless (``tf.random.stateless_*``) on a seed derived
from ``(seed, epoch, position in the epoch)``, as in
:mod:`keras_nextvit.data`: epoch ``e`` yields the same batches whether a run
started at epoch 0 or resumed at ``e``.

Folder layouts (:func:`segmentation_folder`): ADE20K's
``root/images/{split}/*.jpg`` + ``root/annotations/{split}/*.png``, or a plain
``root/images/*`` + ``root/masks/*.png`` (or ``root/annotations/*.png``); an
image and its mask share a file stem.
"""

import colorsys
import concurrent.futures
import dataclasses
import math
import os
import pathlib

import numpy as np
import tensorflow as tf

from .. import presets
from ..data import IMAGE_EXTENSIONS, decode_image, normalize

__all__ = [
    "Augmentation",
    "apply_reduce_zero_label",
    "check_masks",
    "decode_mask",
    "evaluation_dataset",
    "iterate_pairs",
    "photometric_distortion",
    "random_crop",
    "random_flip",
    "random_rescale",
    "rescale",
    "rescaled_size",
    "segmentation_folder",
    "steps_per_epoch",
    "training_dataset",
    "training_transform",
    "write_synthetic_scenes",
]

MASK_EXTENSION = ".png"


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time transform; the defaults are mmseg's ADE20K 512x512 recipe.

    ``img_scale`` is mmseg's ``(long, short)`` target (only which edge is longer
    matters, so ``(2048, 512)`` and ``(512, 2048)`` are the same). ``ratio_range``
    ``None`` rescales to ``img_scale`` itself. ``crop_size`` is ``(height,
    width)``. ``random_crop=False`` crops the centre window instead (and skips
    the ``cat_max_ratio`` search). ``cat_max_ratio >= 1`` disables the search.
    """

    img_scale: tuple = (2048, 512)
    ratio_range: tuple = (0.5, 2.0)
    crop_size: tuple = (512, 512)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255
    random_crop: bool = True
    brightness_delta: float = 32.0
    contrast_range: tuple = (0.5, 1.5)
    saturation_range: tuple = (0.5, 1.5)
    hue_delta: int = 18

    @classmethod
    def none(cls, **overrides):
        """No randomness: rescale to ``img_scale`` (aspect kept), centre crop, pad.

        Any field can be overridden, e.g. ``Augmentation.none(crop_size=(64, 64))``.
        """
        fields = dict(
            ratio_range=None,
            cat_max_ratio=1.0,
            flip_prob=0.0,
            photometric=False,
            random_crop=False,
        )
        fields.update(overrides)
        return cls(**fields)


# --------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------


def _images_in(folder):
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _pair(image_dir, mask_dir, root):
    images = _images_in(image_dir)
    if not images:
        subfolders = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
        hint = f" It has sub-folders {subfolders[:5]}: pass split=..." if subfolders else ""
        raise ValueError(
            f"Segmentation folder {str(root)!r}: {str(image_dir)!r} has no images with "
            f"extensions {IMAGE_EXTENSIONS}.{hint}"
        )
    stems = {}
    for path in images:
        if path.stem in stems:
            raise ValueError(
                f"Segmentation folder {str(root)!r}: two images share the stem {path.stem!r} "
                f"({stems[path.stem].name} and {path.name}); masks are paired by stem."
            )
        stems[path.stem] = path
    pairs, missing = [], []
    for path in images:
        mask = mask_dir / (path.stem + MASK_EXTENSION)
        if mask.is_file():
            pairs.append((str(path), str(mask)))
        else:
            missing.append(path)
    if missing:
        raise ValueError(
            f"Segmentation folder {str(root)!r}: image {str(missing[0])!r} has no mask "
            f"{str(mask_dir / (missing[0].stem + MASK_EXTENSION))!r}"
            + (f" ({len(missing)} images have none)." if len(missing) > 1 else ".")
        )
    return pairs


def segmentation_folder(root, split=None):
    """List the ``(image_path, mask_path)`` pairs of a segmentation folder, sorted.

    Layouts:

    * ADE20K: ``root/images/{split}/<name>.jpg`` and
      ``root/annotations/{split}/<name>.png``. ``split`` defaults to
      ``"training"`` when ``root/images/training`` exists.
    * Plain: ``root/images/<name>.<ext>`` and ``root/masks/<name>.png`` (or
      ``root/annotations/<name>.png``); used when ``split`` is None and there is
      no ``root/images/training``.

    Images are files with extensions :data:`keras_nextvit.data.IMAGE_EXTENSIONS`;
    each needs a PNG mask with the same stem (masks without an image are ignored).

    Raises:
        FileNotFoundError: ``root`` or a required sub-folder does not exist.
        ValueError: no images, or an image without a mask (named).
    """
    root_path = pathlib.Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"Segmentation folder {str(root)!r} does not exist or is not a directory."
        )
    images = root_path / "images"
    if not images.is_dir():
        raise FileNotFoundError(
            f"Segmentation folder {str(root)!r} has no 'images' folder; expected "
            "root/images/{split}/*.jpg with root/annotations/{split}/*.png (ADE20K) or "
            "root/images/* with root/masks/*.png."
        )
    if split is None and (images / "training").is_dir():
        split = "training"
    if split is not None:
        image_dir = images / split
        mask_dir = root_path / "annotations" / split
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"Segmentation folder {str(root)!r} has no folder {str(folder)!r} "
                    f"(ADE20K layout, split {split!r})."
                )
        return _pair(image_dir, mask_dir, root)
    for name in ("masks", "annotations"):
        mask_dir = root_path / name
        if mask_dir.is_dir():
            return _pair(images, mask_dir, root)
    raise FileNotFoundError(
        f"Segmentation folder {str(root)!r} has no 'masks' or 'annotations' folder beside "
        "'images'."
    )


def steps_per_epoch(pairs, batch_size):
    """Full batches per epoch (the last partial batch is dropped)."""
    steps = len(pairs) // batch_size
    if steps < 1:
        raise ValueError(
            f"The segmentation dataset has {len(pairs)} images, fewer than one batch of "
            f"{batch_size}."
        )
    return steps


def _mask_values(path):
    """The set of values present in a single-channel mask (uint8 ``[256]`` bool)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode != "L":
            raise ValueError(
                f"Mask {str(path)!r} has PIL mode {image.mode!r}; masks must be single-channel "
                "8-bit PNGs (mode 'L') holding class indices (a palette PNG decodes to colours "
                "in TensorFlow: save it with Image.fromarray(np.asarray(mask), 'L'))."
            )
        return np.asarray(image.histogram()) > 0


def check_masks(pairs, num_classes, reduce_zero_label=False, ignore_index=255):
    """Raise ``ValueError`` unless every mask value is ``< num_classes`` or ``ignore_index``.

    Values are checked after ``reduce_zero_label``. Reads each mask once with PIL
    (a histogram per file, several files at a time). The error names the file,
    its offending values and ``num_classes``.
    """
    mapping = np.arange(256)
    if reduce_zero_label:
        mapping = np.where(mapping == 0, 255, mapping - 1)
        mapping[255] = 255
    masks = [mask for _, mask in pairs]
    workers = min(8, (os.cpu_count() or 1) + 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for path, present in zip(masks, pool.map(_mask_values, masks)):
            values = np.unique(mapping[present])
            bad = values[(values >= num_classes) & (values != ignore_index)]
            if bad.size:
                raise ValueError(
                    f"Mask {path!r} has values {bad.tolist()[:10]} (after "
                    f"reduce_zero_label={reduce_zero_label}), but num_classes={num_classes}: "
                    f"labels must be 0..{num_classes - 1} or ignore_index={ignore_index}."
                )


# --------------------------------------------------------------------------
# Decoding and labels
# --------------------------------------------------------------------------


def decode_mask(path):
    """Read a single-channel PNG into a uint8 ``(H, W)`` tensor."""
    mask = tf.io.decode_png(tf.io.read_file(path), channels=0, dtype=tf.uint8)
    check = tf.debugging.Assert(
        tf.equal(tf.shape(mask)[-1], 1),
        [
            "Segmentation masks must be single-channel 8-bit PNGs (mode 'L'); this one "
            "decodes to several channels (RGB, or a palette PNG):",
            path,
        ],
    )
    with tf.control_dependencies([check]):
        mask = tf.identity(mask[:, :, 0])
    mask.set_shape((None, None))
    return mask


def apply_reduce_zero_label(mask, ignore_index=255):
    """ADE20K's label shift: 0 -> ``ignore_index``, ``v`` -> ``v - 1``, 255 stays 255."""
    mask = tf.convert_to_tensor(mask)
    shifted = tf.where(mask == 0, tf.cast(ignore_index, mask.dtype), mask - 1)
    return tf.where(mask == 255, tf.cast(255, mask.dtype), shifted)


def _load_pair(image_path, mask_path, reduce_zero_label, ignore_index):
    image = decode_image(image_path)
    mask = decode_mask(mask_path)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(mask))),
        ["Image and mask sizes differ:", image_path, tf.shape(image), mask_path, tf.shape(mask)],
    )
    with tf.control_dependencies([check]):
        mask = tf.identity(mask)
    if reduce_zero_label:
        mask = apply_reduce_zero_label(mask, ignore_index)
    return image, mask


# --------------------------------------------------------------------------
# The transforms (stateless; seed: int32/int64 tensor of shape [2])
# --------------------------------------------------------------------------


def _split(seed, num):
    seed = tf.cast(seed, tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num), num=num)


def _uniform(seed, shape=(), dtype=tf.float32):
    return tf.random.stateless_uniform(shape, seed, dtype=dtype)


def rescaled_size(height, width, scale):
    """mmcv's ``rescale_size`` with a ``(long, short)`` scale: ``(new_h, new_w)`` int32.

    ``factor = min(max(scale) / max(h, w), min(scale) / min(h, w))``; each side
    becomes ``int(side * factor + 0.5)``. Computed in float64.
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.cast(tf.convert_to_tensor(scale), tf.float64)
    factor = tf.minimum(
        tf.reduce_max(scale) / tf.maximum(h, w), tf.reduce_min(scale) / tf.minimum(h, w)
    )
    new_h = tf.cast(tf.floor(h * factor + 0.5), tf.int32)
    new_w = tf.cast(tf.floor(w * factor + 0.5), tf.int32)
    return new_h, new_w


def _resize_nearest(mask, new_h, new_w):
    """OpenCV's INTER_NEAREST: output index ``i`` reads ``min(floor(i * in / out), in - 1)``."""
    shape = tf.shape(mask)

    def indices(size_in, size_out):
        ratio = tf.cast(size_in, tf.float64) / tf.cast(size_out, tf.float64)
        index = tf.cast(tf.floor(tf.cast(tf.range(size_out), tf.float64) * ratio), tf.int32)
        return tf.minimum(index, size_in - 1)

    rows = tf.gather(mask, indices(shape[0], new_h), axis=0)
    return tf.gather(rows, indices(shape[1], new_w), axis=1)


def _resize_bilinear(image, new_h, new_w):
    """Bilinear (half-pixel centres, no anti-aliasing, as OpenCV), rounded to 0..255."""
    resized = tf.image.resize(
        tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method="bilinear", antialias=False
    )
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def rescale(image, mask, scale):
    """Resize keeping the aspect ratio to :func:`rescaled_size` of ``scale`` = (long, short).

    Returns ``(image float32 holding integers 0..255, mask same dtype)``;
    ``mask`` may be None.
    """
    image = tf.convert_to_tensor(image)
    if mask is not None:
        mask = tf.convert_to_tensor(mask)
    shape = tf.shape(image)
    new_h, new_w = rescaled_size(shape[0], shape[1], scale)
    image = _resize_bilinear(image, new_h, new_w)
    if mask is not None:
        mask = _resize_nearest(mask, new_h, new_w)
    return image, mask


def random_rescale(image, mask, seed, img_scale=(2048, 512), ratio_range=(0.5, 2.0)):
    """mmseg's ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    ``r ~ U(ratio_range)``; scale ``(int(img_scale[0] r), int(img_scale[1] r))``;
    then :func:`rescale`. ``ratio_range=None`` uses ``img_scale`` as is.
    """
    scale = tf.constant(img_scale, tf.float64)
    if ratio_range is not None:
        lo, hi = float(ratio_range[0]), float(ratio_range[1])
        ratio = lo + (hi - lo) * _uniform(seed, dtype=tf.float64)
        scale = tf.floor(scale * ratio)
    return rescale(image, mask, scale)


def _crop_offsets(seed, margin_h, margin_w, count):
    s_h, s_w = _split(seed, 2)

    def draw(s, margin):
        u = _uniform(s, [count], tf.float64)
        n = tf.cast(margin + 1, tf.float64)
        return tf.minimum(tf.cast(tf.floor(u * n), tf.int32), margin)

    return draw(s_h, margin_h), draw(s_w, margin_w)


def random_crop(
    image,
    mask,
    seed,
    crop_size=(512, 512),
    cat_max_ratio=0.75,
    ignore_index=255,
    max_attempts=10,
    random=True,
):
    """mmseg's ``RandomCrop(crop_size, cat_max_ratio)``: ``(image, mask)`` cropped.

    A window of ``crop_size = (height, width)`` (clipped to the image) at offsets
    uniform in ``[0, margin]``. With ``cat_max_ratio < 1``, window ``i``
    (``i < max_attempts``) is accepted when its mask holds more than one class
    other than ``ignore_index`` and the most frequent one covers less than
    ``cat_max_ratio`` of them; the first accepted window is used, and if none
    is, window ``max_attempts`` (drawn, not checked), as mmseg's loop does.
    ``random=False`` takes the centre window (``margin // 2``).
    """
    image = tf.convert_to_tensor(image)
    mask = tf.convert_to_tensor(mask)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    margin_h = tf.maximum(height - crop_h, 0)
    margin_w = tf.maximum(width - crop_w, 0)
    size_h = tf.minimum(height, crop_h)
    size_w = tf.minimum(width, crop_w)
    if not random:
        top, left = margin_h // 2, margin_w // 2
    else:
        tops, lefts = _crop_offsets(seed, margin_h, margin_w, max_attempts + 1)
        index = tf.constant(0)
        if cat_max_ratio < 1.0:

            def accepted(i):
                window = tf.slice(mask, tf.stack([tops[i], lefts[i]]), tf.stack([size_h, size_w]))
                values = tf.reshape(tf.cast(window, tf.int32), [-1])
                counts = tf.math.bincount(values, minlength=256, maxlength=256)
                if 0 <= ignore_index < 256:
                    counts = tf.tensor_scatter_nd_update(counts, [[ignore_index]], [0])
                classes = tf.reduce_sum(tf.cast(counts > 0, tf.int32))
                total = tf.cast(tf.reduce_sum(counts), tf.float64)
                top_share = tf.cast(tf.reduce_max(counts), tf.float64) / tf.maximum(total, 1.0)
                return (classes > 1) & (top_share < cat_max_ratio)

            def keep_looking(i):
                return tf.cond(i < max_attempts, lambda: tf.logical_not(accepted(i)), lambda: False)

            (index,) = tf.while_loop(keep_looking, lambda i: (i + 1,), (index,))
        top, left = tops[index], lefts[index]
    image = tf.slice(image, tf.stack([top, left, 0]), tf.stack([size_h, size_w, -1]))
    mask = tf.slice(mask, tf.stack([top, left]), tf.stack([size_h, size_w]))
    return image, mask


def random_flip(image, mask, seed, prob=0.5):
    """Flip image and mask left-right together with probability ``prob``."""
    image = tf.convert_to_tensor(image)
    mask = tf.convert_to_tensor(mask)
    flip = _uniform(seed) < prob
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    mask = tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask)
    return image, mask


def _to_hsv8(x):
    """RGB 0..255 -> OpenCV 8-bit HSV: H in 0..179 (2 degrees a step), S and V in 0..255."""
    hsv = tf.image.rgb_to_hsv(x / 255.0)
    h = tf.math.floormod(tf.round(hsv[..., 0] * 180.0), 180.0)
    s = tf.round(hsv[..., 1] * 255.0)
    v = tf.round(hsv[..., 2] * 255.0)
    return h, s, v


def _from_hsv8(h, s, v):
    rgb = tf.image.hsv_to_rgb(tf.stack([h / 180.0, s / 255.0, v / 255.0], axis=-1))
    return tf.clip_by_value(tf.round(rgb * 255.0), 0.0, 255.0)


def photometric_distortion(
    image,
    seed,
    brightness_delta=32.0,
    contrast_range=(0.5, 1.5),
    saturation_range=(0.5, 1.5),
    hue_delta=18,
):
    """mmseg's ``PhotoMetricDistortion`` on a ``[H, W, 3]`` image of values 0..255.

    Each step applies with probability 0.5, and each result is clipped to
    0..255 and truncated to integers (mmseg works in uint8):

    1. brightness: ``x + U(-32, 32)``;
    2. contrast ``x * U(0.5, 1.5)``, here if ``mode == 1`` (probability 0.5);
    3. saturation: in HSV, ``S * U(0.5, 1.5)``;
    4. hue: in HSV, ``H + d`` modulo 180, ``d`` an integer in ``[-18, 18)``
       (OpenCV units of 2 degrees, so -36..+34 degrees);
    5. contrast, here if ``mode == 0``.

    The HSV round trips use ``tf.image.rgb_to_hsv`` / ``hsv_to_rgb`` with H, S
    and V quantised as OpenCV's 8-bit HSV (H to 180 steps, S and V to 256);
    OpenCV's fixed-point arithmetic may differ by one grey level.

    Returns float32 ``[H, W, 3]`` holding integers 0..255.
    """
    x = tf.cast(image, tf.float32)
    (s_b, s_bv, s_mode, s_c1, s_c1v, s_s, s_sv, s_h, s_hv, s_c2, s_c2v) = _split(seed, 11)

    def convert(t, alpha=1.0, beta=0.0):
        return tf.floor(tf.clip_by_value(t * alpha + beta, 0.0, 255.0))

    def maybe(s, fn, t):
        return tf.cond(_uniform(s) < 0.5, lambda: fn(t), lambda: t)

    def uniform(s, lo, hi):
        return lo + (hi - lo) * _uniform(s)

    def brightness(t):
        return convert(t, beta=uniform(s_bv, -brightness_delta, brightness_delta))

    def contrast(s_value):
        return lambda t: convert(t, alpha=uniform(s_value, *contrast_range))

    def saturation(t):
        h, s, v = _to_hsv8(t)
        return _from_hsv8(h, convert(s, alpha=uniform(s_sv, *saturation_range)), v)

    def hue(t):
        h, s, v = _to_hsv8(t)
        delta = tf.random.stateless_uniform(
            [], s_hv, minval=-int(hue_delta), maxval=int(hue_delta), dtype=tf.int32
        )
        return _from_hsv8(tf.math.floormod(h + tf.cast(delta, tf.float32), 180.0), s, v)

    contrast_first = _uniform(s_mode) < 0.5  # mmseg's mode == 1
    x = maybe(s_b, brightness, x)
    x = tf.cond(contrast_first, lambda: maybe(s_c1, contrast(s_c1v), x), lambda: x)
    x = maybe(s_s, saturation, x)
    x = maybe(s_h, hue, x)
    x = tf.cond(contrast_first, lambda: x, lambda: maybe(s_c2, contrast(s_c2v), x))
    return x


def training_transform(
    image,
    mask,
    seed,
    aug=Augmentation(),
    mean=presets.IMAGENET_MEAN,
    std=presets.IMAGENET_STD,
):
    """One training pair: rescale, crop, flip, photometric distortion, normalise, pad.

    Args:
        image: uint8 (or 0..255 float) ``[H, W, 3]``.
        mask: uint8 ``[H, W]`` (labels already reduced if wanted).
        seed: int32/int64 ``[2]``.

    Returns:
        ``(image float32 [crop_h, crop_w, 3] normalised, mask int32 [crop_h, crop_w])``;
        the padded bottom/right is 0 in the image and ``aug.ignore_index`` in the mask.
    """
    s_scale, s_crop, s_flip, s_photo = _split(seed, 4)
    image, mask = random_rescale(image, mask, s_scale, aug.img_scale, aug.ratio_range)
    image, mask = random_crop(
        image,
        mask,
        s_crop,
        aug.crop_size,
        aug.cat_max_ratio,
        aug.ignore_index,
        random=aug.random_crop,
    )
    if aug.flip_prob > 0:
        image, mask = random_flip(image, mask, s_flip, aug.flip_prob)
    if aug.photometric:
        image = photometric_distortion(
            image,
            s_photo,
            aug.brightness_delta,
            aug.contrast_range,
            aug.saturation_range,
            aug.hue_delta,
        )
    image = normalize(image, mean, std)
    crop_h, crop_w = int(aug.crop_size[0]), int(aug.crop_size[1])
    shape = tf.shape(mask)
    paddings = tf.stack([[0, crop_h - shape[0]], [0, crop_w - shape[1]]])
    image = tf.pad(image, tf.concat([paddings, [[0, 0]]], axis=0), constant_values=0.0)
    mask = tf.pad(tf.cast(mask, tf.int32), paddings, constant_values=int(aug.ignore_index))
    image.set_shape((crop_h, crop_w, 3))
    mask.set_shape((crop_h, crop_w))
    return image, mask


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------


def _finish(ds):
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def training_dataset(
    pairs,
    batch_size,
    epoch,
    seed=0,
    aug=Augmentation(),
    reduce_zero_label=False,
    num_classes=None,
    shuffle=True,
    num_epochs=1,
    max_steps_per_epoch=None,
    mean=presets.IMAGENET_MEAN,
    std=presets.IMAGENET_STD,
):
    """Batches ``(images float32 [B, h, w, 3], masks int32 [B, h, w])`` of epoch ``epoch``.

    ``(h, w)`` is ``aug.crop_size``. Each epoch is a permutation of ``pairs``
    drawn from ``(seed, epoch)`` (the given order if ``shuffle`` is False), cut
    into ``steps_per_epoch`` full batches (at most ``max_steps_per_epoch``);
    each pair's augmentation draws from ``(seed, epoch, position)``.
    ``num_epochs > 1`` chains epochs ``epoch .. epoch + num_epochs - 1``.

    ``num_classes``, if given, is checked eagerly against every mask
    (:func:`check_masks`) before the dataset is built.
    """
    pairs = [(str(image), str(mask)) for image, mask in pairs]
    steps = steps_per_epoch(pairs, batch_size)
    if max_steps_per_epoch:
        steps = min(steps, int(max_steps_per_epoch))
    if num_classes is not None:
        check_masks(pairs, num_classes, reduce_zero_label, aug.ignore_index)
    n = len(pairs)
    count = steps * batch_size
    image_paths = tf.constant([image for image, _ in pairs])
    mask_paths = tf.constant([mask for _, mask in pairs])

    def example(index, image_seed):
        image, mask = _load_pair(
            image_paths[index], mask_paths[index], reduce_zero_label, aug.ignore_index
        )
        return training_transform(image, mask, image_seed, aug, mean, std)

    def epoch_dataset(e):
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(e, tf.int64)])
        if shuffle:
            order = tf.argsort(tf.random.stateless_uniform([n], seed=epoch_seed))
        else:
            order = tf.range(n)
        image_seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(epoch_seed, 1), num=count
        )
        examples = tf.data.Dataset.from_tensor_slices((order[:count], image_seeds)).map(
            example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return examples.batch(batch_size, drop_remainder=True)

    epochs = tf.data.Dataset.range(int(epoch), int(epoch) + int(num_epochs))
    return _finish(epochs.flat_map(epoch_dataset))


def evaluation_dataset(pairs, img_scale=None, reduce_zero_label=False, ignore_index=255):
    """Unbatched ``(image uint8 [h, w, 3], mask int32 [H, W])``, every pair once, in order.

    The mask is at the image's original size (where mmseg scores). With
    ``img_scale`` (e.g. ``(2048, 512)``, mmseg's ADE20K test scale) the image is
    rescaled keeping its aspect ratio (:func:`rescale`, bilinear); otherwise it
    is the original. Images differ in size: batch them yourself if they don't.
    """
    pairs = [(str(image), str(mask)) for image, mask in pairs]

    def load(image_path, mask_path):
        image, mask = _load_pair(image_path, mask_path, reduce_zero_label, ignore_index)
        if img_scale is not None:
            image, _ = rescale(image, None, tf.constant(img_scale, tf.float64))
            image = tf.cast(image, tf.uint8)
        return image, tf.cast(mask, tf.int32)

    ds = tf.data.Dataset.from_tensor_slices(
        ([image for image, _ in pairs], [mask for _, mask in pairs])
    )
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds)


def iterate_pairs(pairs, reduce_zero_label=False, ignore_index=255):
    """Yield ``(image uint8 [H, W, 3], mask int32 [H, W])`` NumPy arrays, read with PIL."""
    from PIL import Image

    for image_path, mask_path in pairs:
        with Image.open(image_path) as image:
            image = np.asarray(image.convert("RGB"))
        with Image.open(mask_path) as mask:
            if mask.mode != "L":
                raise ValueError(
                    f"Mask {str(mask_path)!r} has PIL mode {mask.mode!r}; masks must be "
                    "single-channel 8-bit PNGs (mode 'L')."
                )
            mask = np.asarray(mask).astype(np.int32)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"Image {str(image_path)!r} is {image.shape[:2]} but its mask "
                f"{str(mask_path)!r} is {mask.shape}."
            )
        if reduce_zero_label:
            mask = np.where(mask == 0, ignore_index, np.where(mask == 255, 255, mask - 1))
        yield image, mask


# --------------------------------------------------------------------------
# Synthetic scenes
# --------------------------------------------------------------------------

#: Shape kind of each foreground class (class ``k`` is ``SCENE_SHAPES[k - 1]``).
SCENE_SHAPES = ("rectangle", "disc", "triangle", "ring", "diamond", "cross")
#: Texture of each foreground class, in the same order.
SCENE_TEXTURES = ("noise", "hstripes", "checker", "vstripes", "dstripes", "dots")


def _shape_mask(kind, yy, xx, cy, cx, r, rng):
    dy, dx = yy - cy, xx - cx
    if kind == "rectangle":
        a, b = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        return (np.abs(dx) < a) & (np.abs(dy) < b)
    if kind == "disc":
        return dx**2 + dy**2 < r**2
    if kind == "triangle":  # apex up, base down
        return (dy < 0.6 * r) & (dy > -r + 2 * np.abs(dx) * 0.85)
    if kind == "ring":
        d2 = dx**2 + dy**2
        return (d2 < r**2) & (d2 > (0.55 * r) ** 2)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) < r
    arm = r / 3  # cross
    return ((np.abs(dx) < arm) & (np.abs(dy) < r)) | ((np.abs(dy) < arm) & (np.abs(dx) < r))


def _texture(kind, yy, xx, rng):
    """A pattern in [-1, 1] of the given kind, random phase."""
    phase = rng.uniform(0, 2 * math.pi)
    if kind == "hstripes":
        return np.sin(yy * (2 * math.pi / 4) + phase)
    if kind == "vstripes":
        return np.sin(xx * (2 * math.pi / 4) + phase)
    if kind == "dstripes":
        return np.sin((xx + yy) * (2 * math.pi / 6) + phase)
    if kind == "checker":
        return np.where(((yy // 3) + (xx // 3)) % 2 == 0, 1.0, -1.0)
    if kind == "dots":
        return np.where(((yy % 4) < 2) & ((xx % 4) < 2), 1.0, -0.5)
    return rng.uniform(-1, 1, yy.shape)  # noise


def _scene(rng, height, width, num_classes):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    # Background (class 0): desaturated colour, smooth blotches and faint oblique stripes.
    grey = rng.uniform(90, 170)
    tint = rng.uniform(-12, 12, 3)
    coarse = rng.uniform(-1, 1, (height // 8 + 2, width // 8 + 2))
    blotches = np.kron(coarse, np.ones((8, 8)))[:height, :width]
    angle = rng.uniform(0, math.pi)
    stripes = np.sin(
        (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / rng.uniform(7, 12))
    )
    base = grey + 25 * blotches + 12 * stripes
    image = base[..., None] + tint
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, num_classes))
        r = rng.uniform(0.15, 0.3) * side
        cy = rng.uniform(0.2, 0.8) * height
        cx = rng.uniform(0.2, 0.8) * width
        inside = _shape_mask(SCENE_SHAPES[k - 1], yy, xx, cy, cx, r, rng)
        hue = (k - 1) / (num_classes - 1) + rng.uniform(-0.03, 0.03)
        colour = np.array(
            colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.65, 0.9), rng.uniform(0.6, 0.9))
        )
        pattern = _texture(SCENE_TEXTURES[k - 1], yy, xx, rng)
        fill = colour * 255 * (1 + 0.18 * pattern[..., None])
        image = np.where(inside[..., None], fill, image)
        mask[inside] = k
    image = image + rng.normal(0, 5, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def write_synthetic_scenes(
    root, count=16, size=(64, 64), num_classes=4, seed=0, layout="ade20k", split="training"
):
    """Write a small learnable segmentation dataset; return its sorted ``(image, mask)`` pairs.

    Each ``size = (height, width)`` scene has a textured, desaturated
    background (class 0: grey blotches and faint oblique stripes) and one to
    three objects; class ``k >= 1`` is shape ``SCENE_SHAPES[k - 1]``
    (rectangle, disc, triangle, ring, diamond, cross), with its own hue
    (``(k - 1) / (num_classes - 1)`` of the colour wheel, saturated) and
    texture ``SCENE_TEXTURES[k - 1]``; later objects cover earlier ones. Masks
    hold the class indices ``0 .. num_classes - 1`` directly (no 255, so use
    ``reduce_zero_label=False``).

    Layouts: ``"ade20k"`` writes ``root/images/{split}/scene_NNNNN.jpg``
    (quality 95) and ``root/annotations/{split}/scene_NNNNN.png``; ``"plain"``
    writes ``root/images/scene_NNNNN.png`` and ``root/masks/scene_NNNNN.png``
    (``split`` unused). Scene ``i`` depends only on ``(seed, i)``: the same
    seed gives the same files; use another seed for a held-out split.
    """
    from PIL import Image

    if not 2 <= num_classes <= len(SCENE_SHAPES) + 1:
        raise ValueError(
            f"num_classes must be 2..{len(SCENE_SHAPES) + 1} (background + "
            f"{len(SCENE_SHAPES)} shape kinds), got {num_classes}."
        )
    if layout not in ("ade20k", "plain"):
        raise ValueError(f"layout must be 'ade20k' or 'plain', got {layout!r}.")
    root = pathlib.Path(root)
    if layout == "ade20k":
        image_dir, mask_dir, ext = root / "images" / split, root / "annotations" / split, ".jpg"
    else:
        image_dir, mask_dir, ext = root / "images", root / "masks", ".png"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    height, width = size
    pairs = []
    for i in range(count):
        rng = np.random.default_rng([int(seed), i])
        image, mask = _scene(rng, height, width, num_classes)
        image_path = image_dir / f"scene_{i:05d}{ext}"
        mask_path = mask_dir / f"scene_{i:05d}.png"
        if ext == ".jpg":
            Image.fromarray(image).save(image_path, quality=95)
        else:
            Image.fromarray(image).save(image_path)
        Image.fromarray(mask, "L").save(mask_path)
        pairs.append((str(image_path), str(mask_path)))
    return pairs
