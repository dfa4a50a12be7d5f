"""Checkpoints with exact resume: the model's and the optimizer's variables
(moments, accumulators, EMA copies, the update count that drives the
schedule), the state of every random generator (drop path, dropout, the
stateless augmentations' seeds) and the epochs done, after every epoch.

Under multi-worker training every worker takes part in reading the
variables (it can be a collective operation); only the chief's copy is kept.
"""

import json
import os
import pathlib
import shutil
import tempfile

import keras
import numpy as np

from .optimizer import build_optimizer_variables

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


def is_chief():
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


def on_every_worker(save, directory):
    """Run ``save(directory)`` on the chief, ``save(scratch)`` elsewhere.

    Reading distributed variables can be a collective operation, so every
    worker must save; only the chief's copy is kept.
    """
    if is_chief():
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
        on_every_worker(
            lambda directory: save_training_state(self.model, directory, epoch + 1, logs),
            self.directory,
        )
