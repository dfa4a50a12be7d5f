"""The training core (keras_nextvit.trainer): schedules, parameter groups and
the command-line scaffold that the three tasks' trainers share."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import load_tool

from keras_nextvit import trainer
from keras_nextvit.trainer import command


def mmcv_step_lr(i, base_lr, milestones, gamma, warmup_iters, warmup_ratio):
    """mmcv 1.x's StepLrUpdaterHook rate at iteration ``i`` (milestones as
    iterations), with its 'linear' warm-up, as its sources write them."""
    exp = len([m for m in milestones if i >= m])
    lr = base_lr * gamma ** exp
    if i < warmup_iters:
        k = (1 - i / warmup_iters) * (1 - warmup_ratio)
        lr = lr * (1 - k)
    return lr


@pytest.mark.parametrize("warmup_iters", [0, 500])
def test_step_decay_is_mmcv_step_with_linear_warmup(warmup_iters):
    schedule = trainer.StepDecay(1e-4, [800, 1100], gamma=0.1, warmup_iters=warmup_iters,
                                 warmup_ratio=0.001)
    steps = [0, 1, 250, 499, 500, 501, 799, 800, 1099, 1100, 5000]
    got = np.array([float(schedule(s)) for s in steps])
    want = np.array([mmcv_step_lr(s, 1e-4, [800, 1100], 0.1, warmup_iters, 0.001) for s in steps])
    np.testing.assert_allclose(got, want, rtol=2e-6)
    restored = trainer.StepDecay.from_config(schedule.get_config())
    assert float(restored(900)) == float(schedule(900))
    with pytest.raises(ValueError, match="milestones must be increasing"):
        trainer.StepDecay(1e-4, [1100, 800])


def _small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def test_parameter_groups():
    model = _small_model()

    def paths(rule, keys=()):
        return sorted(v.path for v in trainer.no_decay_variables(model, rule, keys))

    assert paths("none") == []
    assert paths("norms") == ["bn/beta", "bn/gamma", "ln/beta", "ln/gamma"]
    assert paths("rank1") == ["bn/beta", "bn/gamma", "conv/bias", "head/bias", "ln/beta", "ln/gamma"]
    assert paths("norms", ["head/"]) == ["bn/beta", "bn/gamma", "head/bias", "head/kernel", "ln/beta", "ln/gamma"]
    with pytest.raises(ValueError, match="no-decay rule must be one of"):
        trainer.no_decay_variables(model, "biases")
    optimizer = trainer.adamw(model, 1e-3, 0.05, no_decay="norms", gradient_accumulation=2)
    optimizer.build(model.trainable_variables)
    decayed = sorted(v.path for v in model.trainable_variables if optimizer._use_weight_decay(v))
    assert decayed == ["conv/bias", "conv/kernel", "head/bias", "head/kernel"]
    assert optimizer.gradient_accumulation_steps == 2
    with pytest.raises(ValueError, match="gradient_accumulation must be >= 1"):
        trainer.adamw(model, 1e-3, 0.05, gradient_accumulation=0)


def test_lazy_names_and_a_light_scaffold():
    assert trainer.StepDecay is trainer.schedules.StepDecay
    with pytest.raises(AttributeError, match="has no attribute 'Trainer'"):
        trainer.Trainer  # noqa: B018
    # the commands build their --help from the scaffold before any backend loads
    code = ("import sys; from keras_nextvit.trainer import command; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('keras', 'tensorflow'))][:5]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_scaffold_parses_variants():
    assert command.variant("small") == "small"
    assert command.variant("1,1,5,1") == (1, 1, 5, 1)
    with pytest.raises(ValueError, match="--variant must be comma-separated integers, got '1,x'"):
        command.variant("1,x")
    with pytest.raises(ValueError, match="--variant needs four stage depths"):
        command.variant("1,1,5")


@pytest.mark.slow
def test_a_mistake_found_after_tensorflow_loads_is_the_only_line(tmp_path):
    """The training tools load TensorFlow with its C++ start-up lines (absl,
    oneDNN, CUDA probes) silenced: a mistake found once it has loaded (a
    folder without COCO annotations) is all the tool writes to stderr."""
    import pathlib

    (tmp_path / "coco").mkdir()
    tool = pathlib.Path(__file__).parent.parent / "tools" / "train_detection.py"
    result = subprocess.run(
        [sys.executable, str(tool), "--train", str(tmp_path / "coco"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    expected = f"error: {tmp_path / 'coco'} has no annotations/instances_train2017.json (COCO's layout)."
    assert result.stderr.splitlines() == [expected], result.stderr[-2000:]


@pytest.mark.parametrize("tool", ["train", "train_segmentation", "train_detection"])
def test_commands_end_a_mistake_without_a_traceback(tool, tmp_path, capsys):
    main = load_tool(tool).main
    assert main(["--train", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --train: ") and "Traceback" not in err, err
    (tmp_path / "train").mkdir()
    assert main(["--train", str(tmp_path / "train"), "--variant", "1,1,x,1"]) == 2
    err = capsys.readouterr().err
    assert "error: --variant must be comma-separated integers" in err, err


def test_without_tensorboard_a_run_warns_and_logs_to_csv(tmp_path, monkeypatch):
    """TensorFlow no longer installs tensorboard, and Keras' TensorBoard
    callback fails at the first epoch's end without it: the core says so
    once and the run goes on, logging to log.csv."""
    import importlib.util

    class Tiny(trainer.TrainingTask):
        epochs, steps_per_epoch = 2, 2

        def build_model(self):
            return keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])

        def compile(self, model):
            model.compile(optimizer="sgd", loss="mse")

        def datasets(self, initial_epoch):
            import tensorflow as tf

            x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
            return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4).repeat(), None

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        result = trainer.run(Tiny(), tmp_path / "run", tensorboard=True, verbose=0)
    assert len(result.history["loss"]) == 2
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3
    assert not (tmp_path / "run" / "tensorboard").exists()
