"""The training run every task shares, around Keras' ``fit``.

A task (:class:`TrainingTask`) supplies its data, model, optimizer, losses
and metrics; :func:`run` does the rest in one order for all of them:

1. join the distribution (before any computation) and seed every generator;
2. ``task.prepare()`` reads the data;
3. under the mixed-precision policy and the distribution's scope: the
   model, BatchNorm synchronised across replicas, ``task.compile``, the last
   checkpoint restored (exact resume) and the optimizer's variables made;
4. ``fit`` from the restored epoch with the checkpoint, ``log.csv``,
   TensorBoard, EMA and per-step-loss callbacks (only the chief writes);
5. ``task.final_model`` saved by :meth:`TrainingTask.save`, then
   ``task.metrics``.
"""

import contextlib
import dataclasses
import pathlib
import shutil
import tempfile

import keras

from .checkpoint import TrainingCheckpoint, is_chief, on_every_worker, restore_training_state
from .distribute import distribution_scope, synchronize_batchnorm
from .optimizer import build_optimizer_variables

MIXED_PRECISION = {None: None, "none": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def get_recipe(recipe, recipes, recipe_type, kind="recipe"):
    """``recipe`` itself when it is a ``recipe_type``, else ``recipes[recipe]``."""
    if isinstance(recipe, recipe_type):
        return recipe
    if recipe not in recipes:
        raise ValueError(f"Unknown {kind} {recipe!r}; choose one of {sorted(recipes)}.")
    return recipes[recipe]


def check_mixed_precision(mixed_precision):
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision must be one of {sorted(k for k in MIXED_PRECISION if k)}, "
            f"got {mixed_precision!r}."
        )


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """Keras' global dtype policy for ``mixed_precision``, restored after."""
    check_mixed_precision(mixed_precision)
    previous = keras.config.dtype_policy()
    policy = MIXED_PRECISION[mixed_precision]
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


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


def _tensorboard_installed():
    """Whether the ``tensorboard`` package is there (TensorFlow no longer
    installs it, and Keras' callback fails at the first epoch's end
    without it); if not, say so and log to ``log.csv`` only."""
    import importlib.util
    import warnings

    if importlib.util.find_spec("tensorboard") is not None:
        return True
    warnings.warn("TensorBoard logs need the tensorboard package (pip install tensorboard): "
                  "this run logs to log.csv only.", stacklevel=3)
    return False


@dataclasses.dataclass
class TrainingResult:
    model: keras.Model
    history: dict
    output_dir: str
    initial_epoch: int
    metrics: dict


class TrainingTask:
    """What a task plugs into :func:`run`. ``prepare`` sets ``epochs`` and
    ``steps_per_epoch`` (Keras epochs: a checkpoint and a validation pass
    after each); ``ema``: the optimizer keeps an EMA of the weights, swapped
    in for validation."""

    epochs = None
    steps_per_epoch = None
    ema = False

    def prepare(self):
        """Read the data (after the seed, before any model is built)."""

    def build_model(self):
        """The model ``fit`` trains, inside the distribution's scope."""
        raise NotImplementedError

    def compile(self, model):
        """Compile ``model`` with its optimizer, losses and metrics."""
        raise NotImplementedError

    def datasets(self, initial_epoch):
        """``(train, validation or None)`` from ``initial_epoch`` on."""
        raise NotImplementedError

    def on_start(self, output_dir):
        """Before ``fit``, on the chief only (e.g. write the run's settings)."""

    def callbacks(self):
        """The task's own callbacks, run first at each epoch's end (so that
        what they add to the logs reaches ``log.csv`` and the history)."""
        return []

    def final_model(self, model, history):
        """The model to save and return (default: the trained one)."""
        return model

    def save(self, model, directory):
        model.save(directory / "model.keras")

    def metrics(self, final, model, history, val_ds):
        """The final validation scores (default: none)."""
        return {}

    def result(self, final, history, output_dir, initial_epoch, metrics, model):
        """What :func:`run` returns (``model``: the one ``fit`` trained)."""
        return TrainingResult(final, history, output_dir, initial_epoch, metrics)


def run(task, output_dir, distribution="none", mixed_precision=None, seed=0, resume=True,
        tensorboard=True, verbose="auto", callbacks=()):
    """Train ``task`` (see the module's docstring); returns ``task.result(...)``,
    a :class:`TrainingResult` by default."""
    check_mixed_precision(mixed_precision)
    output_dir = pathlib.Path(output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    # First: joining a multi-process JAX job must precede any JAX computation.
    context, replicas = distribution_scope(distribution)
    keras.utils.set_random_seed(seed)
    task.prepare()
    synchronize = replicas > 1 and keras.backend.backend() == "tensorflow"
    scratch_log_dir = None
    try:
        with dtype_policy(mixed_precision):
            with context:
                model = task.build_model()
                if synchronize:
                    synchronize_batchnorm(model)
                task.compile(model)
                initial_epoch = restore_training_state(model, checkpoint_dir) if resume else 0
                # Now rather than inside the first traced step, which would
                # then be traced twice (Keras defers it without a strategy).
                build_optimizer_variables(model)
            train_ds, val_ds = task.datasets(initial_epoch)
            # Under multi-worker training only the chief writes logs; the other
            # workers' go to a scratch folder removed at the end.
            scratch_log_dir = None if is_chief() else tempfile.mkdtemp()
            log_dir = output_dir if scratch_log_dir is None else pathlib.Path(scratch_log_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            if scratch_log_dir is None:
                task.on_start(output_dir)
            step_log = StepLog()
            run_callbacks = [
                *task.callbacks(),
                TrainingCheckpoint(checkpoint_dir),
                keras.callbacks.CSVLogger(str(log_dir / "log.csv"), append=initial_epoch > 0),
            ]
            if task.ema:
                run_callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
            if tensorboard and _tensorboard_installed():
                run_callbacks.append(keras.callbacks.TensorBoard(str(log_dir / "tensorboard")))
            run_callbacks += [step_log, *callbacks]
            history = {}
            if initial_epoch < task.epochs:
                fit = model.fit(
                    train_ds,
                    epochs=task.epochs,
                    initial_epoch=initial_epoch,
                    steps_per_epoch=task.steps_per_epoch,
                    validation_data=val_ds,
                    callbacks=run_callbacks,
                    verbose=verbose,
                    shuffle=False,  # the task's dataset orders each pass itself
                )
                history = dict(fit.history)
            history["step_loss"] = step_log.losses
            final = task.final_model(model, history)
            if synchronize:
                synchronize_batchnorm(model, False)
            on_every_worker(lambda directory: task.save(final, directory), output_dir)
            metrics = task.metrics(final, model, history, val_ds)
    finally:
        if scratch_log_dir is not None:
            shutil.rmtree(scratch_log_dir, ignore_errors=True)
    return task.result(final, history, str(output_dir), initial_epoch, metrics, model)
