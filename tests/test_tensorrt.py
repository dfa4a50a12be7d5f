"""The ONNX -> TensorRT engine builder and runner, short of a GPU.

The engine build itself needs an NVIDIA GPU and TensorRT, which CI has not:
`tools/tensorrt_check.py` runs it on such a machine (README, TensorRT). Here
the builder and the runner are driven through stand-in `tensorrt` and
`cuda` (cuda-python) modules that record the calls. The stand-ins model the
API differences between TensorRT 8.6, 10.x and 11.x that the code depends
on, as the 10.x and 11.x Python bindings (tensorrt-cu12/-cu13-bindings
wheels) expose them:

* 8.6 and 10.x have `NetworkDefinitionCreationFlag.EXPLICIT_BATCH`
  (needed by 8.6, ignored by 10); 11.x has not;
* 8.6 and 10.x have `BuilderFlag.FP16` / `INT8`, `IInt8EntropyCalibrator2`,
  `IBuilderConfig.int8_calibrator` and `set_calibration_profile`; 11.x has
  only `BuilderFlag.TF32` of these (strongly typed networks);
* cuda-python has `cuda.bindings.runtime` (12.6.2 and later, the only one in
  13.x) and/or `cuda.cudart` (up to 12.x).

So the version-dependent network flags, the optimization profile of a
dynamic batch, the precision flags, the calibrator, the typed-ONNX checks of
TensorRT 11 and their messages, and the runner's tensor-address execution are
checked; and the tool's pieces that run without TensorRT are run.
"""

import ctypes
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from keras_nextvit.exporters import tensorrt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


class Enum:
    def __init__(self, name, value=0):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return self.name


