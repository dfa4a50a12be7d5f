"""Image-folder datasets for training and evaluation, as ``tf.data`` pipelines.

The layout is ImageNet's: ``root/<class name>/<image>``, one folder per class,
classes numbered in sorted order of their folder names.

Training (:func:`training_dataset`) follows the recipe of the Next-ViT paper
(DeiT's, through timm): decode -> RandomResizedCrop (bicubic) -> horizontal
flip -> RandAugment -> normalise -> random erasing, then per batch label
smoothing and Mixup/CutMix. Evaluation (:func:`evaluation_dataset`) is the
presets' transform: resize the shorter side to ``size / crop_pct`` (bicubic)
and center-crop ``size``.

Every random choice is stateless and derived from ``(seed, epoch, position)``
(see :mod:`keras_nextvit.augment`): epoch ``e`` gives the same images in the
same order whether training started at epoch 0 or resumed at ``e``. That is
what makes a resumed run continue exactly where it stopped.
"""

import dataclasses
import math
import pathlib

import numpy as np
import tensorflow as tf

from . import augment, presets

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation; the defaults are the paper's recipe."""

    scale: tuple = (0.08, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
    flip: bool = True
    randaugment_ops: int = 2  # timm "rand-m9-mstd0.5-inc1"
    randaugment_magnitude: float = 9.0
    randaugment_magnitude_std: float = 0.5
    random_erasing: float = 0.25
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_switch_prob: float = 0.5
    mix_prob: float = 1.0

    @classmethod
    def none(cls):
        """Crop and flip only: no RandAugment, erasing, smoothing or mixing."""
        return cls(
            randaugment_ops=0,
            random_erasing=0.0,
            label_smoothing=0.0,
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
        )


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The files of an image folder: paths, integer labels and class names."""

    root: str
    paths: tuple
    labels: tuple
    class_names: tuple

    @property
    def num_classes(self):
        return len(self.class_names)

    def __len__(self):
        return len(self.paths)


def image_folder(root, class_names=None):
    """List ``root/<class>/<image>``.

    ``class_names`` fixes the class order (use the training folder's for the
    validation folder); by default it is the sorted folder names.
    """
    root_path = pathlib.Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"Image folder {str(root)!r} does not exist or is not a directory.")
    found = sorted(p.name for p in root_path.iterdir() if p.is_dir())
    if not found:
        raise ValueError(
            f"Image folder {str(root)!r} has no class sub-folders; expected "
            "root/<class name>/<image files> (the ImageNet layout)."
        )
    if class_names is None:
        class_names = found
    else:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise ValueError(
                f"Image folder {str(root)!r} has classes the training folder does not: "
                f"{unknown[:5]}."
            )
    paths, labels = [], []
    for index, name in enumerate(class_names):
        folder = root_path / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(path))
                labels.append(index)
    if not paths:
        raise ValueError(
            f"Image folder {str(root)!r} has no images with extensions {IMAGE_EXTENSIONS}."
        )
    return ImageFolder(str(root), tuple(paths), tuple(labels), tuple(class_names))


def decode_image(path):
    """Read a file into a uint8 ``(H, W, 3)`` RGB tensor."""
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return image


def normalize(image, mean=presets.IMAGENET_MEAN, std=presets.IMAGENET_STD):
    """0..255 -> ``(x / 255 - mean) / std``, float32 (as ``preprocess_input``)."""
    mean = tf.constant(mean, tf.float32) * 255.0
    std = tf.constant(std, tf.float32) * 255.0
    return (tf.cast(image, tf.float32) - mean) / std


def center_crop_resize(image, size, crop_pct=0.95, interpolation="bicubic"):
    """The evaluation transform of the presets (and of timm).

    Resize the shorter side to ``int(size / crop_pct)`` (aspect kept) and
    center-crop ``size x size``. Returns float32 in 0..255.
    """
    scale_size = int(size / crop_pct)
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    short = tf.minimum(h, w)
    new_h = tf.cast(tf.round(h * scale_size / short), tf.int32)
    new_w = tf.cast(tf.round(w * scale_size / short), tf.int32)
    new_h = tf.where(h <= w, scale_size, new_h)
    new_w = tf.where(w <= h, scale_size, new_w)
    resized = tf.image.resize(
        tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method=interpolation, antialias=True
    )
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    cropped = resized[top : top + size, left : left + size, :]
    cropped.set_shape((size, size, 3))
    return tf.clip_by_value(cropped, 0.0, 255.0)


def steps_per_epoch(folder, batch_size):
    """Full batches per epoch (the last partial batch is dropped)."""
    steps = len(folder) // batch_size
    if steps < 1:
        raise ValueError(
            f"Image folder {folder.root!r} has {len(folder)} images, fewer than one batch "
            f"of {batch_size}."
        )
    return steps


def _epoch_seed(seed, epoch):
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])


def _train_example(path, label, image_seed, size, aug, mean, std):
    crop_seed, flip_seed, ra_seed, erase_seed = tf.unstack(
        tf.random.experimental.stateless_split(image_seed, num=4)
    )
    image = decode_image(path)
    image = augment.random_resized_crop(image, size, crop_seed, scale=aug.scale, ratio=aug.ratio)
    if aug.flip:
        image = augment.random_flip(image, flip_seed)
    if aug.randaugment_ops > 0:
        image = augment.rand_augment(
            image,
            ra_seed,
            num_ops=aug.randaugment_ops,
            magnitude=aug.randaugment_magnitude,
            magnitude_std=aug.randaugment_magnitude_std,
        )
    image = normalize(image, mean, std)
    if aug.random_erasing > 0:
        image = augment.random_erasing(image, erase_seed, probability=aug.random_erasing)
    return image, label


def training_dataset(
    folder,
    batch_size,
    image_size,
    seed=0,
    start_epoch=0,
    epochs=1,
    augmentation=Augmentation(),
    mean=presets.IMAGENET_MEAN,
    std=presets.IMAGENET_STD,
    max_steps_per_epoch=None,
):
    """Batches of ``(images, soft targets)`` for epochs ``start_epoch .. epochs - 1``.

    ``batch_size`` is the global batch (all replicas); each epoch is a fresh
    stateless permutation of ``folder`` cut into ``steps_per_epoch`` full
    batches (at most ``max_steps_per_epoch``). Targets are
    ``(batch, num_classes)`` float32: label-smoothed one-hot, then mixed with
    Mixup/CutMix.
    """
    if not isinstance(folder, ImageFolder):
        folder = image_folder(folder)
    steps = steps_per_epoch(folder, batch_size)
    if max_steps_per_epoch:
        steps = min(steps, int(max_steps_per_epoch))
    n = len(folder)
    paths = tf.constant(folder.paths)
    labels = tf.constant(folder.labels, tf.int32)
    aug = augmentation
    num_classes = folder.num_classes

    def epoch_dataset(epoch):
        epoch_seed = _epoch_seed(seed, epoch)
        order = tf.argsort(tf.random.stateless_uniform([n], seed=epoch_seed))
        order = order[: steps * batch_size]
        image_seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(epoch_seed, 1), num=steps * batch_size
        )
        batch_seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(epoch_seed, 2), num=steps
        )
        examples = tf.data.Dataset.from_tensor_slices((order, image_seeds)).map(
            lambda i, s: _train_example(
                paths[i], labels[i], s, image_size, aug, mean, std
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        batches = examples.batch(batch_size, drop_remainder=True)
        return tf.data.Dataset.zip((batches, tf.data.Dataset.from_tensor_slices(batch_seeds)))

    def mix(batch, batch_seed):
        images, batch_labels = batch
        targets = augment.smooth_labels(batch_labels, num_classes, aug.label_smoothing)
        if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
            images, targets = augment.mixup_cutmix(
                images,
                targets,
                batch_seed,
                mixup_alpha=aug.mixup_alpha,
                cutmix_alpha=aug.cutmix_alpha,
                switch_prob=aug.mix_switch_prob,
                prob=aug.mix_prob,
            )
        return images, targets

    epochs_ds = tf.data.Dataset.range(start_epoch, epochs)
    ds = epochs_ds.flat_map(epoch_dataset).map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds)


def evaluation_dataset(
    folder,
    batch_size,
    image_size,
    crop_pct=0.95,
    interpolation="bicubic",
    num_classes=None,
    mean=presets.IMAGENET_MEAN,
    std=presets.IMAGENET_STD,
):
    """Batches of ``(images, one-hot targets)``: every image once, in order."""
    if not isinstance(folder, ImageFolder):
        folder = image_folder(folder)
    num_classes = num_classes or folder.num_classes

    def load(path, label):
        image = center_crop_resize(decode_image(path), image_size, crop_pct, interpolation)
        return normalize(image, mean, std), tf.one_hot(label, num_classes)

    ds = tf.data.Dataset.from_tensor_slices((list(folder.paths), list(folder.labels)))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds.batch(batch_size))


def _finish(ds):
    options = tf.data.Options()
    options.deterministic = True
    # Each worker reads every image; tf.distribute shards the batches.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def write_synthetic_image_folder(root, classes=3, images_per_class=8, size=(40, 48), seed=0):
    """A tiny image folder of learnable classes (for tests and smoke runs).

    Class ``k`` is a noisy image with a bright bar at a class-specific
    orientation and tint, saved as PNG. Returns the root path.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(classes):
        folder = root / f"class_{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        angle = math.pi * k / classes
        tint = np.array([1.0 + (k % 3 == 0), 1.0 + (k % 3 == 1), 1.0 + (k % 3 == 2)]) / 2
        for i in range(images_per_class):
            offset = rng.uniform(-4, 4)
            distance = (xx - w / 2) * math.sin(angle) - (yy - h / 2) * math.cos(angle) - offset
            bar = np.exp(-(distance**2) / 18.0)[..., None] * tint
            image = 0.25 * rng.random((h, w, 3)) + 0.75 * bar
            Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(
                folder / f"{i:03d}.png"
            )
    return root
