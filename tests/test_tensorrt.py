"""The ONNX -> TensorRT engine builder, short of a GPU.

The engine build itself needs an NVIDIA GPU and TensorRT, which CI has not:
`tools/tensorrt_check.py` runs it on such a machine (README, TensorRT). Here
the builder is driven through a stand-in `tensorrt` module that records the
calls, so the version-dependent network flags, the optimization profile of a
dynamic batch, the precision flags and the error paths are checked; and the
tool's pieces that run without TensorRT are run.
"""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from keras_nextvit.exporters import tensorrt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


def fake_tensorrt(version, input_shape, parse_ok=True, engine=b"engine-bytes"):
    """A stand-in for the parts of the `tensorrt` package build_engine uses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls = trt.calls = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Enum:
        def __init__(self, name):
            self.name = name

        def __int__(self):
            return 0

        def __repr__(self):
            return self.name

    trt.Logger = Logger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=Enum("EXPLICIT_BATCH"))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")

    class Tensor:
        name = "images"
        shape = input_shape

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor()

    class Parser:
        num_errors = 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Foo): unsupported operator"

    class Profile:
        def set_shape(self, name, *shapes):
            calls.append(("profile", name, shapes))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("add_profile",))

        def __setattr__(self, name, value):
            calls.append(("config", name, value))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return engine

    trt.OnnxParser = Parser
    trt.Builder = Builder
    return trt


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not parsed by the stand-in")
    return path


def build(monkeypatch, tmp_path, onnx_file, version="10.3.0", shape=(-1, 224, 224, 3), **kwargs):
    trt = fake_tensorrt(version, shape, **{k: kwargs.pop(k) for k in ("parse_ok", "engine") if k in kwargs})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = tmp_path / "model.plan"
    tensorrt.build_engine(onnx_file, plan, **kwargs)
    return trt.calls, plan


def test_profile_shapes():
    assert tensorrt.profile_shapes((-1, 224, 224, 3), 1, 32) == ((1, 224, 224, 3), (1, 224, 224, 3), (32, 224, 224, 3))
    assert tensorrt.profile_shapes((-1, 64, 96, 3), 8, 16)[1] == (8, 64, 96, 3)
    assert tensorrt.profile_shapes((4, 64, 96, 3)) == ((4, 64, 96, 3),) * 3
    with pytest.raises(ValueError, match="Only the batch may be dynamic.*-1, -1, 3"):
        tensorrt.profile_shapes((1, -1, -1, 3))
    with pytest.raises(ValueError, match=r"1 <= opt_batch_size \(64\) <= max_batch_size \(32\)"):
        tensorrt.profile_shapes((-1, 8, 8, 3), 64, 32)


@pytest.mark.parametrize("version,flags", [("8.6.0", 1), ("10.3.0", 0)])
def test_network_is_explicit_batch_on_tensorrt_8_and_10(monkeypatch, tmp_path, onnx_file, version, flags):
    calls, plan = build(monkeypatch, tmp_path, onnx_file, version=version, precision="fp16")
    assert ("create_network", flags) in calls  # TensorRT 8's ONNX parser needs EXPLICIT_BATCH
    assert plan.read_bytes() == b"engine-bytes"


def test_dynamic_batch_gets_an_optimization_profile(monkeypatch, tmp_path, onnx_file):
    calls, _ = build(monkeypatch, tmp_path, onnx_file, precision="fp16", opt_batch_size=8, max_batch_size=16)
    assert ("profile", "images", ((1, 224, 224, 3), (8, 224, 224, 3), (16, 224, 224, 3))) in calls
    assert ("add_profile",) in calls


@pytest.mark.parametrize(
    "precision,expected,absent",
    [
        ("fp32", [("clear_flag", "TF32")], [("set_flag", "FP16"), ("set_flag", "INT8")]),
        ("fp16", [("set_flag", "FP16")], [("clear_flag", "TF32"), ("set_flag", "INT8")]),
    ],
)
def test_precision_flags(monkeypatch, tmp_path, onnx_file, precision, expected, absent):
    calls, _ = build(monkeypatch, tmp_path, onnx_file, precision=precision, optimization_level=1)
    assert all(c in calls for c in expected), calls
    assert not any(c in calls for c in absent), calls
    assert ("config", "builder_optimization_level", 1) in calls
    assert ("workspace", 4 << 30) in calls


def test_build_errors(monkeypatch, tmp_path, onnx_file):
    with pytest.raises(RuntimeError, match="could not parse the ONNX model: In node 3 \\(Foo\\)"):
        build(monkeypatch, tmp_path, onnx_file, parse_ok=False, precision="fp16")
    with pytest.raises(RuntimeError, match="failed to build the engine"):
        build(monkeypatch, tmp_path, onnx_file, engine=None, precision="fp16")
    with pytest.raises(ValueError, match="INT8 TensorRT engines need representative data"):
        build(monkeypatch, tmp_path, onnx_file, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        build(monkeypatch, tmp_path, onnx_file, precision="bf16")


def test_cuda_errors_are_raised():
    assert tensorrt._check_cuda((0, 1234), "cudaMalloc") == 1234
    with pytest.raises(RuntimeError, match="CUDA cudaMalloc failed: 2"):
        tensorrt._check_cuda((2, None), "cudaMalloc")


def test_check_tool_loads_the_engine_code_without_tensorflow():
    """The GPU machines that have TensorRT rarely have TensorFlow."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tensorrt_check as t; "
        "engines, verify = t.load_exporters(); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'; "
        "print(engines.profile_shapes((-1, 8, 8, 3), 2, 4), verify.compare.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code, TOOLS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "((1, 8, 8, 3), (2, 8, 8, 3), (4, 8, 8, 3)) compare" in result.stdout


def test_coarse_weights_are_exact_under_batchnorm_merging():
    """``--coarse-weights``: BatchNorm scales are exactly 1, so merging keeps
    every kernel on its 3-mantissa-bit grid (the ONNX compresses)."""
    sys.path.insert(0, TOOLS)
    try:
        import tensorrt_check
    finally:
        sys.path.remove(TOOLS)
    import keras_nextvit

    model = keras_nextvit.NextViT(depths=(1, 1, 5, 1), input_shape=(32, 32, 3), include_top=False)
    tensorrt_check.coarsen_weights(model)
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            gamma, beta, mean, var = (np.asarray(w) for w in layer.weights)
            assert np.all(gamma / np.sqrt(var + np.float32(layer.epsilon)) == 1)
    merged = keras_nextvit.merge_batchnorm(model)
    kernels = [np.asarray(w) for w in merged.weights if w.path.endswith("kernel")]
    assert kernels
    for kernel in kernels:
        assert np.all(kernel.view(np.uint32) & np.uint32(0xFFFFF) == 0)
