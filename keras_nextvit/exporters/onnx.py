"""ONNX export through tf2onnx, checked and run with ONNX Runtime.

Keras' own ONNX export (TF 2.21 / Keras 3.15) fails on grouped 3x3
convolutions; tf2onnx converts the model's ``tf.function`` directly. The
exported graph is checked with ``onnx.checker`` and must contain only
operators TensorRT's ONNX parser accepts (so no BatchNormalization once
merged).
"""

import numpy as np

from .saved_model import input_spec, serving_fn
from .verify import run_in_batches

DEFAULT_OPSET = 17

# Operators of the merged Next-ViT graph that TensorRT's ONNX parser supports.
TENSORRT_OPS = frozenset(
    """Add AveragePool Cast Concat Conv Div Flatten Gather GlobalAveragePool
    GlobalMaxPool Identity MatMul Gemm MaxPool Mul Pad ReduceMax ReduceMean
    Relu Reshape Shape Slice Softmax Split Squeeze Sub Transpose Unsqueeze
    Sqrt Reciprocal ReduceProd ReduceSum ConstantOfShape Expand Range""".split()
)


def export_onnx(model, path, batch_size=1, opset=DEFAULT_OPSET):
    """Write ``model`` as ONNX at ``path``; returns the ``onnx.ModelProto``."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}.")
    serve = serving_fn(model)
    fn = tf.function(lambda images: tuple(serve(images)))
    proto, _ = tf2onnx.convert.from_function(
        fn, input_signature=[input_spec(model, batch_size)], opset=opset, output_path=str(path)
    )
    onnx.checker.check_model(str(path))
    return proto


def operator_types(proto):
    return sorted({node.op_type for node in proto.graph.node})


def unsupported_by_tensorrt(proto):
    return sorted(set(operator_types(proto)) - TENSORRT_OPS)


class ONNXRunner:
    """Runs an ``.onnx`` model with ONNX Runtime on NumPy batches."""

    def __init__(self, path, threads=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("Running ONNX models needs onnxruntime (pip install onnxruntime).") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.batch = shape[0] if isinstance(shape[0], int) else None

    def _run(self, images):
        return self.session.run(None, {self.input_name: images})

    def __call__(self, images):
        return run_in_batches(self._run, np.asarray(images, np.float32), self.batch)
