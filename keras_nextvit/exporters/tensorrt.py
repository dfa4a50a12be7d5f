"""TensorRT: which route applies here, and the ONNX -> engine build.

Two routes, as the upstream repository deploys:

* **TF-TRT** (``tf.experimental.tensorrt``), where the installed TensorFlow
  still ships it (it was removed after TF 2.17) and a GPU is visible;
* **ONNX -> engine** with the ``tensorrt`` Python package (what ``trtexec``
  does): the ONNX export of this package, parsed and built with FP32, FP16
  or INT8 precision.

Where neither TensorRT nor a GPU is present, :func:`tensorrt_route` raises
:class:`TensorRTUnavailable` saying what is missing and which route would
apply.

One code path serves TensorRT 8.6, 10.x and 11.x; what differs is detected
on the installed module, not assumed:

* 8.6's ONNX parser needs the ``EXPLICIT_BATCH`` network flag; 10.x ignores
  it (networks are always explicit-batch) and 11.x has removed it.
* Up to 10.x networks are *weakly typed*: FP16 and INT8 are builder flags
  (``BuilderFlag.FP16`` / ``INT8``), INT8 calibrated with
  ``IInt8EntropyCalibrator2`` (deprecated since 10.1). 11.x removed those
  flags and the calibrators: every network is *strongly typed* and computes
  in the types its ONNX declares, so an FP16 engine needs an FP16 ONNX and
  an INT8 engine an ONNX with Q/DQ nodes (explicit quantization). NVIDIA
  ModelOpt makes both from the FP32 export; :func:`build_engine` names the
  commands when such a file is needed. Typed ONNX files build on 8.6 and
  10.x as well.
* Running an engine uses the tensor API of 8.5 and later on every version
  (``num_io_tensors`` / ``get_tensor_name``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``); the ``binding`` API is gone
  in 10.x.
* cuda-python's runtime module is ``cuda.bindings.runtime`` from 12.6.2 on,
  and the only one in 13.x (CUDA 13, ``tensorrt-cu13``); older releases have
  ``cuda.cudart``. :func:`_cudart` takes whichever is there.
"""

import importlib.util
import os

from .verify import run_in_batches

PRECISIONS = {"none": "fp32", "float16": "fp16", "int8": "int8"}


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot run on this machine; the message says why."""


def _cudart():
    """cuda-python's CUDA runtime bindings, from either module layout."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python <= 12.6.0 (deprecated in 12.x, gone in 13)
    return runtime


def _has_tf_trt():
    try:
        from tensorflow.python.compiler.tensorrt import trt_convert  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    try:
        from tensorflow.python.compiler.tensorrt.utils import is_linked_tensorrt_version

        return bool(is_linked_tensorrt_version())
    except Exception:  # noqa: BLE001
        return False


def _gpus():
    try:
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    except Exception:  # noqa: BLE001
        return []


def _has_cuda_device():
    try:
        import tensorrt  # noqa: F401

        cudart = _cudart()
    except Exception:  # noqa: BLE001
        return bool(_gpus())
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


def tensorrt_route():
    """``"tf-trt"`` or ``"onnx-tensorrt"``, or raise :class:`TensorRTUnavailable`."""
    import tensorflow as tf

    tf_trt = _has_tf_trt()
    trt_package = importlib.util.find_spec("tensorrt") is not None
    gpu = bool(_gpus()) or (trt_package and _has_cuda_device())
    if tf_trt and gpu:
        return "tf-trt"
    if trt_package and gpu:
        return "onnx-tensorrt"
    missing = []
    if not gpu:
        missing.append("no CUDA GPU is visible")
    if not trt_package:
        missing.append("the `tensorrt` Python package is not installed")
    if not tf_trt:
        missing.append(f"TensorFlow {tf.__version__} has no TF-TRT (removed after 2.17)")
    raise TensorRTUnavailable(
        "TensorRT export is not possible here: " + "; ".join(missing) + ". "
        "Route: on a machine with an NVIDIA GPU, `pip install tensorrt-cu12` (or tensorrt-cu13, "
        "for CUDA 13) and export again (ONNX -> TensorRT engine), or export format='onnx' here and "
        "build the engine there with `trtexec --onnx=model.onnx --saveEngine=model.plan --fp16` "
        "(TensorRT <= 10; TensorRT 11 has no --fp16: convert the ONNX to FP16 with NVIDIA ModelOpt, "
        "`python -m modelopt.onnx.autocast --onnx_path model.onnx --keep_io_types`, and build that)."
    )


