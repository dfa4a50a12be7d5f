"""Training and fine-tuning Next-ViT with Keras' ``fit``, on one device or many.

The pieces, each usable on its own:

* :class:`Recipe` -- the paper's ImageNet recipe as data (``RECIPES["paper"]``)
  and the upstream 384 fine-tuning recipe (``RECIPES["finetune_384"]``).
* :class:`WarmupCosineDecay` -- linear warm-up, then cosine decay, per
  optimizer update.
* :func:`build_optimizer` -- AdamW (:class:`keras_nextvit.AdamW`, Keras'
  AdamW with its per-step scalars made once per step) with the linearly
  scaled learning rate, no weight decay on norms and biases, global-norm
  clipping, optional gradient accumulation and EMA (all Keras' own optimizer
  features).
* :class:`TrainingCheckpoint` / :func:`restore_training_state` -- weights,
  optimizer state (schedule step included) and random-generator states after
  every epoch; resuming continues exactly where the run stopped.
* :func:`distribution_scope` -- ``tf.distribute`` (mirrored, multi-worker,
  TPU) on TensorFlow, ``keras.distribution.DataParallel`` on JAX.
* :func:`train` -- all of it on an image folder; ``tools/train.py`` is its
  command line.
"""

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import tempfile

import keras
import numpy as np
from keras import ops

from . import data as data_lib
from . import finetune, presets
from .optimizers import AdamW

DISTRIBUTIONS = ("none", "mirrored", "multiworker", "tpu", "data_parallel")
MIXED_PRECISION = {None: None, "none": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


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
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}.")
    return RECIPES[recipe]


@keras.saving.register_keras_serializable(package="keras_nextvit")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_lr`` to ``peak_lr``, then cosine to ``min_lr``.

    Steps are optimizer updates. Keras passes the schedule its micro-step
    counter, which with gradient accumulation advances ``steps_per_update``
    times per update; the schedule divides it back.
    ``schedule="constant"`` holds ``peak_lr`` after the warm-up.
    """

    def __init__(
        self,
        peak_lr,
        total_steps,
        warmup_steps=0,
        warmup_lr=1e-6,
        min_lr=1e-5,
        schedule="cosine",
        steps_per_update=1,
    ):
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}.")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.schedule = schedule
        self.steps_per_update = int(steps_per_update)

    def __call__(self, step):
        step = ops.floor_divide(ops.cast(step, "int32"), self.steps_per_update)
        step = ops.cast(step, "float32")
        warm = self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / max(self.warmup_steps, 1)
        if self.schedule == "constant":
            after = ops.convert_to_tensor(self.peak_lr, "float32")
        else:
            progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip(progress, 0.0, 1.0)
            cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
            after = self.min_lr + (self.peak_lr - self.min_lr) * cosine
        return ops.where(step < self.warmup_steps, warm, after)

    def get_config(self):
        return dict(
            peak_lr=self.peak_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
            schedule=self.schedule,
            steps_per_update=self.steps_per_update,
        )


def no_weight_decay_variables(model):
    """Norm scales/offsets and biases: every trainable variable of rank <= 1."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


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
    optimizer = AdamW(
        learning_rate=schedule,
        weight_decay=recipe.weight_decay,
        beta_1=recipe.beta_1,
        beta_2=recipe.beta_2,
        epsilon=recipe.epsilon,
        global_clipnorm=recipe.clip_norm or None,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
        use_ema=recipe.ema_momentum is not None,
        ema_momentum=recipe.ema_momentum or 0.99,
    )
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


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


def build_optimizer_variables(model):
    """Create the compiled optimizer's variables (moments, EMA copies,
    accumulators) now. Left to Keras, TensorFlow creates them inside the first
    trace of the training step, and a ``tf.function`` that creates variables
    is traced a second time: a trace of the training step costs ~4 s for the
    tiny Next-ViT (depths 1, 1, 5, 1) and 33 s for Next-ViT-S on two cores.
    Call it inside the distribution scope the model was built in."""
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return model


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_WEIGHTS = "last.weights.h5"  # model and optimizer variables
CHECKPOINT_RNG = "last.rng.npz"  # random-generator states (drop path, dropout)
CHECKPOINT_STATE = "state.json"  # epochs done