def fake_tensorrt(version, input_shape, parse_ok=True, engine=b"engine-bytes", declares="fp32",
                  input_dtype="FLOAT"):
    """A stand-in for the parts of the `tensorrt` package build_engine and
    EngineRunner use, with the API of TensorRT ``version`` (8.6, 10.x, 11.x).

    ``declares``: what the parsed ONNX holds: ``fp32``, ``fp16`` (FP16
    tensors) or ``int8`` (Q/DQ layers). ``input_dtype``: the engine input's
    type as the runner sees it.
    """
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls = trt.calls = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    trt.Logger = Logger
    creation = {"STRONGLY_TYPED": Enum("STRONGLY_TYPED", 1)} if major >= 10 else {}
    if major < 11:  # deprecated (ignored) in 10, removed in 11
        creation["EXPLICIT_BATCH"] = Enum("EXPLICIT_BATCH", 0)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**creation)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    builder_flags = {"TF32": "TF32", "DEBUG": "DEBUG"}
    if major < 11:  # weak typing; removed in 11
        builder_flags.update(FP16="FP16", INT8="INT8", BF16="BF16")
    trt.BuilderFlag = types.SimpleNamespace(**builder_flags)
    trt.LayerType = types.SimpleNamespace(
        CONVOLUTION="CONVOLUTION", CAST="CAST", QUANTIZE="QUANTIZE", DEQUANTIZE="DEQUANTIZE"
    )
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT8="INT8")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = {"FLOAT": np.float32, "HALF": np.float16}.__getitem__

    class Tensor:
        def __init__(self, dtype, name="t", shape=()):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer:
        def __init__(self, type, *dtypes):
            self.type, self.outputs = type, [Tensor(d) for d in dtypes]
            self.num_outputs = len(self.outputs)

        def get_output(self, i):
            return self.outputs[i]

    layers = {
        "fp32": [Layer("CONVOLUTION", "FLOAT")],
        "fp16": [Layer("CAST", "HALF"), Layer("CONVOLUTION", "HALF"), Layer("CAST", "FLOAT")],
        "int8": [Layer("QUANTIZE", "INT8"), Layer("DEQUANTIZE", "HALF"), Layer("CONVOLUTION", "HALF")],
    }[declares]

    class Network:
        num_inputs = 1
        num_layers = len(layers)

        def get_input(self, i):
            return Tensor("FLOAT", "images", input_shape)

        def get_layer(self, i):
            return layers[i]

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
            if name == "int8_calibrator" and major >= 11:  # pybind objects refuse unknown attributes
                raise AttributeError("'tensorrt.IBuilderConfig' object has no attribute 'int8_calibrator'")
            calls.append(("config", name, value))

    if major < 11:
        Config.set_calibration_profile = lambda self, profile: calls.append(("calibration_profile",))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return engine

    if major < 11:

        class IInt8EntropyCalibrator2:  # the pybind base class; removed in 11
            def __init__(self):
                calls.append(("calibrator_base_init",))

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    # ---- runtime: one input "images" (input_shape, input_dtype) -> "logits" (batch, 5) float32
    class Context:
        def __init__(self):
            self.shape, self.addresses = None, {}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            assert name == "logits" and self.shape is not None, "output shape asked before the input shape"
            return (self.shape[0], 5)

        def set_tensor_address(self, name, address):
            calls.append(("set_tensor_address", name))
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            dtype = trt.nptype(input_dtype)
            images = _device(self.addresses["images"], dtype, self.shape)
            logits = _device(self.addresses["logits"], np.float32, (self.shape[0], 5))
            total = images.astype(np.float32).reshape(self.shape[0], -1).sum(axis=1, keepdims=True)
            logits[...] = total * np.arange(1, 6, dtype=np.float32)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["images", "logits"][i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == "images" else "OUTPUT"

        def get_tensor_shape(self, name):
            return tuple(input_shape) if name == "images" else (input_shape[0], 5)

        def get_tensor_dtype(self, name):
            return input_dtype if name == "images" else "FLOAT"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize", data))
            return Engine() if data == engine else None

    trt.OnnxParser = Parser
    trt.Builder = Builder
    trt.Runtime = Runtime
    return trt


# ------------------------------------------------------------------ cuda-python
_MEMORY = {}  # fake device pointer -> host buffer standing in for device memory


def _device(address, dtype, shape):
    return _MEMORY[address][: int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


def fake_cudart():
    """cuda-python's runtime module, with host memory standing in for the GPU."""
    rt = types.ModuleType("runtime")
    calls = rt.calls = []
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def cudaMalloc(nbytes):
        buffer = np.zeros(nbytes, np.uint8)
        _MEMORY[buffer.ctypes.data] = buffer
        calls.append(("cudaMalloc", nbytes))
        return 0, buffer.ctypes.data

    def cudaFree(pointer):
        _MEMORY.pop(pointer, None)
        return (0,)

    def cudaMemcpy(dst, src, nbytes, kind):
        calls.append(("cudaMemcpy", nbytes, kind))
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaMemcpyAsync(dst, src, nbytes, kind, stream):
        calls.append(("cudaMemcpyAsync", nbytes, kind, stream))
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    rt.cudaMalloc, rt.cudaFree = cudaMalloc, cudaFree
    rt.cudaMemcpy, rt.cudaMemcpyAsync = cudaMemcpy, cudaMemcpyAsync
    rt.cudaStreamCreate = lambda: (0, 7)
    rt.cudaStreamSynchronize = lambda stream: (0,)
    rt.cudaStreamDestroy = lambda stream: calls.append(("cudaStreamDestroy", stream)) or (0,)
    rt.cudaGetDeviceCount = lambda: (0, 1)
    return rt


def install_cuda(monkeypatch, layout="bindings"):
    """``bindings``: cuda.bindings.runtime only (cuda-python 13); ``cudart``:
    cuda.cudart only (<= 12.6.0); ``both`` (12.6.2 - 12.9)."""
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []
    runtime = fake_cudart()
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    if layout in ("bindings", "both"):
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = runtime
        cuda.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # import fails
    if layout in ("cudart", "both"):
        legacy = fake_cudart() if layout == "both" else runtime
        cuda.cudart = legacy
        monkeypatch.setitem(sys.modules, "cuda.cudart", legacy)
    else:
        monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    return runtime


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not parsed by the stand-in")
    return path


def build(monkeypatch, tmp_path, onnx_file, version="10.3.0", shape=(-1, 224, 224, 3), **kwargs):
    fake_kwargs = {k: kwargs.pop(k) for k in ("parse_ok", "engine", "declares") if k in kwargs}
    trt = fake_tensorrt(version, shape, **fake_kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = tmp_path / "model.plan"
    tensorrt.build_engine(onnx_file, plan, **kwargs)
    return trt.calls, plan


def calibration_batches(n=2, batch=2):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((batch, 8, 8, 3)).astype(np.float32) for _ in range(n)]


def test_profile_shapes():
    assert tensorrt.profile_shapes((-1, 224, 224, 3), 1, 32) == ((1, 224, 224, 3), (1, 224, 224, 3), (32, 224, 224, 3))
    assert tensorrt.profile_shapes((-1, 64, 96, 3), 8, 16)[1] == (8, 64, 96, 3)
    assert tensorrt.profile_shapes((4, 64, 96, 3)) == ((4, 64, 96, 3),) * 3
    with pytest.raises(ValueError, match="Only the batch may be dynamic.*-1, -1, 3"):
        tensorrt.profile_shapes((1, -1, -1, 3))
    with pytest.raises(ValueError, match=r"1 <= opt_batch_size \(64\) <= max_batch_size \(32\)"):
        tensorrt.profile_shapes((-1, 8, 8, 3), 64, 32)


@pytest.mark.parametrize("version,flags", [("8.6.0", 1), ("10.3.0", 0), ("10.16.1.11", 0), ("11.4.0.106", 0)])
def test_network_is_explicit_batch_on_every_version(monkeypatch, tmp_path, onnx_file, version, flags):
    # 8.6's ONNX parser needs EXPLICIT_BATCH; 10 ignores it; 11 has no such flag (the stand-in neither)
    calls, plan = build(monkeypatch, tmp_path, onnx_file, version=version, precision="fp32")
    assert ("create_network", flags) in calls
    assert plan.read_bytes() == b"engine-bytes"


def test_dynamic_batch_gets_an_optimization_profile(monkeypatch, tmp_path, onnx_file):
    calls, _ = build(monkeypatch, tmp_path, onnx_file, precision="fp16", opt_batch_size=8, max_batch_size=16)
    assert ("profile", "images", ((1, 224, 224, 3), (8, 224, 224, 3), (16, 224, 224, 3))) in calls
    assert ("add_profile",) in calls


@pytest.mark.parametrize("version", ["8.6.0", "10.3.0"])
@pytest.mark.parametrize(
    "precision,expected,absent",
    [
        ("fp32", [("clear_flag", "TF32")], [("set_flag", "FP16"), ("set_flag", "INT8")]),
        ("fp16", [("set_flag", "FP16")], [("clear_flag", "TF32"), ("set_flag", "INT8")]),
    ],
)
def test_precision_flags(monkeypatch, tmp_path, onnx_file, version, precision, expected, absent):
    calls, _ = build(
        monkeypatch, tmp_path, onnx_file, version=version, precision=precision, optimization_level=1
    )
    assert all(c in calls for c in expected), calls
    assert not any(c in calls for c in absent), calls
    assert ("config", "builder_optimization_level", 1) in calls
    assert ("workspace", 4 << 30) in calls


@pytest.mark.parametrize("version", ["8.6.0", "10.16.1.11"])
def test_int8_is_calibrated_on_tensorrt_8_and_10(monkeypatch, tmp_path, onnx_file, version):
    runtime = install_cuda(monkeypatch)
    batches = calibration_batches()
    calls, _ = build(monkeypatch, tmp_path, onnx_file, version=version, precision="int8",
                     calibration_batches=batches)
    assert ("set_flag", "FP16") in calls and ("set_flag", "INT8") in calls
    assert ("calibration_profile",) in calls
    calibrator = next(c[2] for c in calls if c[:2] == ("config", "int8_calibrator"))
    assert isinstance(calibrator, sys.modules["tensorrt"].IInt8EntropyCalibrator2)
    assert calibrator.get_batch_size() == 2
    for batch in batches:
        (pointer,) = calibrator.get_batch(["images"])
        np.testing.assert_array_equal(_device(pointer, np.float32, batch.shape), batch)
    assert calibrator.get_batch(["images"]) is None
    assert [c[0] for c in runtime.calls] == ["cudaMalloc", "cudaMemcpy", "cudaMemcpy"]


@pytest.mark.parametrize("version", ["8.6.0", "10.16.1.11", "11.4.0.106"])
def test_qdq_onnx_builds_int8_without_calibration(monkeypatch, tmp_path, onnx_file, version):
    """An explicitly quantized ONNX (Q/DQ nodes, e.g. from NVIDIA ModelOpt)
    needs no calibrator on any version; 8.6 and 10 still take the INT8 flag."""
    calls, plan = build(monkeypatch, tmp_path, onnx_file, version=version, precision="int8", declares="int8")
    assert plan.read_bytes() == b"engine-bytes"
    assert not any(c[:2] == ("config", "int8_calibrator") for c in calls)
    weak = version != "11.4.0.106"
    assert (("set_flag", "INT8") in calls) == weak and (("set_flag", "FP16") in calls) == weak


def test_tensorrt_11_builds_fp32_without_precision_flags(monkeypatch, tmp_path, onnx_file):
    calls, plan = build(monkeypatch, tmp_path, onnx_file, version="11.4.0.106", precision="fp32")
    assert plan.read_bytes() == b"engine-bytes"
    assert ("clear_flag", "TF32") in calls  # TF32 is still a builder flag in 11
    assert not any(c[0] == "set_flag" for c in calls), calls


def test_tensorrt_11_builds_fp16_from_an_fp16_onnx(monkeypatch, tmp_path, onnx_file):
    calls, plan = build(
        monkeypatch, tmp_path, onnx_file, version="11.0.0.114", precision="fp16", declares="fp16"
    )
    assert plan.read_bytes() == b"engine-bytes"
    assert not any(c[0] in ("set_flag", "clear_flag") for c in calls), calls


def test_tensorrt_11_says_how_to_make_an_fp16_onnx(monkeypatch, tmp_path, onnx_file):
    with pytest.raises(ValueError) as error:
        build(monkeypatch, tmp_path, onnx_file, version="11.4.0.106", precision="fp16")
    message = str(error.value)
    assert "TensorRT 11.4.0.106 has no FP16 builder flag" in message
    assert f"{onnx_file} is FP32 throughout" in message
    stem = str(onnx_file)[: -len(".onnx")]
    assert (f"python -m modelopt.onnx.autocast --onnx_path {onnx_file} --output_path {stem}_fp16.onnx "
            "--keep_io_types") in message
    assert "tensorrt-cu12<11" in message
    assert not (tmp_path / "model.plan").exists()


def test_tensorrt_11_says_how_to_make_a_quantized_onnx(monkeypatch, tmp_path, onnx_file):
    with pytest.raises(ValueError) as error:  # calibration data cannot help: no calibrators in 11
        build(monkeypatch, tmp_path, onnx_file, version="11.4.0.106", precision="int8",
              calibration_batches=calibration_batches())
    message = str(error.value)
    assert "TensorRT 11.4.0.106 has no INT8 calibration" in message and "has no Q/DQ nodes" in message
    stem = str(onnx_file)[: -len(".onnx")]
    assert (f"python -m modelopt.onnx.quantization --onnx_path {onnx_file} --quantize_mode int8 "
            f"--calibration_data_path calib.npy --output_path {stem}_int8.onnx") in message
    assert not any(c[:2] == ("config", "int8_calibrator") for c in sys.modules["tensorrt"].calls)


def test_typed_onnx_precision_mismatches(monkeypatch, tmp_path, onnx_file):
    for version in ("10.3.0", "11.4.0.106"):  # a Q/DQ ONNX is INT8 everywhere
        with pytest.raises(ValueError, match="holds Q/DQ nodes .*precision='int8'"):
            build(monkeypatch, tmp_path, onnx_file, version=version, precision="fp16", declares="int8")
    with pytest.raises(ValueError, match="declares FP16 tensors.*would not be FP32"):  # strongly typed
        build(monkeypatch, tmp_path, onnx_file, version="11.4.0.106", precision="fp32", declares="fp16")
    calls, _ = build(monkeypatch, tmp_path, onnx_file, version="10.3.0", precision="fp16", declares="fp16")
    assert ("set_flag", "FP16") in calls  # weakly typed 10.x takes an FP16 ONNX with the flag


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


@pytest.mark.parametrize("layout", ["bindings", "cudart", "both"])
def test_cuda_python_runtime_module_of_every_layout(monkeypatch, layout):
    runtime = install_cuda(monkeypatch, layout)
    assert tensorrt._cudart() is runtime  # cuda.bindings.runtime where it exists
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.4.0.106", (1, 8, 8, 3)))
    assert tensorrt._has_cuda_device()


@pytest.mark.parametrize("version", ["8.6.0", "10.16.1.11", "11.4.0.106"])
@pytest.mark.parametrize("input_dtype", ["FLOAT", "HALF"])
def test_engine_runner_binds_tensor_addresses(monkeypatch, tmp_path, version, input_dtype):
    runtime = install_cuda(monkeypatch)
    trt = fake_tensorrt(version, (-1, 4, 4, 3), input_dtype=input_dtype)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine-bytes")
    runner = tensorrt.EngineRunner(plan)
    assert runner.batch is None and runner.input_dtype == trt.nptype(input_dtype)
    images = np.random.default_rng(1).uniform(-1, 1, (3, 4, 4, 3)).astype(np.float32)
    (logits,) = runner(images)
    sent = images.astype(trt.nptype(input_dtype)).astype(np.float32)
    expected = sent.reshape(3, -1).sum(axis=1, keepdims=True) * np.arange(1, 6, dtype=np.float32)
    assert logits.dtype == np.float32 and logits.shape == (3, 5)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)
    assert ("set_input_shape", "images", (3, 4, 4, 3)) in trt.calls
    assert {c[1] for c in trt.calls if c[0] == "set_tensor_address"} == {"images", "logits"}
    assert ("execute_async_v3", 7) in trt.calls
    itemsize = np.dtype(trt.nptype(input_dtype)).itemsize
    assert ("cudaMalloc", 3 * 4 * 4 * 3 * itemsize) in runtime.calls
    runner(images)  # same shape: the buffers are reused
    assert sum(c[0] == "cudaMalloc" for c in runtime.calls) == 2
    with pytest.raises(ValueError, match=r"this engine takes \(batch, 4, 4, 3\)"):
        runner(images[:, :2])
    del runner
    assert ("cudaStreamDestroy", 7) in runtime.calls


def test_engine_runner_reports_an_engine_it_cannot_load(monkeypatch, tmp_path):
    install_cuda(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.4.0.106", (-1, 4, 4, 3)))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"other bytes")
    with pytest.raises(RuntimeError, match="could not load the engine"):
        tensorrt.EngineRunner(plan)


def test_check_tool_picks_the_typed_onnx_of_a_precision(tmp_path):
    tensorrt_check = _import_check_tool()
    (tmp_path / "model.onnx").write_bytes(b"fp32")
    (tmp_path / "model_fp16.onnx").write_bytes(b"fp16")
    assert tensorrt_check.precision_onnx(str(tmp_path), "fp16") == str(tmp_path / "model_fp16.onnx")
    assert tensorrt_check.precision_onnx(str(tmp_path), "int8") == str(tmp_path / "model.onnx")
    assert tensorrt_check.precision_onnx(str(tmp_path), "fp32") == str(tmp_path / "model.onnx")


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


def _import_check_tool():
    sys.path.insert(0, TOOLS)
    try:
        import tensorrt_check
    finally:
        sys.path.remove(TOOLS)
    return tensorrt_check


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_check_tool_runs_every_precision_it_can_build(monkeypatch, tmp_path, capsys, version):
    """`tensorrt_check.py check` on stand-ins: FP32 is built, run and held to
    its bar; on TensorRT 11, FP16 and INT8 from the FP32 ONNX are reported
    with the ModelOpt commands and the check goes on (exit 1)."""
    import json

    tool = _import_check_tool()
    runtime = install_cuda(monkeypatch)
    runtime.cudaGetDeviceProperties = lambda device: (0, types.SimpleNamespace(name=b"Stand-in GPU"))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, (-1, 8, 8, 3)))
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    logits = images.reshape(4, -1).sum(axis=1, keepdims=True) * np.arange(1, 6, dtype=np.float32)
    calibration = rng.uniform(-1, 1, (16, 8, 8, 3)).astype(np.float16)
    np.savez(tmp_path / "reference.npz", images=images, logits=logits, calibration=calibration, variant="small")
    (tmp_path / "model.onnx").write_bytes(b"stand-in")
    report = tmp_path / "report.json"
    code = tool.main(["check", "--dir", str(tmp_path), "--repeats", "1", "--json", str(report)])
    rows = {row["precision"]: row for row in json.loads(report.read_text())["rows"]}
    assert rows["fp32"]["meets"] and rows["fp32"]["onnx"] == "model.onnx"
    assert rows["fp32"]["relative_error"] == 0
    if version.startswith("11"):
        assert code == 1
        assert "modelopt.onnx.autocast" in rows["fp16"]["error"]
        assert "modelopt.onnx.quantization" in rows["int8"]["error"]
        assert "fp16: not built from model.onnx: TensorRT 11.4.0.106 has no FP16" in capsys.readouterr().out
    else:  # built (the stand-in computes FP32 for every precision)
        assert all("error" not in rows[p] for p in ("fp16", "int8")), rows
