"""Training Next-ViT segmenters (Semantic FPN, UperNet) with Keras' ``fit``.

The defaults are the upstream recipes (the mmsegmentation 0.x configs of
bytedance/Next-ViT, ``segmentation/configs/``), one
:class:`SegmentationRecipe` each:

* ``RECIPES["fpn"]`` (``fpn_512_nextvit_*_80k``): AdamW, learning rate 1e-4,
  weight decay 1e-4 on every parameter, no gradient clipping, poly decay
  (power 0.9) per iteration to 1e-6, 80k iterations of batch 16 (mmseg's
  80k schedule on 4 GPUs x 4, which the config's name gives). Upstream itself
  ran 40k iterations of batch 32 (8 GPUs x 4) at the same learning rate, the
  same number of images: pass ``iterations=40000, batch_size=32`` for that.
* ``RECIPES["upernet"]`` (``upernet_512_nextvit_*_160k``): AdamW, learning
  rate 6e-5, betas (0.9, 0.999), weight decay 0.01 except on the
  normalisation layers' scales and offsets (upstream's ``bn`` / ``norm``
  ``decay_mult=0``; biases are decayed), linear warm-up over 1500 iterations
  from 1e-6 of the rate, then poly decay (power 1.0) to 0, 160k iterations
  of batch 16 (8 GPUs x 2); the auxiliary ``FCNHead`` on stage 3 adds its
  loss with weight 0.4.

Both use mmseg's ADE20K 512x512 augmentation (:mod:`.data`), stochastic
depth 0.2 in the backbone, synchronised BatchNorm across replicas, and
mmseg 0.x's cross-entropy: 255 ignored, the sum over the labelled pixels
divided by all pixels of the batch (``avg_non_ignore=False``, mmseg's
default; :class:`SegmentationCrossEntropy` itself defaults to dividing by
the labelled pixels).

The pieces:

* :class:`PolyDecay` -- mmcv's ``poly`` learning rate with optional linear
  warm-up, per iteration.
* :class:`SegmentationCrossEntropy` -- pixel cross-entropy on logits that
  ignores ``ignore_index`` and resizes logits to the labels' size.
* :func:`build_optimizer`, :func:`compile_segmenter`.
* :func:`train` -- all of it on an image/mask folder, with the classifier
  trainer's checkpoints, exact resume, mixed precision, distribution, CSV and
  TensorBoard logs (:mod:`keras_nextvit.training`);
  ``tools/train_segmentation.py`` is its command line.

Iterations are Keras epochs of ``iterations_per_epoch`` steps: a checkpoint
(and a validation pass) after each.
"""

import dataclasses
import json
import math
import pathlib
import shutil
import tempfile

import keras
from keras import ops

from .. import presets
from .. import training as base
from ..optimizers import AdamW
from . import data as data_lib
from .metrics import MeanIoU
from .model import HEADS, NextViTSegmenter, variant_depths
from .ops import resize_bilinear

__all__ = [
    "PolyDecay",
    "RECIPES",
    "SegmentationCrossEntropy",
    "SegmentationRecipe",
    "SegmentationTrainingResult",
    "build_optimizer",
    "compile_segmenter",
    "get_recipe",
    "infer_num_classes",
    "inference_model",
    "norm_variables",
    "train",
    "validation_dataset",
]

#: Names of the training model's outputs when it has the auxiliary head.
DECODE, AUXILIARY = "decode", "auxiliary"
RUN_CONFIG = "segmenter.json"


@dataclasses.dataclass(frozen=True)
class SegmentationRecipe:
    """Hyper-parameters of a segmentation run; the defaults are the FPN recipe.

    ``learning_rate`` is for ``batch_size`` images per step; it is not
    rescaled when another batch size is used (mmseg does not either).
    ``decay_norms=False`` excludes the scales and offsets of every
    normalisation layer from weight decay (see :func:`norm_variables`).
    ``auxiliary_loss_weight > 0`` trains with the auxiliary ``FCNHead``.
    ``avg_non_ignore``: ``False`` (the upstream runs': mmseg 0.x's default)
    divides each batch's summed loss by all its pixels, ignored ones
    included; ``True`` by the labelled pixels only. With Adam the two differ
    only in how much batches with many ignored pixels weigh.
    """

    head: str = "fpn"
    iterations: int = 80000
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    decay_norms: bool = True
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    clip_norm: float = None  # mmseg's optimizer_config=dict(): no clipping
    power: float = 0.9
    min_learning_rate: float = 1e-6
    warmup_iterations: int = 0
    warmup_ratio: float = 1e-6
    auxiliary_loss_weight: float = 0.0
    avg_non_ignore: bool = False
    iterations_per_epoch: int = 8000  # mmseg's checkpoint/evaluation interval
    drop_path_rate: float = 0.2
    dropout_rate: float = 0.1
    augmentation: data_lib.Augmentation = dataclasses.field(default_factory=data_lib.Augmentation)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


