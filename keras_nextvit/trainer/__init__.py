"""The training core the three tasks share (classification,
:mod:`keras_nextvit.training`; segmentation,
:mod:`keras_nextvit.segmentation.training`; detection,
:mod:`keras_nextvit.detection.training`).

* :mod:`.schedules` -- warm-up + cosine, mmcv's ``poly`` and ``step``.
* :mod:`.optimizer` -- AdamW with parameter groups (upstream's
  ``paramwise_cfg``: no decay on norms and/or biases), gradient
  accumulation, EMA.
* :mod:`.checkpoint` -- weights, optimizer state and random-generator
  states after every epoch; resuming continues exactly.
* :mod:`.distribute` -- ``tf.distribute`` on TensorFlow,
  ``keras.distribution`` on JAX; synchronised BatchNorm.
* :mod:`.loop` -- :class:`TrainingTask` and :func:`run`: the run around
  Keras' ``fit`` (mixed precision, logs, callbacks, saving).
* :mod:`.command` -- the training tools' command-line scaffold.
"""

import importlib

# Public name -> the submodule that defines it, imported on first use: the
# training commands read the command-line scaffold (:mod:`.command`) without
# loading Keras and a backend.
_WHERE = {
    "checkpoint": (
        "CHECKPOINT_RNG", "CHECKPOINT_STATE", "CHECKPOINT_WEIGHTS", "TrainingCheckpoint", "is_chief",
        "on_every_worker", "restore_training_state", "save_training_state",
    ),
    "distribute": ("DISTRIBUTIONS", "distribution_scope", "synchronize_batchnorm"),
    "loop": (
        "MIXED_PRECISION", "StepLog", "TrainingResult", "TrainingTask", "check_mixed_precision", "get_recipe", "run",
    ),
    "optimizer": (
        "AdamWSettings", "NORMALIZATION_LAYERS", "adamw", "build_optimizer_variables", "no_decay_variables",
        "no_weight_decay_variables", "norm_variables",
    ),
    "schedules": ("PolyDecay", "StepDecay", "WarmupCosineDecay"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))
