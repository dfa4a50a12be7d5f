"""Training and fine-tuning Next-ViT classifiers with Keras' ``fit``, on
one device or many: the classification task of the training core
(:mod:`keras_nextvit.trainer`).

* :class:`Recipe` -- the paper's ImageNet recipe as data (``RECIPES["paper"]``)
  and the upstream 384 fine-tuning recipe (``RECIPES["finetune_384"]``).
* :func:`build_optimizer` -- AdamW (:class:`keras_nextvit.AdamW`, Keras'
  AdamW with its per-step scalars made once per step) with the linearly
  scaled learning rate on a :class:`WarmupCosineDecay`, no weight decay on
  norms and biases, global-norm clipping, optional gradient accumulation
  and EMA.
* :func:`compile_for_training` -- soft-target cross-entropy, top-1 / top-5.
* :func:`train` -- all of it on an image folder, with the core's
  checkpoints and exact resume, mixed precision, distribution
  (:func:`distribution_scope`) and logs; ``tools/train.py`` is its command
  line.

The core's pieces are importable from here too (``training.WarmupCosineDecay``,
``training.distribution_scope``, ``training.restore_training_state``, ...).
"""

import contextlib
import dataclasses

import keras

from . import data as data_lib
from . import finetune, presets, trainer
from .trainer import (  # noqa: F401  (the core's names, as this module has always offered them)
    CHECKPOINT_RNG,
    CHECKPOINT_STATE,
    CHECKPOINT_WEIGHTS,
    DISTRIBUTIONS,
    MIXED_PRECISION,
    StepLog,
    TrainingCheckpoint,
    TrainingResult,
    TrainingTask,
    WarmupCosineDecay,
    adamw,
    build_optimizer_variables,
    distribution_scope,
    no_weight_decay_variables,
    restore_training_state,
    run,
    save_training_state,
    synchronize_batchnorm,
)

__all__ = [
    "CHECKPOINT_RNG", "CHECKPOINT_STATE", "CHECKPOINT_WEIGHTS", "ClassificationTask", "DISTRIBUTIONS",
    "MIXED_PRECISION", "RECIPES", "Recipe", "StepLog", "TrainingCheckpoint", "TrainingResult",
    "WarmupCosineDecay", "build_optimizer", "build_optimizer_variables", "compile_for_training",
    "distribution_scope", "get_recipe", "no_weight_decay_variables", "restore_training_state",
    "save_training_state", "synchronize_batchnorm", "train",
]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a training run.

    The defaults are the Next-ViT paper's ImageNet-1K recipe (300 epochs,
    AdamW, learning rate 5e-4 per 256 images scaled linearly, weight decay
    0.1, cosine schedule with 20 warm-up epochs, gradient clipping at norm 5,
    RandAugment, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random erasing
    0.25, stochastic depth per variant).
    """

    epochs: int = 300
    warmup_epochs: int = 20
    learning_rate: float = 5e-4  # at base_batch_size; scaled linearly
    base_batch_size: int = 256
    warmup_learning_rate: float = 1e-6
    min_learning_rate: float = 1e-5
    schedule: str = "cosine"  # or "constant"
    weight_decay: float = 0.1
    clip_norm: float = 5.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    image_size: int = 224
    crop_pct: float = 0.95  # evaluation crop
    drop_path_rate: float = None  # None: the variant's (0.1 S, 0.2 B and L)
    augmentation: data_lib.Augmentation = dataclasses.field(default_factory=data_lib.Augmentation)
    ema_momentum: float = None  # None: no EMA (the upstream recipe has none)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def scaled_learning_rate(self, batch_size):
        """Peak learning rate for a global (effective) batch size."""
        return self.learning_rate * batch_size / self.base_batch_size


RECIPES = {
    "paper": Recipe(),
    # Upstream README: 30 epochs at 384, lr 5e-6, no warm-up, weight decay
    # 1e-8, a step schedule whose first decay (epoch 60) never comes.
    "finetune_384": Recipe(
        epochs=30,
        warmup_epochs=0,
        learning_rate=5e-6,
        weight_decay=1e-8,
        schedule="constant",
        image_size=384,
        crop_pct=1.0,
    ),
}


def get_recipe(recipe):
    """A :class:`Recipe`, or the name of one of :data:`RECIPES`."""
    return trainer.get_recipe(recipe, RECIPES, Recipe)


def build_optimizer(recipe, model, batch_size, steps_per_epoch, gradient_accumulation=1):
    """AdamW for ``model`` following ``recipe``.

    ``batch_size`` is the global batch of one step; with
    ``gradient_accumulation`` steps per update the effective batch, which
    scales the learning rate, is their product.
    """
    recipe = get_recipe(recipe)
    accumulation = int(gradient_accumulation)
    if accumulation < 1:
        raise ValueError(f"gradient_accumulation must be >= 1, got {gradient_accumulation}.")
    updates_per_epoch = max(steps_per_epoch // accumulation, 1)
    schedule = WarmupCosineDecay(
        peak_lr=recipe.scaled_learning_rate(batch_size * accumulation),
        total_steps=recipe.epochs * updates_per_epoch,
        warmup_steps=recipe.warmup_epochs * updates_per_epoch,
        warmup_lr=recipe.warmup_learning_rate,
        min_lr=recipe.min_learning_rate,
        schedule=recipe.schedule,
        steps_per_update=accumulation,
    )
    return adamw(
        model, schedule, recipe.weight_decay, recipe.beta_1, recipe.beta_2, recipe.epsilon,
        clip_norm=recipe.clip_norm, no_decay="rank1", gradient_accumulation=accumulation,
        ema_momentum=recipe.ema_momentum,
    )


def compile_for_training(model, optimizer, num_classes, jit_compile="auto"):
    """Soft-target cross-entropy on logits, top-1 and top-5 accuracy."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
        jit_compile=jit_compile,
    )
    return build_optimizer_variables(model)


