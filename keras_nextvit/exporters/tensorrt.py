"""TensorRT: which route applies here, and the ONNX -> engine build.

Two routes, as the upstream repository deploys:

* **TF-TRT** (``tf.experimental.tensorrt``), where the installed TensorFlow
  still ships it (it was removed after TF 2.17) and a GPU is visible;
* **ONNX -> engine** with the ``tensorrt`` Python package (what ``trtexec``
  does): the ONNX export of this package, parsed and built with FP32, FP16
  or INT8 (calibrated) precision.

Where neither TensorRT nor a GPU is present, :func:`tensorrt_route` raises
:class:`TensorRTUnavailable` saying what is missing and which route would
apply.
"""

import importlib.util

PRECISIONS = {"none": "fp32", "float16": "fp16", "int8": "int8"}


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot run on this machine; the message says why."""


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
        from cuda import cudart  # noqa: F401
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
        "Route: on a machine with an NVIDIA GPU, `pip install tensorrt` and export again "
        "(ONNX -> TensorRT engine), or export format='onnx' here and build the engine there "
        "with `trtexec --onnx=model.onnx --saveEngine=model.plan --fp16`."
    )


def build_engine(onnx_path, engine_path, precision="fp16", calibration_batches=None, workspace_gib=4):
    """Build a serialized TensorRT engine from an ONNX file (needs a GPU)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        if not parser.parse(handle.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT could not parse the ONNX model: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        if calibration_batches is None:
            raise ValueError("INT8 TensorRT engines need representative data to calibrate on.")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, calibration_batches)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above).")
    with open(engine_path, "wb") as handle:
        handle.write(engine)
    return engine_path


def _calibrator(trt, batches):
    import numpy as np
    from cuda import cudart

    batches = [np.ascontiguousarray(b, np.float32) for b in batches]

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.index = 0
            _, self.device = cudart.cudaMalloc(batches[0].nbytes)

        def get_batch_size(self):
            return batches[0].shape[0]

        def get_batch(self, names):
            if self.index >= len(batches):
                return None
            batch = batches[self.index]
            cudart.cudaMemcpy(
                self.device, batch.ctypes.data, batch.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            )
            self.index += 1
            return [int(self.device)]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            return None

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
    """Runs a serialized TensorRT engine (one input, outputs in engine order)."""

    def __init__(self, engine_path):
        import numpy as np
        import tensorrt as trt
        from cuda import cudart

        self.np, self.cudart = np, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as handle:
            self.engine = runtime.deserialize_cuda_engine(handle.read())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def __call__(self, images):
        np, cudart = self.np, self.cudart
        images = np.ascontiguousarray(images, np.float32)
        self.context.set_input_shape(self.inputs[0], images.shape)
        buffers, results = [], []
        _, src = cudart.cudaMalloc(images.nbytes)
        cudart.cudaMemcpy(src, images.ctypes.data, images.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
        self.context.set_tensor_address(self.inputs[0], int(src))
        buffers.append(src)
        for name in self.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), np.float32)
            _, dst = cudart.cudaMalloc(out.nbytes)
            self.context.set_tensor_address(name, int(dst))
            buffers.append(dst)
            results.append(out)
        self.context.execute_async_v3(0)
        cudart.cudaStreamSynchronize(0)
        for out, dst in zip(results, buffers[1:]):
            cudart.cudaMemcpy(out.ctypes.data, dst, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        for buffer in buffers:
            cudart.cudaFree(buffer)
        return results