def _major_version(trt):
    return int(trt.__version__.split(".")[0])


def _check_cuda(result, what):
    """``cuda-python`` calls return ``(error, *values)``; raise on an error."""
    error, *values = result
    if int(error) != 0:
        raise RuntimeError(f"CUDA {what} failed: {error}.")
    return values[0] if len(values) == 1 else values


def profile_shapes(shape, opt_batch_size=1, max_batch_size=32):
    """``(min, opt, max)`` shapes of an input whose batch may be dynamic (-1).

    TensorRT needs an optimization profile for every dynamic dimension; the
    exports here leave at most the batch dynamic (the image size is fixed).
    """
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape[1:]):
        raise ValueError(f"Only the batch may be dynamic in a TensorRT input, got shape {shape}.")
    if shape[0] >= 0:
        return shape, shape, shape
    if not 1 <= opt_batch_size <= max_batch_size:
        raise ValueError(f"Need 1 <= opt_batch_size ({opt_batch_size}) <= max_batch_size ({max_batch_size}).")
    rest = shape[1:]
    return (1, *rest), (opt_batch_size, *rest), (max_batch_size, *rest)


def _weakly_typed(trt):
    """TensorRT <= 10: precisions are builder flags. 11 removed them (strong typing only)."""
    return hasattr(trt.BuilderFlag, "FP16")


def declared_precision(trt, network):
    """The precision a parsed network declares by itself: ``"int8"`` when it
    holds Q/DQ layers (explicit quantization), ``"fp16"`` when a tensor is
    FP16, else ``"fp32"``. Strongly typed TensorRT (11.x) builds exactly this."""
    qdq = {getattr(trt.LayerType, n) for n in ("QUANTIZE", "DEQUANTIZE") if hasattr(trt.LayerType, n)}
    half = trt.DataType.HALF
    fp16 = any(network.get_input(i).dtype == half for i in range(network.num_inputs))
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in qdq:
            return "int8"
        fp16 = fp16 or any(layer.get_output(j).dtype == half for j in range(layer.num_outputs))
    return "fp16" if fp16 else "fp32"


def _precision_error(trt, onnx_path, precision, declared):
    """Why ``precision`` cannot be built from this ONNX, and what to run instead."""
    onnx_path = str(onnx_path)
    stem = os.path.splitext(onnx_path)[0]
    version = trt.__version__
    modelopt = "NVIDIA ModelOpt (`pip install 'nvidia-modelopt[onnx]'`)"
    older = (
        "or build with TensorRT 10 (`pip install 'tensorrt-cu12<11'` or `'tensorrt-cu13<11'`), "
        "whose builder flags make {} from the FP32 ONNX"
    )
    if declared == "int8":
        return (
            f"{onnx_path} holds Q/DQ nodes (an INT8-quantized ONNX): build it with precision='int8', "
            f"or build the unquantized ONNX for precision={precision!r}."
        )
    if precision == "fp16":
        return (
            f"TensorRT {version} has no FP16 builder flag (TensorRT 11 removed it: networks are strongly "
            f"typed and compute in the types the ONNX declares), and {onnx_path} is FP32 throughout. "
            f"Convert it with {modelopt}: `python -m modelopt.onnx.autocast --onnx_path {onnx_path} "
            f"--output_path {stem}_fp16.onnx --keep_io_types`, and build that file with precision='fp16'; "
            + older.format("FP16")
            + "."
        )
    if precision == "int8":
        return (
            f"TensorRT {version} has no INT8 calibration (TensorRT 11 removed BuilderFlag.INT8 and the "
            f"calibrators: INT8 is explicit quantization, Q/DQ nodes in the ONNX), and {onnx_path} has no "
            f"Q/DQ nodes. Quantize it with {modelopt}: save the calibration images as one float32 .npy array "
            f"in the model's input layout (calib.npy), run `python -m modelopt.onnx.quantization --onnx_path "
            f"{onnx_path} --quantize_mode int8 --calibration_data_path calib.npy --output_path "
            f"{stem}_int8.onnx`, and build that file with precision='int8'; "
            + older.format("calibrated INT8")
            + "."
        )
    return (
        f"{onnx_path} declares FP16 tensors, and TensorRT {version} builds strongly typed networks (in the "
        f"types the ONNX declares), so this engine would not be FP32: build it with precision='fp16', or "
        f"build the FP32 ONNX for precision='fp32'."
    )