def _seed_states(model):
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def save_training_state(model, directory, epochs_done, logs=None):
    """Write what resuming needs; each file is replaced atomically."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "partial.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, directory / CHECKPOINT_WEIGHTS)
    states = {str(i): np.asarray(v) for i, v in enumerate(_seed_states(model))}
    with open(directory / "partial.rng.npz", "wb") as handle:
        np.savez(handle, **states)
    os.replace(directory / "partial.rng.npz", directory / CHECKPOINT_RNG)
    state = {"epoch": int(epochs_done)}
    if logs:
        state["logs"] = {k: float(v) for k, v in logs.items()}
    (directory / "partial.json").write_text(json.dumps(state, indent=1))
    os.replace(directory / "partial.json", directory / CHECKPOINT_STATE)


def restore_training_state(model, directory):
    """Load the last checkpoint in ``directory``; returns the epochs done (0 if none).

    ``model`` must be compiled with the optimizer it trained with.
    """
    directory = pathlib.Path(directory)
    state_path = directory / CHECKPOINT_STATE
    if not state_path.exists():
        return 0
    state = json.loads(state_path.read_text())
    build_optimizer_variables(model)
    model.load_weights(directory / CHECKPOINT_WEIGHTS)
    with np.load(directory / CHECKPOINT_RNG) as saved:
        variables = _seed_states(model)
        if len(saved.files) != len(variables):
            raise ValueError(
                f"Checkpoint {str(directory)!r} has {len(saved.files)} random-generator "
                f"states; the model has {len(variables)}. Was it written by another model?"
            )
        for i, variable in enumerate(variables):
            variable.assign(saved[str(i)])
    return int(state["epoch"])


def _is_chief():
    """Whether this process writes checkpoints and logs (always, unless it is
    one of several workers and not the first)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    if not task:
        return True
    return task.get("type") == "chief" or (
        task.get("type") == "worker"
        and task.get("index", 0) == 0
        and "chief" not in config.get("cluster", {})
    )