# ---------------------------------------------------------------------- train


def _build_model(variant, classes, image_size, weights, drop_path_rate, remat):
    from . import model as model_lib

    if isinstance(variant, str):
        if variant not in presets.VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}; choose one of {sorted(presets.VARIANTS)}.")
        builder = getattr(model_lib, f"NextViT{variant.capitalize()}")
    else:  # depths of a custom Next-ViT
        def builder(**kwargs):
            return model_lib.NextViT(tuple(variant), **kwargs)

    kwargs = dict(input_shape=(image_size, image_size, 3))
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    context = keras.RematScope(mode="full") if remat else contextlib.nullcontext()
    with context:
        if weights is None:
            return builder(classes=classes, **kwargs)
        model = builder(weights=weights, **kwargs)
        if model.output_shape[-1] != classes:
            model = finetune.replace_classifier(model, classes)
        return model


class ClassificationTask(TrainingTask):
    """Image folders, a Next-ViT classifier, cross-entropy on soft targets
    (Mixup / CutMix / label smoothing), top-1 and top-5."""

    def __init__(self, recipe, train_dir, val_dir, variant, weights, batch_size, gradient_accumulation,
                 remat, freeze_stages, seed, max_steps_per_epoch, jit_compile):
        self.recipe, self.train_dir, self.val_dir = recipe, train_dir, val_dir
        self.variant, self.weights, self.batch_size = variant, weights, batch_size
        self.gradient_accumulation, self.remat = gradient_accumulation, remat
        self.freeze_stages, self.seed = freeze_stages, seed
        self.max_steps_per_epoch, self.jit_compile = max_steps_per_epoch, jit_compile
        self.epochs = recipe.epochs
        self.ema = recipe.ema_momentum is not None

    def prepare(self):
        self.train_folder = data_lib.image_folder(self.train_dir)
        self.val_folder = (
            data_lib.image_folder(self.val_dir, class_names=self.train_folder.class_names)
            if self.val_dir else None
        )
        self.classes = self.train_folder.num_classes
        steps = data_lib.steps_per_epoch(self.train_folder, self.batch_size)
        if self.max_steps_per_epoch:
            steps = min(steps, int(self.max_steps_per_epoch))
        self.steps_per_epoch = steps

    def build_model(self):
        recipe = self.recipe
        model = _build_model(
            self.variant, self.classes, recipe.image_size, self.weights, recipe.drop_path_rate, self.remat
        )
        if self.freeze_stages:
            finetune.freeze_stages(model, self.freeze_stages)
        return model

    def compile(self, model):
        optimizer = build_optimizer(
            self.recipe, model, self.batch_size, self.steps_per_epoch, self.gradient_accumulation
        )
        compile_for_training(model, optimizer, self.classes, jit_compile=self.jit_compile)

    def datasets(self, initial_epoch):
        recipe = self.recipe
        train_ds = data_lib.training_dataset(
            self.train_folder,
            self.batch_size,
            recipe.image_size,
            seed=self.seed,
            start_epoch=initial_epoch,
            epochs=recipe.epochs,
            augmentation=recipe.augmentation,
            max_steps_per_epoch=self.steps_per_epoch,
        )
        val_ds = None
        if self.val_folder is not None:
            val_ds = data_lib.evaluation_dataset(
                self.val_folder, self.batch_size, recipe.image_size, crop_pct=recipe.crop_pct
            )
        return train_ds, val_ds

    def final_model(self, model, history):
        if self.val_folder is not None and self.ema:
            model.optimizer.finalize_variable_values(model.trainable_variables)
        return model

    def metrics(self, final, model, history, val_ds):
        if val_ds is None:
            return {}
        return model.evaluate(val_ds, return_dict=True, verbose=0)