RECIPES = {
    "fpn": SegmentationRecipe(),
    "upernet": SegmentationRecipe(
        head="upernet",
        iterations=160000,
        learning_rate=6e-5,
        weight_decay=0.01,
        decay_norms=False,
        power=1.0,
        min_learning_rate=0.0,
        warmup_iterations=1500,
        warmup_ratio=1e-6,
        auxiliary_loss_weight=0.4,
        iterations_per_epoch=16000,
    ),
}


def get_recipe(recipe):
    if isinstance(recipe, SegmentationRecipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(
            f"Unknown segmentation recipe {recipe!r}; choose one of {sorted(RECIPES)}."
        )
    return RECIPES[recipe]


@keras.saving.register_keras_serializable(package="keras_nextvit")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """mmcv's ``poly`` policy per iteration, with optional linear warm-up.

    At iteration ``i`` (the optimizer's update count, from 0)::

        lr(i) = (base_lr - min_lr) * (1 - min(i, max_iters) / max_iters) ** power + min_lr
        if i < warmup_iters:   # mmcv's 'linear' warm-up, applied to the poly rate
            k = (1 - i / warmup_iters) * (1 - warmup_ratio)
            lr(i) = lr(i) * (1 - k)
    """

    def __init__(
        self, base_lr, max_iters, power=0.9, min_lr=0.0, warmup_iters=0, warmup_ratio=1e-6
    ):
        if int(max_iters) < 1:
            raise ValueError(f"PolyDecay max_iters must be >= 1, got {max_iters}.")
        if int(warmup_iters) < 0:
            raise ValueError(f"PolyDecay warmup_iters must be >= 0, got {warmup_iters}.")
        self.base_lr = float(base_lr)
        self.max_iters = int(max_iters)
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step / self.max_iters, 1.0)
        lr = (self.base_lr - self.min_lr) * ops.power(1.0 - progress, self.power) + self.min_lr
        if self.warmup_iters > 0:
            # 1 - k = ratio + (1 - ratio) * i / warmup_iters: the same factor,
            # without float32 cancellation when k is close to 1
            factor = self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_iters
            lr = ops.where(step < self.warmup_iters, lr * factor, lr)
        return lr

    def get_config(self):
        return dict(
            base_lr=self.base_lr,
            max_iters=self.max_iters,
            power=self.power,
            min_lr=self.min_lr,
            warmup_iters=self.warmup_iters,
            warmup_ratio=self.warmup_ratio,
        )