def _on_every_worker(save, directory):
    """Run ``save(directory)`` on the chief, ``save(scratch)`` elsewhere.

    Reading distributed variables can be a collective operation, so every
    worker must save; only the chief's copy is kept.
    """
    if _is_chief():
        save(pathlib.Path(directory))
        return
    scratch = tempfile.mkdtemp()
    try:
        save(pathlib.Path(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves :func:`save_training_state` after every epoch.

    Under multi-worker training every worker takes part in reading the
    variables; only the chief's copy lands in ``directory``.
    """

    def __init__(self, directory):
        super().__init__()
        self.directory = pathlib.Path(directory)

    def on_epoch_end(self, epoch, logs=None):
        _on_every_worker(
            lambda directory: save_training_state(self.model, directory, epoch + 1, logs),
            self.directory,
        )


class StepLog(keras.callbacks.Callback):
    """Keeps the loss of every step (Keras' logs hold the epoch's running mean)."""

    def __init__(self):
        super().__init__()
        self.losses = []
        self._seen = 0
        self._mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._seen, self._mean = 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._seen += 1
        self.losses.append(mean * self._seen - self._mean * (self._seen - 1))
        self._mean = mean


# --------------------------------------------------------------- distribution


def distribution_scope(name):
    """Set up data-parallel training; returns ``(context, num_replicas)``.

    * ``none`` -- one device.
    * ``mirrored`` -- ``tf.distribute.MirroredStrategy``: all local GPUs (or
      CPUs/logical devices) of this machine.
    * ``multiworker`` -- ``tf.distribute.MultiWorkerMirroredStrategy``; the
      cluster comes from ``TF_CONFIG`` on every machine. Blocked by Keras
      (keras-team/keras#20585): it stops with a message naming the JAX route.
    * ``tpu`` -- ``tf.distribute.TPUStrategy`` on the TPU the cluster
      resolver finds.
    * ``data_parallel`` -- JAX backend: ``keras.distribution.DataParallel``
      over all devices (set globally for the process); over several
      machines when ``KERAS_DISTRIBUTION_NUM_PROCESSES`` > 1 (see
      :func:`_initialize_jax_processes`).

    Build and compile the model inside ``context``.
    """
    name = name or "none"
    if name not in DISTRIBUTIONS:
        raise ValueError(f"Unknown distribution {name!r}; choose one of {DISTRIBUTIONS}.")
    backend = keras.backend.backend()
    if name == "none":
        return contextlib.nullcontext(), 1
    if name == "data_parallel":
        if backend != "jax":
            raise ValueError(
                "distribution='data_parallel' uses keras.distribution, which shards "
                f"over JAX devices; the Keras backend is {backend!r}. Set KERAS_BACKEND=jax, "
                "or use 'mirrored' / 'multiworker' / 'tpu' on TensorFlow."
            )
        if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") not in ("", "1"):
            _initialize_jax_processes()
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    if backend != "tensorflow":
        raise ValueError(
            f"distribution={name!r} is a tf.distribute strategy and needs the TensorFlow "
            f"backend; the Keras backend is {backend!r}. On JAX use 'data_parallel'."
        )
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "distribution='multiworker' needs TF_CONFIG on every machine, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}} (see the README).'
            )
        if not _KERAS_FIT_SUPPORTS_MULTIWORKER:
            raise NotImplementedError(
                f"Keras {keras.__version__} cannot fit() under "
                "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585: the "
                "first batch's shape probe and the per-step log reduction both fail). "
                "Train on several machines with the JAX backend instead: "
                "KERAS_BACKEND=jax, distribution='data_parallel' and "
                "KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID on every "
                "machine (see the README)."
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise RuntimeError(
                "distribution='tpu' found no TPU to connect to (TPUClusterResolver: "
                f"{error}). Run on a TPU VM or set TPU_NAME."
            ) from error
        strategy = tf.distribute.TPUStrategy(resolver)
    return strategy.scope(), strategy.num_replicas_in_sync


# Set to True once a Keras release fixes keras-team/keras#20585.
_KERAS_FIT_SUPPORTS_MULTIWORKER = False


def _initialize_jax_processes():
    """Join a multi-process JAX job (one process per machine, or per GPU).

    ``keras.distribution.initialize`` reads the coordinator address, the
    process count and this process's index from
    ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES``
    and ``KERAS_DISTRIBUTION_PROCESS_ID``. CPU processes exchange gradients
    through gloo.
    """
    import jax

    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize()


def synchronize_batchnorm(model, synchronized=True):
    """Batch statistics over the global batch under ``tf.distribute``.

    With per-replica statistics a step on N replicas differs from the same
    step on one device; synchronised BatchNorm makes them equal.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized


# ---------------------------------------------------------------------- train


@dataclasses.dataclass
class TrainingResult:
    model: keras.Model
    history: dict
    output_dir: str
    initial_epoch: int
    metrics: dict


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
    tensorboard=True,
    jit_compile="auto",
    verbose="auto",
    callbacks=(),
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
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision must be one of {sorted(k for k in MIXED_PRECISION if k)}, "
            f"got {mixed_precision!r}."
        )
    output_dir = pathlib.Path(output_dir)
    # First: joining a multi-process JAX job must precede any JAX computation.
    context, replicas = distribution_scope(distribution)
    keras.utils.set_random_seed(seed)

    train_folder = data_lib.image_folder(train_dir)
    val_folder = (
        data_lib.image_folder(val_dir, class_names=train_folder.class_names) if val_dir else None
    )
    classes = train_folder.num_classes
    steps = data_lib.steps_per_epoch(train_folder, batch_size)
    if max_steps_per_epoch:
        steps = min(steps, int(max_steps_per_epoch))

    previous_policy = keras.config.dtype_policy()
    policy = MIXED_PRECISION[mixed_precision]
    if policy:
        keras.config.set_dtype_policy(policy)
    scratch_log_dir = None
    try:
        with context:
            model = _build_model(
                variant, classes, recipe.image_size, weights, recipe.drop_path_rate, remat
            )
            if freeze_stages:
                finetune.freeze_stages(model, freeze_stages)
            if replicas > 1 and keras.backend.backend() == "tensorflow":
                synchronize_batchnorm(model)
            optimizer = build_optimizer(recipe, model, batch_size, steps, gradient_accumulation)
            compile_for_training(model, optimizer, classes, jit_compile=jit_compile)
            checkpoint_dir = output_dir / "checkpoints"
            initial_epoch = restore_training_state(model, checkpoint_dir) if resume else 0

        train_ds = data_lib.training_dataset(
            train_folder,
            batch_size,
            recipe.image_size,
            seed=seed,
            start_epoch=initial_epoch,
            epochs=recipe.epochs,
            augmentation=recipe.augmentation,
            max_steps_per_epoch=steps,
        )
        val_ds = None
        if val_folder is not None:
            val_ds = data_lib.evaluation_dataset(
                val_folder, batch_size, recipe.image_size, crop_pct=recipe.crop_pct
            )
        extra_callbacks = list(callbacks)
        # Under multi-worker training only the chief writes logs; the other
        # workers' go to a scratch folder removed at the end.
        scratch_log_dir = None if _is_chief() else tempfile.mkdtemp()
        log_dir = output_dir if scratch_log_dir is None else pathlib.Path(scratch_log_dir)
        callbacks = [
            TrainingCheckpoint(checkpoint_dir),
            keras.callbacks.CSVLogger(str(log_dir / "log.csv"), append=initial_epoch > 0),
        ]
        if recipe.ema_momentum is not None:
            callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(str(log_dir / "tensorboard")))
        step_log = StepLog()
        callbacks.append(step_log)
        callbacks.extend(extra_callbacks)
        output_dir.mkdir(parents=True, exist_ok=True)
        history = {}
        if initial_epoch < recipe.epochs:
            fit = model.fit(
                train_ds,
                epochs=recipe.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                validation_data=val_ds,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the dataset shuffles each epoch itself
            )
            history = dict(fit.history)
        history["step_loss"] = step_log.losses
        metrics = {}
        if val_ds is not None:
            if recipe.ema_momentum is not None:
                model.optimizer.finalize_variable_values(model.trainable_variables)
            metrics = model.evaluate(val_ds, return_dict=True, verbose=0)
        if replicas > 1 and keras.backend.backend() == "tensorflow":
            synchronize_batchnorm(model, False)
        _on_every_worker(lambda directory: model.save(directory / "model.keras"), output_dir)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if scratch_log_dir is not None:
            shutil.rmtree(scratch_log_dir, ignore_errors=True)
    return TrainingResult(model, history, str(output_dir), initial_epoch, metrics)

