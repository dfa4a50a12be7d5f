"""The keras-nextvit command and the tools' entry points."""

import os
import subprocess
import sys
from unittest import mock

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "keras_nextvit.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )


HELP = r"""
import sys
from keras_nextvit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("LOADED", sorted(m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["export", "--help"], ["hub-preset", "--help"], ["classify", "--help"],
                                  ["validate", "--help"]])
def test_help_needs_no_backend(args):
    """``keras-nextvit --help`` answers at once: importing the package and the
    command line loads neither Keras nor any backend."""
    result = subprocess.run(
        [sys.executable, "-c", HELP, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: keras-nextvit" in result.stdout
    assert "LOADED []" in result.stdout, result.stdout[-500:]
    assert result.stderr == ""


@pytest.mark.slow
def test_info_prints_counts_against_the_paper():
    result = subprocess.run(  # as a user runs it: no TF_CPP_MIN_LOG_LEVEL of ours
        [sys.executable, "-m", "keras_nextvit.cli", "info"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # TensorFlow's start-up lines (absl, oneDNN, CUDA probes) are silenced.
    for noise in ("absl", "oneDNN", "cuda"):
        assert noise not in result.stderr, result.stderr[-2000:]
    out = result.stdout
    for line in ("31,763,368", "44,818,856", "57,874,344", "5.79", "8.27", "10.75"):
        assert line in out
    assert out.count("nextvit_") >= 12  # the presets


@pytest.mark.slow
def test_demo_classifies_saves_and_reloads():
    result = run("demo", "--size", "96")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "classified chelsea.jpg" in out
    assert "untrained weights" in out
    assert "reloaded: max abs difference 0.0e+00" in out


@pytest.mark.slow
def test_demo_with_a_checkpoint(tmp_path, capsys):
    """In this process (the command's own process is the test above's)."""
    from conftest import synthetic_checkpoint
    from safetensors.numpy import save_file

    from keras_nextvit import cli

    path = tmp_path / "small.safetensors"
    save_file(dict(synthetic_checkpoint("small")), str(path))
    assert cli.main(["demo", "--size", "64", "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"weights: {path}" in out and "untrained" not in out


@pytest.mark.slow
def test_bad_requests_exit_with_a_message(tmp_path):
    result = run("demo", "--weights", "nextvit_tiny.bd_in1k")
    assert result.returncode == 2 and "Unknown preset 'nextvit_tiny.bd_in1k'" in result.stderr
    result = run("export", str(tmp_path / "m.tflite"), "--quantize", "int8", "--size", "64")
    assert result.returncode == 2 and "needs representative_data" in result.stderr
    result = run("export", str(tmp_path / "m.plan"), "--format", "tensorrt", "--size", "64")
    if "tensorrt" not in sys.modules:
        assert result.returncode == 2 and "TensorRT export is not possible here" in result.stderr


def test_export_requests_fail_before_a_model_is_built(tmp_path, capsys):
    """A request that cannot be met is refused before Next-ViT is built and
    traced (seconds for S): at once, with the same message."""
    from keras_nextvit import cli

    with mock.patch("keras_nextvit.model.NextViT", side_effect=AssertionError("a model was built")):
        assert cli.main(["export", str(tmp_path / "m.tflite"), "--quantize", "int8", "--size", "64"]) == 2
        assert "needs representative_data" in capsys.readouterr().err
        assert cli.main(["export", str(tmp_path / "m.tflite"), "--uint8-input"]) == 2
        assert "uint8_input is supported for format='saved_model' and format='coreml' only" in capsys.readouterr().err
        if "tensorrt" not in sys.modules:
            assert cli.main(["export", str(tmp_path / "m.plan"), "--format", "tensorrt"]) == 2
            assert "TensorRT export is not possible here" in capsys.readouterr().err


def test_export_command_offers_every_quantize_mode():
    from keras_nextvit import cli
    from keras_nextvit.exporters import QUANTIZE

    modes = {mode for per_format in QUANTIZE.values() for mode in per_format}
    assert set(cli.QUANTIZE_CHOICES) == modes


@pytest.mark.slow
def test_export_command_prints_the_report(tmp_path, capsys):
    """In this process (test_bad_requests_exit_with_a_message runs the
    command's own process)."""
    from keras_nextvit import cli

    path = tmp_path / "m.tflite"
    assert cli.main(["export", str(path), "--format", "tflite", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert path.exists() and "max abs error" in out and "cosine 1.0000" in out


def test_tensorflow_model_optimization_refuses_keras3_models():
    """What the README says: tfmot wraps only tf-keras (Keras 2) models."""
    tfmot = pytest.importorskip("tensorflow_model_optimization")
    import keras_nextvit

    model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="Sequential or Functional"):
        tfmot.quantization.keras.quantize_model(model)
    with pytest.raises(ValueError, match="can only prune"):
        tfmot.sparsity.keras.prune_low_magnitude(model)


@pytest.mark.slow
def test_keras_int8_quantization_of_the_merged_model():
    """Keras' own int8 (Dense layers, i.e. every 1x1 conv and linear)."""
    import keras
    import numpy as np
    from conftest import infer, synthetic_checkpoint

    import keras_nextvit

    model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3))
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint("small"))
    merged = keras_nextvit.merge_batchnorm(model)
    # Keras runs a full garbage collection after each of the 86 float kernels
    # it deletes (to free device buffers sooner): 0.2-0.4 s each in a test
    # process, and nothing to do with the quantization checked here.
    with mock.patch("gc.collect"):
        merged.quantize("int8")
    dense = [l for l in merged._flatten_layers() if isinstance(l, keras.layers.Dense)]
    assert len(dense) == 86 and all(l.quantization_mode == "int8" for l in dense)  # every 1x1 conv and linear
    x = np.random.default_rng(0).uniform(-2, 2, (2, 64, 64, 3)).astype("float32")
    a, b = infer(merged, x), infer(model, x)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99
