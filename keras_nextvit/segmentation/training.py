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
* :func:`train` -- all of it on an image/mask folder: the segmentation
  task (:class:`SegmentationTask`) of the training core
  (:mod:`keras_nextvit.trainer`: checkpoints, exact resume, mixed precision,
  distribution, CSV and TensorBoard logs); ``tools/train_segmentation.py``
  is its command line.

Iterations are Keras epochs of ``iterations_per_epoch`` steps: a checkpoint
(and a validation pass) after each.
"""

import dataclasses
import json
import math
import pathlib

import keras
from keras import ops

from .. import presets
from .. import trainer
from ..trainer import NORMALIZATION_LAYERS, PolyDecay, TrainingResult, norm_variables  # noqa: F401
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
    "NORMALIZATION_LAYERS",
    "SegmentationTask",
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
    """A :class:`SegmentationRecipe`, or the name of one of :data:`RECIPES`."""
    return trainer.get_recipe(recipe, RECIPES, SegmentationRecipe, "segmentation recipe")


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
    return trainer.adamw(
        model, schedule, recipe.weight_decay, recipe.beta_1, recipe.beta_2, recipe.epsilon,
        clip_norm=recipe.clip_norm, no_decay="none" if recipe.decay_norms else "norms",
    )


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
    return trainer.build_optimizer_variables(model)


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
class SegmentationTrainingResult(TrainingResult):
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


class SegmentationTask(trainer.TrainingTask):
    """Image/mask folders, a segmenter (with UperNet's auxiliary head while
    training), mmseg's cross-entropy and mean IoU; the saved model is the
    segmenter without the auxiliary head (:func:`inference_model`)."""

    def __init__(self, recipe, aug, train_dir, val_dir, train_split, val_split, output_dir, variant,
                 head, num_classes, weights, backbone_weights, channels, reduce_zero_label, seed,
                 resume, iterations_per_epoch, epochs, jit_compile, quiet):
        self.recipe, self.aug, self.output_dir = recipe, aug, output_dir
        self.train_dir, self.val_dir = train_dir, val_dir
        self.train_split, self.val_split = train_split, val_split
        self.variant, self.head, self.num_classes, self.channels = variant, head, num_classes, channels
        self.weights, self.backbone_weights = weights, backbone_weights
        self.reduce_zero_label, self.seed, self.resume = reduce_zero_label, seed, resume
        self.steps_per_epoch, self.epochs = iterations_per_epoch, epochs
        self.jit_compile, self.quiet = jit_compile, quiet
        self.auxiliary = recipe.auxiliary_loss_weight > 0

    def prepare(self):
        aug, reduce_zero_label = self.aug, self.reduce_zero_label
        self.train_pairs = data_lib.segmentation_folder(self.train_dir, split=self.train_split)
        self.val_pairs = None
        if self.val_dir is not None:
            self.val_pairs = data_lib.segmentation_folder(
                self.val_dir, split=_val_split(self.val_dir, self.val_split)
            )
        self.steps_per_pass = data_lib.steps_per_epoch(self.train_pairs, self.recipe.batch_size)
        config_path = self.output_dir / RUN_CONFIG
        num_classes = self.num_classes
        if num_classes is None and self.resume and config_path.exists():
            num_classes = json.loads(config_path.read_text()).get("num_classes")
        if num_classes is None:
            num_classes = infer_num_classes(self.train_pairs, reduce_zero_label, aug.ignore_index)
            if not self.quiet:
                after = ", after reduce_zero_label" if reduce_zero_label else ""
                print(f"num_classes: {num_classes} (inferred from the training masks: labels "
                      f"0..{num_classes - 1}{after})")
            check = False  # the inference read every mask already
        else:
            num_classes = _positive("num_classes", num_classes)
            check = True
        if check:
            data_lib.check_masks(self.train_pairs, num_classes, reduce_zero_label, aug.ignore_index)
        if self.val_pairs is not None:
            data_lib.check_masks(self.val_pairs, num_classes, reduce_zero_label, aug.ignore_index)
        self.num_classes = num_classes
        variant, channels = self.variant, self.channels
        self.run_config = dict(
            variant=variant if isinstance(variant, str) else [int(d) for d in variant],
            head=self.head,
            num_classes=num_classes,
            channels=None if channels is None else [int(c) for c in channels],
            auxiliary_head=self.auxiliary,
            reduce_zero_label=bool(reduce_zero_label),
            crop_size=list(aug.crop_size),
        )
        if self.resume:
            _check_run_config(config_path, self.run_config)

    def build_model(self):
        recipe = self.recipe
        self.segmenter = segmenter = NextViTSegmenter(
            self.variant,
            self.head,
            self.num_classes,
            input_shape=tuple(self.aug.crop_size) + (3,),
            weights=self.weights,
            backbone_weights=self.backbone_weights,
            auxiliary_head=self.auxiliary,
            drop_path_rate=recipe.drop_path_rate,
            dropout_rate=recipe.dropout_rate,
            channels=self.channels,
        )
        if not self.auxiliary:
            return segmenter
        logits, aux_logits = segmenter.outputs
        return keras.Model(segmenter.input, {DECODE: logits, AUXILIARY: aux_logits}, name=segmenter.name)

    def compile(self, model):
        recipe = self.recipe
        compile_segmenter(
            model, build_optimizer(recipe, model), self.num_classes, recipe.auxiliary_loss_weight,
            self.aug.ignore_index, recipe.avg_non_ignore, jit_compile=self.jit_compile,
        )

    def datasets(self, initial_epoch):
        recipe, aug = self.recipe, self.aug
        # Iteration k is step k % steps_per_pass of data pass k // steps_per_pass.
        start = initial_epoch * self.steps_per_epoch
        first_pass, offset = divmod(start, self.steps_per_pass)
        passes = max(math.ceil((offset + recipe.iterations - start) / self.steps_per_pass), 1)
        train_ds = data_lib.training_dataset(
            self.train_pairs,
            recipe.batch_size,
            first_pass,
            seed=self.seed,
            aug=aug,
            reduce_zero_label=self.reduce_zero_label,
            num_epochs=passes,
        )
        if offset:
            train_ds = train_ds.skip(offset)
        val_ds = None
        if self.val_pairs is not None:
            val_ds = validation_dataset(self.val_pairs, recipe.batch_size, aug, self.reduce_zero_label)
        if self.auxiliary:
            def both(images, masks):
                return images, {DECODE: masks, AUXILIARY: masks}

            train_ds = train_ds.map(both)
            val_ds = val_ds.map(both) if val_ds is not None else None
        return train_ds, val_ds

    def on_start(self, output_dir):
        (output_dir / RUN_CONFIG).write_text(json.dumps(self.run_config, indent=1))

    def final_model(self, model, history):
        # One device's model (outside the strategy's scope, which is entered
        # only once): the trained weights, without the auxiliary head.
        return inference_model(model, self.variant, self.head, self.num_classes, self.channels,
                               name=self.segmenter.name)

    def save(self, model, directory):  # saved uncompiled
        model.save(directory / "model.keras")
        model.save_weights(directory / "model.weights.h5")

    def metrics(self, final, model, history, val_ds):
        if self.val_pairs is None:
            return {}
        recipe, aug = self.recipe, self.aug
        if history.get("val_loss"):
            # The last validation pass scored these very weights.
            prefix = f"val_{DECODE}_" if self.auxiliary else "val_"
            return {"loss": history[prefix + "loss"][-1], "mean_iou": history[prefix + "mean_iou"][-1]}
        # nothing left to train: score the saved model
        compile_segmenter(final, "sgd", self.num_classes, 0.0, aug.ignore_index, recipe.avg_non_ignore,
                          jit_compile=self.jit_compile)
        return final.evaluate(
            validation_dataset(self.val_pairs, recipe.batch_size, aug, self.reduce_zero_label),
            return_dict=True, verbose=0,
        )

    def result(self, final, history, output_dir, initial_epoch, metrics, model):
        return SegmentationTrainingResult(
            final, history, output_dir, initial_epoch, metrics,
            training_model=model, num_classes=self.num_classes,
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
    tensorboard=True, jit_compile="auto", verbose="auto", callbacks=(),
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
    trainer.check_mixed_precision(mixed_precision)
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
    task = SegmentationTask(
        recipe, aug, train_dir, val_dir, train_split, val_split, pathlib.Path(output_dir), variant,
        head, num_classes, weights, backbone_weights, channels, reduce_zero_label, seed, resume,
        per_epoch, epochs, jit_compile, quiet=verbose == 0,
    )
    return trainer.run(
        task, output_dir, distribution=distribution, mixed_precision=mixed_precision, seed=seed,
        resume=resume, tensorboard=tensorboard, verbose=verbose, callbacks=callbacks,
    )