def train(
    train_dir,
    val_dir=None,
    output_dir="runs/nextvit",
    variant="small",
    weights=None,
    recipe="paper",
    epochs=None,
    batch_size=64,
    learning_rate=None,
    image_size=None,
    gradient_accumulation=1,
    mixed_precision=None,
    remat=False,
    distribution="none",
    freeze_stages=0,
    seed=0,
    resume=True,
    max_steps_per_epoch=None,
    tensorboard=True, jit_compile="auto", verbose="auto", callbacks=(),
):
    """Train or fine-tune Next-ViT on an image folder.

    Args:
        train_dir, val_dir: ``root/<class>/<image>`` folders; ``val_dir`` is
            evaluated after every epoch (top-1, top-5) with the presets'
            resize + center-crop.
        output_dir: checkpoints (``checkpoints/``), ``log.csv``,
            ``tensorboard/`` and the final ``model.keras``.
        variant: ``small``, ``base`` or ``large``, or the four stage depths
            of a custom Next-ViT (e.g. ``(1, 1, 5, 1)`` for smoke tests).
        weights: ``None`` (from scratch), a preset name or a checkpoint path;
            the classifier is replaced when the folder has another number of
            classes.
        recipe: ``"paper"``, ``"finetune_384"`` or a :class:`Recipe`.
        epochs, learning_rate, image_size: override the recipe's (the
            learning rate is per ``recipe.base_batch_size`` images).
        batch_size: global batch of one step (all replicas together).
        gradient_accumulation: steps per optimizer update.
        mixed_precision: ``None``, ``"bfloat16"`` or ``"float16"`` (loss
            scaling is automatic).
        remat: recompute activations in the backward pass (less memory).
        distribution: one of ``DISTRIBUTIONS`` (see :func:`distribution_scope`).
        freeze_stages: freeze the stem and the first N stages.
        seed: seeds weights, data order, augmentation and drop path.
        resume: continue from ``output_dir/checkpoints`` when it has one.
        max_steps_per_epoch: cap an epoch (smoke runs).
        callbacks: more Keras callbacks (they run after the checkpoint).

    Returns:
        :class:`TrainingResult`.
    """
    recipe = get_recipe(recipe)
    changes = {}
    if epochs is not None:
        changes["epochs"] = int(epochs)
    if learning_rate is not None:
        changes["learning_rate"] = float(learning_rate)
    if image_size is not None:
        changes["image_size"] = int(image_size)
    recipe = recipe.replace(**changes)
    task = ClassificationTask(
        recipe, train_dir, val_dir, variant, weights, batch_size, gradient_accumulation, remat,
        freeze_stages, seed, max_steps_per_epoch, jit_compile,
    )
    return run(
        task, output_dir, distribution=distribution, mixed_precision=mixed_precision, seed=seed,
        resume=resume, tensorboard=tensorboard, verbose=verbose, callbacks=callbacks,
    )
