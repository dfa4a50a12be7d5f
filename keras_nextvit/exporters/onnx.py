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
        fn, input_signature=[input_spec(model, batch_size)], opset=opset
    )
    fuse_head_convs(proto)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return proto


def fuse_head_convs(proto):
    """Rewrite MHCA's per-head convolutions into one grouped ``Conv``.

    The Keras graph computes MHCA head by head (see ``MHCA._grouped_conv``),
    which tf2onnx emits as ``Split -> G x (Transpose -> Conv) -> Concat``.
    ONNX Runtime and TensorRT run one grouped ``Conv`` faster, with a single
    layout transpose. Same weights, same numbers; returns how many it fused.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {init.name: init for init in graph.initializer}
    remove, fused = set(), 0
    new_nodes = {}  # id(concat) -> replacement nodes

    for split in [n for n in graph.node if n.op_type == "Split"]:
        heads = []
        for out in split.output:
            users = consumers.get(out, [])
            if len(users) != 1 or users[0].op_type != "Transpose":
                break
            transpose = users[0]
            convs = consumers.get(transpose.output[0], [])
            if len(convs) != 1 or convs[0].op_type != "Conv" or len(convs[0].input) != 2:
                break
            heads.append((transpose, convs[0]))
        else:
            concats = {id(c) for _, conv in heads for c in consumers.get(conv.output[0], [])}
            concat = consumers.get(heads[0][1].output[0], [None])[0]
            perm = [list(a.ints) for a in heads[0][0].attribute if a.name == "perm"]
            axis = [a.i for a in getattr(concat, "attribute", []) if a.name == "axis"]
            if (
                len(concats) != 1
                or concat is None
                or concat.op_type != "Concat"
                or list(concat.input) != [conv.output[0] for _, conv in heads]
                or perm != [[0, 3, 1, 2]]
                or axis != [1]
                or any(conv.input[1] not in weights for _, conv in heads)
            ):
                continue
            kernels = [numpy_helper.to_array(weights[conv.input[1]]) for _, conv in heads]
            kernel_name = heads[0][1].input[1] + "_grouped"
            graph.initializer.append(numpy_helper.from_array(np.concatenate(kernels, 0), kernel_name))
            transpose = helper.make_node(
                "Transpose", [split.input[0]], [kernel_name + "_nchw"], perm=[0, 3, 1, 2]
            )
            attributes = {a.name: helper.get_attribute_value(a) for a in heads[0][1].attribute}
            attributes["group"] = len(heads)
            conv = helper.make_node(
                "Conv", [transpose.output[0], kernel_name], [concat.output[0]], **attributes
            )
            new_nodes[id(concat)] = [transpose, conv]
            remove.add(id(split))
            for head_transpose, head_conv in heads:
                remove.update((id(head_transpose), id(head_conv)))
            fused += 1

    if fused:
        nodes = []
        for node in graph.node:
            if id(node) in new_nodes:
                nodes.extend(new_nodes[id(node)])
            elif id(node) not in remove:
                nodes.append(node)
        used = {name for node in nodes for name in node.input}
        keep = [init for init in graph.initializer if init.name in used]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return fused


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
