"""ONNX export through tf2onnx, checked and run with ONNX Runtime.

Keras' own ONNX export (TF 2.21 / Keras 3.15) fails on grouped 3x3
convolutions; tf2onnx converts the model's ``tf.function`` directly. The
exported graph is checked with ``onnx.checker`` and must contain only
operators TensorRT's ONNX parser accepts (so no BatchNormalization once
merged).
"""

import contextlib
import gc
import os

import numpy as np

from .saved_model import input_spec, serving_fn
from .verify import run_in_batches, runtime_threads

DEFAULT_OPSET = 17

# Operators of the merged Next-ViT graph that TensorRT's ONNX parser supports.
TENSORRT_OPS = frozenset(
    """Add AveragePool Cast Concat Conv Div Flatten Gather GlobalAveragePool
    GlobalMaxPool Identity MatMul Gemm MaxPool Mul Pad ReduceMax ReduceMean
    Relu Reshape Shape Slice Softmax Split Squeeze Sub Transpose Unsqueeze
    Sqrt Reciprocal ReduceProd ReduceSum ConstantOfShape Expand Range Resize""".split()
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
    with _optimizers_in_place():
        proto, _ = tf2onnx.convert.from_function(
            fn, input_signature=[input_spec(model, batch_size)], opset=opset
        )
    # tf2onnx's graphs are reference cycles that hold copies of the weights;
    # Python collects such cycles in full only when they outnumber a quarter
    # of the long-lived objects, which TensorFlow's many objects make rare.
    # With this and the optimizers in place, Next-ViT-S's conversion (64x96)
    # peaks 5.4 GB above the process's size instead of 7.5, in half the time
    # (tests/test_export.py under tools/suite_profile.py).
    gc.collect()
    fuse_head_convs(proto)
    if pointwise_as_conv(proto):
        proto = cancel_transposes(proto)
        gc.collect()
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return proto


@contextlib.contextmanager
def _optimizers_in_place():
    """tf2onnx's ONNX optimizers, run lean.

    By default tf2onnx deep-copies the whole graph, weights included, before
    each of its optimizers on each pass, so that it can fall back to the
    copy if one fails; the copies are cycles that only the cyclic collector
    frees. Here the optimizers run on the graph itself: one that fails
    raises rather than being skipped.

    And after each optimizer (some 50 per conversion) tf2onnx rewrites every
    node's protobuf from its Python form, which copies every constant, so
    every weight, again: a quarter of Next-ViT-S's conversion. The optimizers
    read and edit the Python form only, and the final model is written from
    it (``Graph.make_graph`` rewrites every node's protobuf first), so here
    an optimizer step skips that rewrite; the graph is the same, node for
    node and weight for weight (``tests/test_export.py``).
    """
    from tf2onnx.optimizer.optimizer_base import GraphOptimizerBase

    def optimize_without_proto_rewrite(self, graph, iteration):
        self.opt_iteration = iteration
        graph = self._optimize(graph)
        graph.delete_unused_nodes(graph.outputs)
        return graph

    key = "TF2ONNX_CATCH_ERRORS"
    before = os.environ.get(key)
    original = GraphOptimizerBase.optimize
    os.environ[key] = "FALSE"
    GraphOptimizerBase.optimize = optimize_without_proto_rewrite
    try:
        yield
    finally:
        GraphOptimizerBase.optimize = original
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def _consumers(graph):
    """tensor name -> the nodes that read it."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _splice(graph, replacements, removed):
    """Rebuild ``graph``'s node list in order: a node whose id is in
    ``replacements`` becomes those nodes, one in ``removed`` goes; then drop
    the initializers no node reads any more."""
    nodes = []
    for node in graph.node:
        if id(node) in replacements:
            nodes.extend(replacements[id(node)])
        elif id(node) not in removed:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)


def fuse_head_convs(proto):
    """Rewrite MHCA's per-head convolutions into one grouped ``Conv``.

    The Keras graph computes MHCA head by head (see ``MHCA._grouped_conv``),
    which tf2onnx emits as ``Split -> G x (Transpose -> Conv) -> Concat``.
    ONNX Runtime and TensorRT run one grouped ``Conv`` faster, with a single
    layout transpose. Same weights, same numbers; returns how many it fused.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    consumers = _consumers(graph)
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
        _splice(graph, new_nodes, remove)
    return fused


def _inferred_shapes(proto):
    """name -> list of dims (None where unknown) for every inferable tensor."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    values = list(inferred.graph.value_info) + list(inferred.graph.input)
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in values
    }


def pointwise_as_conv(proto):
    """Rewrite the 1x1 projections (Keras ``Dense`` on NHWC maps) as 1x1 ``Conv``.

    tf2onnx turns a Dense on a 4-D tensor into ``Reshape -> MatMul [-> Add]
    -> Reshape`` on channels-last data, while every 3x3 convolution runs
    channels-first, so each block pays layout ``Transpose`` nodes between
    the two (70 for Next-ViT-S). Here each such chain becomes
    ``Transpose -> Conv(1x1) -> Transpose``; :func:`cancel_transposes` then
    removes the transposes that meet their inverse, leaving the network
    channels-first from the stem to the head except inside E-MHSA.
    Returns how many chains it rewrote.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    shapes = _inferred_shapes(proto)
    weights = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)

    def constant(name):
        return numpy_helper.to_array(weights[name]) if name in weights else None

    def only_consumer(name, op_type):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    replace, remove = {}, set()
    for matmul in [n for n in graph.node if n.op_type == "MatMul"]:
        flatten = producer.get(matmul.input[0])
        kernel = constant(matmul.input[1])
        if flatten is None or flatten.op_type != "Reshape" or kernel is None or kernel.ndim != 2:
            continue
        if len(consumers[flatten.output[0]]) != 1:
            continue
        x, (c_in, c_out) = flatten.input[0], kernel.shape
        bias, last = None, matmul
        add = only_consumer(matmul.output[0], "Add")
        if add is not None:
            other = constant(next(i for i in add.input if i != matmul.output[0]))
            if other is not None and other.shape == (c_out,):
                bias, last = other, add
        unflatten = only_consumer(last.output[0], "Reshape")
        x_shape, y_shape = shapes.get(x), shapes.get(unflatten.output[0]) if unflatten else None
        if (
            unflatten is None
            or x_shape is None
            or y_shape is None
            or len(x_shape) != 4
            or len(y_shape) != 4
            or x_shape[3] != c_in
            or y_shape[3] != c_out
            or None in x_shape[1:3]
            or x_shape[1:3] != y_shape[1:3]
        ):
            continue
        name = matmul.name + "/pointwise_conv"
        inputs = [name + "/nchw", name + "/kernel"]
        graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(kernel.T[:, :, None, None]), inputs[1])
        )
        if bias is not None:
            inputs.append(name + "/bias")
            graph.initializer.append(numpy_helper.from_array(bias, inputs[2]))
        replace[id(unflatten)] = [
            helper.make_node("Transpose", [x], [inputs[0]], perm=[0, 3, 1, 2], name=name + "/to_nchw"),
            helper.make_node("Conv", inputs, [name + "/out"], kernel_shape=[1, 1], name=name),
            helper.make_node(
                "Transpose", [name + "/out"], [unflatten.output[0]], perm=[0, 2, 3, 1], name=name + "/to_nhwc"
            ),
        ]
        remove.update((id(flatten), id(matmul), id(last)))

    if replace:
        _splice(graph, replace, remove)
        del graph.value_info[:]  # stale after the rewrite; recomputed on load
    return len(replace)


def cancel_transposes(proto):
    """tf2onnx's graph optimizers (transpose push-down and cancellation,
    constant folding, identity removal) over an ONNX model; returns the new
    model."""
    from tf2onnx.graph import GraphUtil

    with _optimizers_in_place():
        return GraphUtil.optimize_model_proto(proto, catch_errors=False)


def operator_types(proto):
    return sorted({node.op_type for node in proto.graph.node})


def unsupported_by_tensorrt(proto):
    return sorted(set(operator_types(proto)) - TENSORRT_OPS)


def ort_session(path, threads=None):
    """An ONNX Runtime CPU session for ``path`` (``threads``: intra-op
    threads; default :func:`~.verify.runtime_threads`)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("Running ONNX models needs onnxruntime (pip install onnxruntime).") from None
    options = ort.SessionOptions()
    threads = runtime_threads(threads)
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ONNXRunner:
    """Runs an ``.onnx`` model with ONNX Runtime on NumPy batches."""

    def __init__(self, path, threads=None):
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.batch = shape[0] if isinstance(shape[0], int) else None

    def _run(self, images):
        return self.session.run(None, {self.input_name: images})

    def __call__(self, images):
        return run_in_batches(self._run, np.asarray(images, np.float32), self.batch)