@keras.saving.register_keras_serializable(package="keras_nextvit")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Pixel cross-entropy from logits that ignores ``ignore_index``.

    ``y_true``: class indices ``(N, H, W)`` or ``(N, H, W, 1)``; ``y_pred``:
    logits ``(N, h, w, C)``, resized bilinearly (``align_corners=False``, as
    mmseg) to ``(H, W)`` when the sizes differ (the auxiliary head's stride-16
    logits). Labels equal to ``ignore_index``, or outside ``0..C-1`` (which
    cannot raise inside a compiled step: ``data.check_masks`` rejects them
    before training), contribute nothing.

    With ``avg_non_ignore=True`` the batch loss is the sum over labelled
    pixels divided by their number (PyTorch's ``ignore_index`` mean);
    ``False`` divides by all pixels (mmseg 0.x's default). Under
    ``tf.distribute`` each replica averages over its own pixels and the
    replicas' losses are averaged, as mmseg's distributed training does.
    ``sample_weight``, if given, multiplies the per-pixel losses.
    Computed in float32 whatever the logits' dtype.
    """

    def __init__(
        self, ignore_index=255, avg_non_ignore=True, name="segmentation_cross_entropy", **kwargs
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}.")
        self.ignore_index = int(ignore_index)
        self.avg_non_ignore = bool(avg_non_ignore)

    def call(self, y_true, y_pred):
        logits = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        labels = ops.convert_to_tensor(y_true)
        if len(labels.shape) == 4 and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, axis=-1)
        if len(labels.shape) != 3 or len(logits.shape) != 4:
            raise ValueError(
                "SegmentationCrossEntropy: y_true must be class indices (N, H, W) and y_pred "
                f"logits (N, h, w, C); got shapes {tuple(labels.shape)} and {tuple(logits.shape)}."
            )
        labels = ops.cast(labels, "int32")
        label_size = tuple(labels.shape[1:3])
        if None in label_size or None in tuple(logits.shape[1:3]):
            dynamic = ops.shape(labels)
            logits = resize_bilinear(logits, (dynamic[1], dynamic[2]))
        elif tuple(logits.shape[1:3]) != label_size:
            logits = resize_bilinear(logits, label_size)
        num_classes = logits.shape[-1]
        valid = ops.logical_and(
            ops.not_equal(labels, self.ignore_index),
            ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, num_classes)),
        )
        safe = ops.where(valid, labels, 0)
        log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
        picked = ops.take_along_axis(log_probs, ops.expand_dims(safe, -1), axis=-1)[..., 0]
        weight = ops.cast(valid, "float32")
        if self.avg_non_ignore:
            # Keras divides the sum by all pixels; scale so that it divides
            # by the labelled ones instead.
            total = ops.cast(ops.prod(ops.convert_to_tensor(ops.shape(weight), "int32")), "float32")
            weight = weight * (total / ops.maximum(ops.sum(weight), 1.0))
        return -picked * weight

    def get_config(self):
        config = super().get_config()
        config.update(ignore_index=self.ignore_index, avg_non_ignore=self.avg_non_ignore)
        return config


# ------------------------------------------------------------------- pieces


def build_optimizer(recipe, model):
    """AdamW with the recipe's :class:`PolyDecay` schedule and weight decay."""
    recipe = get_recipe(recipe)
    schedule = PolyDecay(
        recipe.learning_rate,
        recipe.iterations,
        power=recipe.power,
        min_lr=recipe.min_learning_rate,
        warmup_iters=recipe.warmup_iterations,
        warmup_ratio=recipe.warmup_ratio,
    )
    optimizer = AdamW(
        learning_rate=schedule,
        weight_decay=recipe.weight_decay,
        beta_1=recipe.beta_1,
        beta_2=recipe.beta_2,
        epsilon=recipe.epsilon,
        global_clipnorm=recipe.clip_norm or None,
    )
    if not recipe.decay_norms:
        optimizer.exclude_from_weight_decay(var_list=norm_variables(model))
    return optimizer


NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def norm_variables(model):
    """The trainable variables of every normalisation layer (BatchNorm's
    gamma and beta): what upstream's ``paramwise_cfg`` keys ``bn`` and
    ``norm`` match in the Next-ViT backbone and the mmseg heads."""
    found = {}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, NORMALIZATION_LAYERS):
            for variable in layer.trainable_weights:
                found[id(variable)] = variable
    return list(found.values())


def compile_segmenter(model, optimizer, num_classes, auxiliary_loss_weight=0.0,
                      ignore_index=255, avg_non_ignore=False, jit_compile="auto"):
    """Cross-entropy (+ the weighted auxiliary loss) and mean IoU of the decode output.

    ``model`` outputs logits, or ``{"decode": ..., "auxiliary": ...}`` when
    ``auxiliary_loss_weight > 0`` (see :func:`train`); the targets are the
    masks (the same mask for both outputs).
    """
    def loss():
        return SegmentationCrossEntropy(ignore_index, avg_non_ignore)

    def miou():
        return MeanIoU(num_classes, ignore_index=ignore_index, from_logits=True)

    if auxiliary_loss_weight:
        model.compile(
            optimizer=optimizer,
            loss={DECODE: loss(), AUXILIARY: loss()},
            loss_weights={DECODE: 1.0, AUXILIARY: float(auxiliary_loss_weight)},
            metrics={DECODE: [miou()]},
            jit_compile=jit_compile,
        )
    else:
        model.compile(optimizer=optimizer, loss=loss(), metrics=[miou()], jit_compile=jit_compile)
    return base.build_optimizer_variables(model)


def infer_num_classes(pairs, reduce_zero_label=False, ignore_index=255):
    """``max label + 1`` over the masks (after ``reduce_zero_label``, not
    counting ``ignore_index``)."""
    import concurrent.futures
    import os

    import numpy as np

    mapping = np.arange(256)
    if reduce_zero_label:
        mapping = np.where(mapping == 0, ignore_index, mapping - 1)
        mapping[255] = 255
    present = np.zeros(256, bool)
    masks = [mask for _, mask in pairs]
    workers = min(8, (os.cpu_count() or 1) + 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for values in pool.map(data_lib._mask_values, masks):
            present |= values
    labels = [int(v) for v in np.unique(mapping[present]) if v != ignore_index]
    if not labels:
        raise ValueError(
            f"Every mask holds only ignore_index={ignore_index} (after reduce_zero_label="
            f"{reduce_zero_label}): nothing to learn, and no number of classes to infer."
        )
    return max(labels) + 1


def validation_dataset(pairs, batch_size, aug, reduce_zero_label=False):
    """Every validation pair once, deterministically: rescaled keeping its
    aspect ratio to ``aug.img_scale``, the centre ``aug.crop_size`` window
    (padded with 0 / ``ignore_index`` where the image is smaller), normalised.

    The last batch is filled up with images whose every pixel is
    ``ignore_index`` (they count in no score), so that every batch has the
    same shape and divides among replicas.

    This approximates mmseg's whole-image evaluation at training time; for
    the published protocol evaluate the saved model with
    ``tools/eval_segmentation.py``.
    """
    import tensorflow as tf

    fixed = data_lib.Augmentation.none(
        img_scale=aug.img_scale, crop_size=aug.crop_size, ignore_index=aug.ignore_index
    )
    ds = data_lib.evaluation_dataset(pairs, reduce_zero_label=reduce_zero_label,
                                     ignore_index=aug.ignore_index)
    seed = tf.zeros([2], tf.int64)  # no random draws in Augmentation.none()
    ds = ds.map(lambda image, mask: data_lib.training_transform(image, mask, seed, fixed),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    missing = -len(pairs) % int(batch_size)
    if missing:
        h, w = (int(c) for c in aug.crop_size)
        filler = (
            tf.zeros((h, w, 3), tf.float32),
            tf.fill((h, w), tf.constant(aug.ignore_index, tf.int32)),
        )
        ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(missing))
    return ds.batch(int(batch_size), drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def inference_model(trained, variant, head, num_classes, channels=None, name=None):
    """The segmenter without the auxiliary head, for any image size, holding
    ``trained``'s weights (copied layer by layer, by name)."""
    model = NextViTSegmenter(variant, head, num_classes, channels=channels, name=name)
    copied = set()
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(trained.get_layer(layer.name).get_weights())
            copied.add(layer.name)
    missing = [
        layer.name for layer in trained.layers
        if layer.weights and layer.name not in copied and layer.name != "auxiliary_head"
    ]
    if missing:
        raise ValueError(f"inference_model: layers {missing} of the trained model were not copied.")
    return model


# ---------------------------------------------------------------------- train


@dataclasses.dataclass
class SegmentationTrainingResult(base.TrainingResult):
    """``model``: the segmenter without the auxiliary head (saved as
    ``model.keras``); ``training_model``: the model ``fit`` trained."""

    training_model: keras.Model = None
    num_classes: int = None


def _positive(name, value):
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or value != int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _crop(crop_size):
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    try:
        h, w = (int(c) for c in crop_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"crop_size must be an int or (height, width), got {crop_size!r}."
        ) from None
    if min(h, w) < presets.MIN_INPUT_SIZE:
        raise ValueError(
            f"crop_size must be at least {presets.MIN_INPUT_SIZE} pixels, got {crop_size!r}."
        )
    return h, w


def _val_split(root, split):
    if split is None and (pathlib.Path(root) / "images" / "validation").is_dir():
        return "validation"  # ADE20K layout: one root for both splits
    return split


def _check_run_config(path, config):
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    for key in ("variant", "head", "num_classes", "channels", "auxiliary_head"):
        if saved.get(key) != config[key]:
            raise ValueError(
                f"{str(path.parent)!r} holds a run with {key}={saved.get(key)!r}, not "
                f"{config[key]!r}: resume it with the same settings, use another output folder, "
                "or pass resume=False (--no-resume) to start over."
            )


def train(
    train_dir,
    val_dir=None,
    output_dir="runs/segmentation",
    variant="small",
    head=None,
    num_classes=None,
    weights=None,
    backbone_weights=None,
    recipe=None,
    iterations=None,
    batch_size=None,
    learning_rate=None,
    crop_size=None,
    reduce_zero_label=False,
    mixed_precision=None,
    distribution="none",
    seed=0,
    resume=True,
    iterations_per_epoch=None,
    channels=None,
    drop_path_rate=None,
    augmentation=None,
    train_split=None,
    val_split=None,
    tensorboard=True,
    jit_compile="auto",
    verbose="auto",
    callbacks=(),
):
    """Train a Next-ViT segmenter on an image/mask folder.

    Args:
        train_dir, val_dir: folders of :func:`.data.segmentation_folder`
            (ADE20K's ``images/{split}`` + ``annotations/{split}``, or
            ``images`` + ``masks``). ``val_dir`` defaults to the
            ``validation`` split when it has one (ADE20K's root serves both);
            it is evaluated (loss, mean IoU) after every epoch, see
            :func:`validation_dataset`.
        output_dir: ``checkpoints/``, ``log.csv``, ``tensorboard/``,
            ``segmenter.json`` (variant, head, classes) and the trained
            segmenter without the auxiliary head: ``model.keras`` and
            ``model.weights.h5``.
        variant: ``small``, ``base``, ``large`` or four stage depths.
        head: ``"fpn"`` or ``"upernet"``; default: the recipe's (FPN).
        num_classes: default: inferred from the training masks (max label + 1
            after ``reduce_zero_label``, 255 ignored), and printed.
        weights: a whole segmentation checkpoint to start from (same classes).
        backbone_weights: an ImageNet preset or checkpoint for the backbone
            (the usual start: ``"nextvit_small.bd_in1k"``).
        recipe: ``"fpn"``, ``"upernet"`` or a :class:`SegmentationRecipe`;
            default: the head's.
        iterations, batch_size, learning_rate: override the recipe's
            (``batch_size`` is the global batch of one step; the learning
            rate is used as given).
        crop_size: the training crop (int or ``(h, w)``; recipe: 512); the
            rescale target ``img_scale`` follows it in proportion (512 ->
            ``(2048, 512)``, 64 -> ``(256, 64)``), as mmseg's configs do.
        reduce_zero_label: ADE20K's annotations: 0 is "other" (ignored) and
            class ``k`` is stored as ``k + 1``.
        mixed_precision: ``None``, ``"bfloat16"`` or ``"float16"``.
        distribution: one of :data:`keras_nextvit.training.DISTRIBUTIONS`.
        seed: seeds weights, data order, augmentation, drop path and dropout.
        resume: continue from ``output_dir/checkpoints`` when it has one
            (exactly: same data, random draws and optimizer state). A resume
            in the middle of a pass over the data reads that pass's earlier
            batches again (and drops them) to get there.
        iterations_per_epoch: steps between checkpoints and validation
            passes; must divide ``iterations``. Default: the largest divisor
            of ``iterations`` not above the recipe's interval (8000 FPN,
            16000 UperNet, mmseg's checkpoint and evaluation interval).
        channels: head widths (see :func:`NextViTSegmenter`), for small
            experiments.
        drop_path_rate: override the recipe's stochastic depth (0.2).
        augmentation: a :class:`.data.Augmentation` instead of the recipe's.
        train_split, val_split: ADE20K-layout split names.
        callbacks: more Keras callbacks (they run after the checkpoint).

    Returns:
        :class:`SegmentationTrainingResult`; ``metrics`` are the final
        validation loss and ``mean_iou`` of the saved segmenter.
    """
    if head is not None and head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
    variant_depths(variant)  # a bad variant fails before any data is read
    recipe = get_recipe(recipe if recipe is not None else (head or "fpn"))
    head = head or recipe.head
    if mixed_precision not in base.MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision must be one of {sorted(k for k in base.MIXED_PRECISION if k)}, "
            f"got {mixed_precision!r}."
        )
    changes = {}
    if iterations is not None:
        changes["iterations"] = _positive("iterations", iterations)
    if batch_size is not None:
        changes["batch_size"] = _positive("batch_size", batch_size)
    if learning_rate is not None:
        if not float(learning_rate) > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
        changes["learning_rate"] = float(learning_rate)
    if drop_path_rate is not None:
        changes["drop_path_rate"] = float(drop_path_rate)
    aug = augmentation if augmentation is not None else recipe.augmentation
    if crop_size is not None:
        crop = _crop(crop_size)
        factor = min(crop) / min(aug.crop_size)
        aug = dataclasses.replace(
            aug, crop_size=crop, img_scale=tuple(int(round(s * factor)) for s in aug.img_scale)
        )
    changes["augmentation"] = aug
    recipe = recipe.replace(**changes)
    per_epoch = _positive("iterations_per_epoch", iterations_per_epoch)
    if per_epoch is None:  # the largest divisor not above the recipe's interval
        most = min(recipe.iterations_per_epoch, recipe.iterations)
        per_epoch = next(d for d in range(most, 0, -1) if recipe.iterations % d == 0)
    if recipe.iterations % per_epoch:
        raise ValueError(
            f"iterations_per_epoch ({per_epoch}) must divide iterations ({recipe.iterations}): "
            "training runs whole epochs of iterations_per_epoch steps."
        )
    epochs = recipe.iterations // per_epoch
    auxiliary = recipe.auxiliary_loss_weight > 0
    output_dir = pathlib.Path(output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    quiet = verbose == 0

    # First: joining a multi-process JAX job must precede any JAX computation.
    context, replicas = base.distribution_scope(distribution)
    keras.utils.set_random_seed(seed)

    train_pairs = data_lib.segmentation_folder(train_dir, split=train_split)
    val_pairs = None
    if val_dir is not None:
        val_pairs = data_lib.segmentation_folder(val_dir, split=_val_split(val_dir, val_split))
    steps_per_pass = data_lib.steps_per_epoch(train_pairs, recipe.batch_size)
    config_path = output_dir / RUN_CONFIG
    if num_classes is None and resume and config_path.exists():
        num_classes = json.loads(config_path.read_text()).get("num_classes")
    if num_classes is None:
        num_classes = infer_num_classes(train_pairs, reduce_zero_label, aug.ignore_index)
        if not quiet:
            after = ", after reduce_zero_label" if reduce_zero_label else ""
            print(f"num_classes: {num_classes} (inferred from the training masks: labels "
                  f"0..{num_classes - 1}{after})")
        check = False  # the inference read every mask already
    else:
        num_classes = _positive("num_classes", num_classes)
        check = True
    if check:
        data_lib.check_masks(train_pairs, num_classes, reduce_zero_label, aug.ignore_index)
    if val_pairs is not None:
        data_lib.check_masks(val_pairs, num_classes, reduce_zero_label, aug.ignore_index)
    run_config = dict(
        variant=variant if isinstance(variant, str) else [int(d) for d in variant],
        head=head,
        num_classes=num_classes,
        channels=None if channels is None else [int(c) for c in channels],
        auxiliary_head=auxiliary,
        reduce_zero_label=bool(reduce_zero_label),
        crop_size=list(aug.crop_size),
    )
    if resume:
        _check_run_config(config_path, run_config)

    previous_policy = keras.config.dtype_policy()
    policy = base.MIXED_PRECISION[mixed_precision]
    if policy:
        keras.config.set_dtype_policy(policy)
    scratch_log_dir = None
    try:
        with context:
            segmenter = NextViTSegmenter(
                variant,
                head,
                num_classes,
                input_shape=tuple(aug.crop_size) + (3,),
                weights=weights,
                backbone_weights=backbone_weights,
                auxiliary_head=auxiliary,
                drop_path_rate=recipe.drop_path_rate,
                dropout_rate=recipe.dropout_rate,
                channels=channels,
            )
            if auxiliary:
                logits, aux_logits = segmenter.outputs
                model = keras.Model(
                    segmenter.input, {DECODE: logits, AUXILIARY: aux_logits}, name=segmenter.name
                )
            else:
                model = segmenter
            if replicas > 1 and keras.backend.backend() == "tensorflow":
                base.synchronize_batchnorm(model)
            optimizer = build_optimizer(recipe, model)
            compile_segmenter(
                model, optimizer, num_classes, recipe.auxiliary_loss_weight, aug.ignore_index,
                recipe.avg_non_ignore, jit_compile=jit_compile,
            )
            initial_epoch = base.restore_training_state(model, checkpoint_dir) if resume else 0
            if not model.optimizer.built:
                # Now rather than inside the first traced step, which would
                # then be traced twice (Keras defers it without a strategy).
                model.optimizer.build(model.trainable_variables)

        # Iteration k is step k % steps_per_pass of data pass k // steps_per_pass.
        start = initial_epoch * per_epoch
        first_pass, offset = divmod(start, steps_per_pass)
        passes = max(math.ceil((offset + recipe.iterations - start) / steps_per_pass), 1)
        train_ds = data_lib.training_dataset(
            train_pairs,
            recipe.batch_size,
            first_pass,
            seed=seed,
            aug=aug,
            reduce_zero_label=reduce_zero_label,
            num_epochs=passes,
        )
        if offset:
            train_ds = train_ds.skip(offset)
        val_ds = None
        if val_pairs is not None:
            val_ds = validation_dataset(val_pairs, recipe.batch_size, aug, reduce_zero_label)
        if auxiliary:
            def both(images, masks):
                return images, {DECODE: masks, AUXILIARY: masks}

            train_ds = train_ds.map(both)
            val_ds = val_ds.map(both) if val_ds is not None else None

        extra_callbacks = list(callbacks)
        # Under multi-worker training only the chief writes logs.
        scratch_log_dir = None if base._is_chief() else tempfile.mkdtemp()
        log_dir = output_dir if scratch_log_dir is None else pathlib.Path(scratch_log_dir)
        if scratch_log_dir is None:
            output_dir.mkdir(parents=True, exist_ok=True)
            config_path.write_text(json.dumps(run_config, indent=1))
        step_log = base.StepLog()
        callbacks = [
            base.TrainingCheckpoint(checkpoint_dir),
            keras.callbacks.CSVLogger(str(log_dir / "log.csv"), append=initial_epoch > 0),
        ]
        if tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(str(log_dir / "tensorboard")))
        callbacks.append(step_log)
        callbacks.extend(extra_callbacks)
        history = {}
        if initial_epoch < epochs:
            fit = model.fit(
                train_ds,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=per_epoch,
                validation_data=val_ds,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the dataset orders each pass itself
            )
            history = dict(fit.history)
        history["step_loss"] = step_log.losses
        if replicas > 1 and keras.backend.backend() == "tensorflow":
            base.synchronize_batchnorm(model, False)

        # One device's model (outside the strategy's scope, which is entered
        # only once): the trained weights, without the auxiliary head.
        final = inference_model(model, variant, head, num_classes, channels, name=segmenter.name)

        def save(directory):
            final.save(directory / "model.keras")
            final.save_weights(directory / "model.weights.h5")

        base._on_every_worker(save, output_dir)  # saved uncompiled
        metrics = {}
        if val_pairs is not None and history.get("val_loss"):
            # The last validation pass scored these very weights.
            prefix = f"val_{DECODE}_" if auxiliary else "val_"
            metrics = {
                "loss": history[prefix + "loss"][-1],
                "mean_iou": history[prefix + "mean_iou"][-1],
            }
        elif val_pairs is not None:  # nothing left to train: score the saved model
            compile_segmenter(final, "sgd", num_classes, 0.0, aug.ignore_index,
                              recipe.avg_non_ignore, jit_compile=jit_compile)
            metrics = final.evaluate(
                validation_dataset(val_pairs, recipe.batch_size, aug, reduce_zero_label),
                return_dict=True, verbose=0,
            )
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if scratch_log_dir is not None:
            shutil.rmtree(scratch_log_dir, ignore_errors=True)
    return SegmentationTrainingResult(
        final, history, str(output_dir), initial_epoch, metrics,
        training_model=model, num_classes=num_classes,
    )