def build_engine(
    onnx_path,
    engine_path,
    precision="fp16",
    calibration_batches=None,
    workspace_gib=4,
    opt_batch_size=1,
    max_batch_size=32,
    optimization_level=None,
):
    """Build a serialized TensorRT engine from an ONNX file (needs a GPU).

    ``precision``: ``fp32`` (strict: TF32 off, as the Keras model computes),
    ``fp16`` or ``int8`` (with FP16 allowed for the layers INT8 does not
    cover). A dynamic batch gets one optimization profile from 1 to
    ``max_batch_size``, tuned for ``opt_batch_size``.
    ``optimization_level`` (0-5, TensorRT's default 3) trades build time for
    engine speed.

    TensorRT 8.6 and 10.x make FP16 and INT8 from the FP32 export with
    builder flags; INT8 is calibrated on ``calibration_batches`` (NHWC float
    batches) unless the ONNX is already quantized (Q/DQ nodes). TensorRT 11
    has no such flags: the ONNX must declare the precision itself (an FP16 or
    a Q/DQ ONNX, see :func:`declared_precision`), and a mismatch raises a
    ``ValueError`` that says how to make that file.
    """
    import tensorrt as trt

    if precision not in PRECISIONS.values():
        raise ValueError(f"precision must be one of {sorted(set(PRECISIONS.values()))}, got {precision!r}.")
    weak = _weakly_typed(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if _major_version(trt) < 10:  # 8.6's parser needs it; 10 ignores it, 11 has removed it
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        if not parser.parse(handle.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT could not parse the ONNX model: " + "; ".join(errors))
    declared = declared_precision(trt, network)
    if declared != precision and (declared == "int8" or not weak):
        raise ValueError(_precision_error(trt, onnx_path, precision, declared))
    calibrate = weak and precision == "int8" and declared != "int8"
    if calibrate and calibration_batches is None:
        raise ValueError(
            "INT8 TensorRT engines need representative data to calibrate on (or an ONNX with Q/DQ nodes)."
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        profile.set_shape(tensor.name, *profile_shapes(tensor.shape, opt_batch_size, max_batch_size))
    config.add_optimization_profile(profile)
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if weak and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if weak and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if calibrate:  # implicit quantization (TensorRT <= 10)
        config.int8_calibrator = _calibrator(trt, calibration_batches)
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above).")
    with open(engine_path, "wb") as handle:
        handle.write(engine)
    return engine_path


def _calibrator(trt, batches):
    import numpy as np

    cudart = _cudart()
    batches = [np.ascontiguousarray(b, np.float32) for b in batches]
    shapes = {b.shape for b in batches}
    if len(shapes) != 1:
        raise ValueError(f"Calibration batches must all have one shape, got {sorted(shapes)}.")

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.index = 0
            self.device = _check_cuda(cudart.cudaMalloc(batches[0].nbytes), "cudaMalloc")

        def get_batch_size(self):
            return batches[0].shape[0]

        def get_batch(self, names):
            if self.index >= len(batches):
                return None
            batch = batches[self.index]
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            _check_cuda(cudart.cudaMemcpy(self.device, batch.ctypes.data, batch.nbytes, kind), "cudaMemcpy")
            self.index += 1
            return [int(self.device)]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            return None

        def __del__(self):
            cudart.cudaFree(self.device)

    return Calibrator()


def convert_tf_trt(saved_model_dir, output_dir, precision="fp16", calibration_batches=None):
    """TF-TRT: a TensorRT-optimized SavedModel (TensorFlow <= 2.17 with TensorRT)."""
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    converter = trt.TrtGraphConverterV2(
        input_saved_model_dir=str(saved_model_dir),
        precision_mode={"fp32": trt.TrtPrecisionMode.FP32, "fp16": trt.TrtPrecisionMode.FP16,
                        "int8": trt.TrtPrecisionMode.INT8}[precision],
    )
    if precision == "int8":
        if calibration_batches is None:
            raise ValueError("INT8 TF-TRT needs representative data to calibrate on.")
        converter.convert(calibration_input_fn=lambda: ([b] for b in calibration_batches))
    else:
        converter.convert()
    converter.save(str(output_dir))
    return str(output_dir)


class EngineRunner:
    """Runs a serialized TensorRT engine on NumPy NHWC batches.

    Returns the outputs in engine order, as float32. The input goes in the
    engine's input type (FP16 for an ONNX converted to FP16 with its I/O).
    A fixed-batch engine runs larger batches in chunks; device buffers are
    kept per input shape.
    """

    def __init__(self, engine_path):
        import numpy as np
        import tensorrt as trt

        cudart = _cudart()
        self.np, self.trt, self.cudart = np, trt, cudart
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as handle:
            self.engine = self.runtime.deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load the engine {engine_path} (see its log above).")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        if len(self.inputs) != 1:
            raise ValueError(f"EngineRunner runs one-input engines; this one has {self.inputs}.")
        self.input_shape = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.inputs[0])))
        self.batch = self.input_shape[0] if self.input_shape[0] > 0 else None
        self.stream = _check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = {}  # input shape -> (device pointers, host outputs)

    def _allocate(self, shape):
        np, cudart = self.np, self.cudart
        if shape in self._buffers:
            return self._buffers[shape]
        self.context.set_input_shape(self.inputs[0], shape)
        nbytes = int(np.prod(shape)) * self.input_dtype.itemsize
        pointers = [_check_cuda(cudart.cudaMalloc(nbytes), "cudaMalloc")]
        hosts = []
        for name in self.outputs:
            dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
            host = np.empty(tuple(self.context.get_tensor_shape(name)), dtype)
            pointers.append(_check_cuda(cudart.cudaMalloc(max(host.nbytes, 1)), "cudaMalloc"))
            hosts.append(host)
        self._buffers[shape] = (pointers, hosts)
        return pointers, hosts

    def _run(self, images):
        np, cudart = self.np, self.cudart
        images = np.ascontiguousarray(images, self.input_dtype)
        if images.shape[1:] != self.input_shape[1:]:
            raise ValueError(
                f"Input images have shape {images.shape}; this engine takes (batch, "
                f"{', '.join(map(str, self.input_shape[1:]))})."
            )
        pointers, hosts = self._allocate(images.shape)
        self.context.set_input_shape(self.inputs[0], images.shape)
        for name, pointer in zip(self.inputs + self.outputs, pointers):
            self.context.set_tensor_address(name, int(pointer))
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check_cuda(
            cudart.cudaMemcpyAsync(pointers[0], images.ctypes.data, images.nbytes, to_device, self.stream),
            "cudaMemcpyAsync",
        )
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT failed to run the engine (see its log above).")
        for host, pointer in zip(hosts, pointers[1:]):
            _check_cuda(
                cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, to_host, self.stream),
                "cudaMemcpyAsync",
            )
        _check_cuda(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return [host.astype(np.float32) for host in hosts]

    def __call__(self, images):
        return run_in_batches(self._run, self.np.asarray(images, self.np.float32), self.batch)

    def __del__(self):
        for pointers, _ in getattr(self, "_buffers", {}).values():
            for pointer in pointers:
                self.cudart.cudaFree(pointer)
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
