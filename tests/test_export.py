"""Every export format and quantize mode, verified against the Keras model.

Next-ViT-S with the reference's synthetic weights on the golden 64x96 input
where a test checks what the published model's export holds (sizes, operator
counts, accuracy); a tiny Next-ViT (depths 1, 1, 5, 1) with synthetic weights
where it checks the route (a mode, a signature, an option, an input source),
which converts in a third of the time.
"""

from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
from conftest import TINY, golden, infer, nhwc, synthetic_tiny

import keras_nextvit
from keras_nextvit.exporters import onnx as onnx_export
from keras_nextvit.exporters import tensorrt
from keras_nextvit.exporters import tflite as tflite_export
from keras_nextvit.synthetic import synthetic_input

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="exports go through TensorFlow"
)

SHAPE = (64, 96, 3)


@pytest.fixture(scope="module")
def model(synthetic_small):
    return synthetic_small


@pytest.fixture(scope="module")
def tiny():
    """The tiny Next-ViT at 64x96, its BatchNorms' statistics away from the identity."""
    return synthetic_tiny(SHAPE)


def float_bytes(model):
    return 4 * model.count_params()


@pytest.fixture(scope="module")
def golden_input():
    return nhwc(golden("small_64x96_feat")["input_nchw"])


def inputs(seed, batch):
    return nhwc(synthetic_input(seed, (batch, 3, *SHAPE[:2])))


@pytest.mark.parametrize("fmt,suffix", [("saved_model", ""), ("tflite", ".tflite")])
@pytest.mark.slow
def test_float_exports_match_keras_on_golden_input(model, golden_input, tmp_path, fmt, suffix):
    report = keras_nextvit.export(
        model, tmp_path / f"model{suffix}", format=fmt, verification_data=golden_input
    )
    check = report.output("logits")
    assert check.max_abs_error <= 1e-4 * check.max_abs_reference, str(report)
    assert check.top1_agreement == 1.0
    assert report.file_size_bytes > 100 * 2**20  # 31.8M float32 weights
    assert report.latency_ms > 0 and report.keras_latency_ms > 0
    assert "max abs error" in str(report)


@pytest.mark.slow
def test_onnx_graph_is_merged_and_tensorrt_parsable(model, golden_input, tmp_path):
    """The ONNX float export (dynamic batch) on the golden input and two more,
    and the graph it holds. The fixed-batch path: the unmerged test below."""
    path = tmp_path / "model.onnx"
    images = np.concatenate([golden_input, inputs(5, 2)])
    report = keras_nextvit.export(model, path, format="onnx", batch_size=None, verification_data=images)
    check = report.output("logits")
    assert check.max_abs_error <= 1e-4 * check.max_abs_reference, str(report)
    assert check.top1_agreement == 1.0 and check.cosine_input_dependent > 0.9999, str(report)
    assert report.file_size_bytes > 100 * 2**20
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 17
    ops = onnx_export.operator_types(proto)
    assert "BatchNormalization" not in ops and "Split" not in ops
    # MHCA's per-head convs are fused back into one grouped Conv per MHCA (20)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    grouped = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(grouped) == 20
    groups = {a.i for n in grouped for a in n.attribute if a.name == "group"}
    assert groups == {2, 3, 4, 6, 8, 12, 24}  # channels / 32 of every MHCA
    # 1x1 projections on feature maps are 1x1 Convs (channels-first like the
    # 3x3 ones): the MatMuls left are E-MHSA's, on tokens (q, k, v, proj and
    # the two attention products in each of the 4 NTBs), and the classifier.
    pointwise = [n for n in convs if [list(a.ints) for a in n.attribute if a.name == "kernel_shape"] == [[1, 1]]]
    assert len(pointwise) == 69
    assert sum(n.op_type == "MatMul" for n in proto.graph.node) == 4 * 6 + 1
    # layout transposes only where E-MHSA goes to tokens and back (70 before
    # the 1x1 rewrite; tools/benchmark.py shows what that costs)
    assert sum(n.op_type == "Transpose" for n in proto.graph.node) <= 32
    assert onnx_export.unsupported_by_tensorrt(proto) == []
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0  # dynamic batch


@pytest.mark.slow
def test_unmerged_onnx_keeps_batchnorm_math(tiny, tmp_path):
    path = tmp_path / "raw.onnx"
    report = keras_nextvit.export(tiny, path, format="onnx", merge_bn=False, verification_data=inputs(6, 1))
    assert report.output().relative_error <= 1e-4


def _canonical_graph(proto):
    """An ONNX graph without its names: each node's operator, attributes and
    inputs, an input named by the node output it is (or its initializer's
    contents). tf2onnx numbers the names it makes up from a process-wide
    counter, so two conversions in one process differ in names only."""
    import hashlib

    graph = proto.graph
    names = {x.name: f"input {i}" for i, x in enumerate(graph.input)}
    for tensor in graph.initializer:
        unnamed = onnx.TensorProto()
        unnamed.CopyFrom(tensor)
        unnamed.name = ""
        names[tensor.name] = hashlib.sha1(unnamed.SerializeToString()).hexdigest()
    for k, node in enumerate(graph.node):
        names.update({name: f"node {k} output {j}" for j, name in enumerate(node.output)})
    nodes = []
    for node in graph.node:
        attributes = []
        for attribute in node.attribute:
            unnamed = onnx.AttributeProto()
            unnamed.CopyFrom(attribute)
            if unnamed.HasField("t"):
                unnamed.t.name = ""
            attributes.append(unnamed.SerializeToString())
        nodes.append((node.op_type, node.domain, [names[i] for i in node.input], attributes))
    return nodes, [names[o.name] for o in graph.output]


@pytest.mark.slow
def test_lean_onnx_optimizers_write_the_same_graph(tiny, tmp_path, monkeypatch):
    """export_onnx runs tf2onnx's optimizers without rewriting every node's
    protobuf after each of them (onnx._optimizers_in_place): the graph is
    the one tf2onnx's own loop writes, node for node and weight for weight."""
    import contextlib

    from tf2onnx.optimizer.optimizer_base import GraphOptimizerBase

    @contextlib.contextmanager
    def tf2onnx_loop():  # the in-place part only: tf2onnx's own optimize
        with monkeypatch.context() as patch:
            patch.setenv("TF2ONNX_CATCH_ERRORS", "FALSE")
            yield

    deploy = keras_nextvit.merge_batchnorm(tiny)
    optimize = GraphOptimizerBase.optimize
    lean = onnx_export.export_onnx(deploy, tmp_path / "lean.onnx")
    assert GraphOptimizerBase.optimize is optimize  # restored after
    with monkeypatch.context() as patch:
        patch.setattr(onnx_export, "_optimizers_in_place", tf2onnx_loop)
        plain = onnx_export.export_onnx(deploy, tmp_path / "plain.onnx")
    assert len(lean.graph.node) == len(plain.graph.node) > 100
    assert _canonical_graph(lean) == _canonical_graph(plain)
    changed = onnx.ModelProto()  # one weight's last bit flipped: the comparison sees it
    changed.CopyFrom(lean)
    weight = max(changed.graph.initializer, key=lambda t: len(t.raw_data))
    weight.raw_data = weight.raw_data[:-1] + bytes([weight.raw_data[-1] ^ 1])
    assert _canonical_graph(changed) != _canonical_graph(lean)


@pytest.mark.slow
def test_saved_model_uint8_signature(tiny, tmp_path):
    import tensorflow as tf

    path = tmp_path / "sm_uint8"
    report = keras_nextvit.export(tiny, path, format="saved_model", uint8_input=True, batch_size=None)
    assert report.output().relative_error <= 1e-4
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 64, 96, 3]
    image = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    served = signature(images=tf.constant(image))["logits"].numpy()
    expected = infer(tiny, keras_nextvit.preprocess_input(image))
    np.testing.assert_allclose(served, expected, atol=1e-4 * np.abs(expected).max())


def _op_counts(path):
    from ai_edge_litert.interpreter import Interpreter

    counts = {}
    for op in Interpreter(model_path=str(path))._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


def test_mlp_slices_for_xnnpack():
    from keras_nextvit.exporters.tflite import MLP_CHUNK_BYTES, mlp_hidden_chunks

    # Next-ViT's MLPs (input units, hidden units): stages 1-2 fit 1 MiB whole,
    # stage 3's (1.7 and 2 MiB) run in halves, stage 4's (6.75, 8 MiB) in eighths.
    shapes = [(96, 288), (192, 576), (384, 1152), (512, 1024), (768, 2304), (1024, 2048)]
    assert [mlp_hidden_chunks(*s) for s in shapes] == [1, 1, 2, 2, 8, 8]
    for units, hidden in shapes:
        width = hidden // mlp_hidden_chunks(units, hidden)
        assert width % 16 == 0 and units * width * 4 <= MLP_CHUNK_BYTES
    assert mlp_hidden_chunks(384, 1152, budget_bytes=4 * 2**20) == 1
    assert mlp_hidden_chunks(100, 8) == 1  # no width of 16: whole
    assert mlp_hidden_chunks(384, 1152, budget_bytes=1024) == 72  # none fits: the finest, width 16
    for bad in (0, -1, "1MiB", True):
        with pytest.raises(ValueError, match=r"mlp_chunk_bytes must be a positive number of bytes"):
            mlp_hidden_chunks(384, 1152, budget_bytes=bad)


@pytest.mark.slow
def test_float_tflite_runs_mlps_in_slices(tmp_path):
    """Float TFLite models get the sliced MLPs (more FULLY_CONNECTED ops, same
    numbers); quantized ones, and the Keras model after, keep them whole."""
    from keras_nextvit.exporters import tflite
    from keras_nextvit.exporters.saved_model import output_names

    model = keras_nextvit.merge_batchnorm(keras_nextvit.NextViT(depths=(1, 1, 5, 1), input_shape=(64, 64, 3)))
    mlps = [l for l in model._flatten_layers() if isinstance(l, keras_nextvit.MLP)]
    slices = [tflite.mlp_hidden_chunks(m.fc1.kernel.shape[0], m.hidden_units) for m in mlps]
    assert slices == [1, 1, 2, 2, 2, 2, 2, 8]
    config = model.get_config()
    x = np.random.default_rng(0).uniform(-2, 2, (2, 64, 64, 3)).astype("float32")
    expected = np.asarray(model(x))
    counts = {}
    for name, chunk_bytes in [("sliced", tflite.MLP_CHUNK_BYTES), ("whole", None)]:
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(tflite.convert(model, "none", mlp_chunk_bytes=chunk_bytes))
        counts[name] = _op_counts(path)["FULLY_CONNECTED"]
        got = tflite.TFLiteRunner(path, output_names(model))(x)[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert counts["sliced"] == counts["whole"] + 2 * sum(n - 1 for n in slices)  # fc1 + fc2 per extra slice
    assert all(m.hidden_chunks == 1 for m in mlps) and model.get_config() == config
    for quantize in ("float16", "dynamic", "int8", "int8_float_attention"):
        with tflite.xnnpack_forms(model, quantize):
            chunks = [m.hidden_chunks for m in mlps]
        assert chunks == (slices if quantize == "float16" else [1] * len(mlps)), quantize
    with pytest.raises(ValueError, match=r"mlp_chunk_bytes must be a positive number of bytes.*got 0"):
        tflite.convert(model, "none", mlp_chunk_bytes=0)
    assert all(m.hidden_chunks == 1 for m in mlps)


@pytest.mark.slow
def test_tflite_float16(tiny, tmp_path):
    report = keras_nextvit.export(
        tiny, tmp_path / "fp16.tflite", format="tflite", quantize="float16", verification_data=inputs(7, 4)
    )
    assert report.cosine >= 0.999, str(report)
    assert report.file_size_bytes < 0.6 * float_bytes(tiny)


@pytest.mark.slow
def test_tflite_dynamic_range(tiny, tmp_path):
    report = keras_nextvit.export(
        tiny, tmp_path / "dyn.tflite", format="tflite", quantize="dynamic", verification_data=inputs(8, 4)
    )
    assert report.cosine >= 0.99, str(report)
    assert report.file_size_bytes < 0.3 * float_bytes(tiny)


@pytest.fixture(scope="module")
def two_heads(model):
    """Logits and pre-logits: one model for both int8 modes, which then share
    its merged form and the converter's integer SavedModel."""
    return keras.Model(model.inputs, [model.output, model.get_layer("avg_pool").output])


@pytest.mark.parametrize("quantize", ["int8", "int8_float_attention"])
@pytest.mark.slow
def test_tflite_int8_logits_and_pre_logits(two_heads, tmp_path, quantize):
    """int8, calibrated on some inputs, checked on others. ``int8`` is
    full-integer; ``int8_float_attention`` keeps only the attention products
    and softmax in float32."""
    calibration = [inputs(100 + i, 4) for i in range(6)]  # 24 images
    held_out = inputs(999, 4)
    path = tmp_path / f"{quantize}.tflite"
    report = keras_nextvit.export(
        two_heads,
        path,
        format="tflite",
        quantize=quantize,
        representative_data=calibration,
        verification_data=held_out,
    )
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = interpreter.get_signature_runner().get_input_details()
    assert next(iter(details.values()))["dtype"] == np.int8
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    operators = interpreter._get_ops_details()
    float_ops = sorted({op["op_name"] for op in operators if tensors[op["outputs"][0]]["dtype"] == np.float32})
    # the average pools run as int8 depthwise convolutions (XNNPACK has no int8 average pool)
    assert "AVERAGE_POOL_2D" not in {op["op_name"] for op in operators}
    if quantize == "int8":
        assert float_ops == []
        # E-MHSA's keys and values enter their products with zero point 0,
        # which is what XNNPACK's int8 batch matmul needs
        right = [tensors[op["inputs"][1]]["quantization"][1] for op in operators if op["op_name"] == "BATCH_MATMUL"]
        assert len(right) == 8 and right == [0] * 8
        # and XNNPACK does take them: each operator alone, as tools/int8_study.py ops times it
        import sys

        sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
        from int8_study import profile_operators

        _, rows = profile_operators(path.read_bytes(), repeats=1)
        builtin = sorted({kind for _, kind, _, delegated, _ in rows if not delegated})
        assert builtin == ["SOFTMAX"], builtin
    else:
        assert float_ops == ["BATCH_MATMUL", "DEQUANTIZE", "SOFTMAX"]
    assert len(report.outputs) == 2
    for check in report.outputs:
        assert check.cosine >= 0.98, str(report)


@pytest.mark.parametrize("size", [(8, 12), (7, 9)])
def test_pools_as_depthwise_convolutions_compute_the_same(size):
    """The int8 exports' form of PatchEmbed's and E-MHSA's average pools
    (depthwise convolutions with constant weights) gives the pools' numbers,
    also where a window is partial: PatchEmbed's ceil mode at odd sizes
    (where it keeps the pool), E-MHSA's dropped remainder of tokens."""
    from keras_nextvit.layers import EfficientMHSA, PatchEmbed

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *size, 64)).astype("float32")
    tokens = x.reshape(2, -1, 64)
    for layer, value in ((PatchEmbed(32, strides=2), x), (EfficientMHSA(64, sr_ratio=2), tokens)):
        layer(value)
        # weights and BatchNorm statistics away from the identity, so that a
        # form that skipped the norm after the pool would show
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
        expected = np.asarray(layer(value))
        layer.pool_as_depthwise = True
        np.testing.assert_allclose(np.asarray(layer(value)), expected, rtol=1e-5, atol=1e-5)


def _tiny_attention_int8(right_from_input):
    """Full-integer TFLite bytes of a product ``q @ k^T`` whose right operand
    comes from a Dense projection through a reshape and a transpose, or
    straight from a model input; with the float function and a check input."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((16, 16)).astype("float32") / 4)
    shift = tf.constant(rng.uniform(0.5, 1.0, 16).astype("float32"))  # k is one-sided: zero point != 0

    def fn(q, x):
        k = x if right_from_input else tf.reshape(tf.matmul(x, w) + shift, (1, 9, 2, 8))
        return tf.matmul(tf.reshape(q, (1, 2, 9, 8)) if not right_from_input else q,
                         tf.transpose(k, (0, 2, 3, 1)) if not right_from_input else tf.transpose(k, (0, 1, 3, 2)))

    shapes = [(1, 2, 9, 8), (1, 2, 9, 8)] if right_from_input else [(1, 18, 8), (1, 9, 16)]
    concrete = tf.function(fn).get_concrete_function(*[tf.TensorSpec(s, tf.float32) for s in shapes])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.uniform(-1, 1, s).astype("float32") for s in shapes] for _ in range(16)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    check = [np.random.default_rng(1).uniform(-1, 1, s).astype("float32") for s in shapes]
    return converter.convert(), np.asarray(fn(*check)), check


def _run_float_io(content, inputs):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    for detail, x in zip(interpreter.get_input_details(), inputs):
        scale, zero = detail["quantization"]
        interpreter.set_tensor(detail["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    params = {t["index"]: t["quantization"] for t in interpreter.get_tensor_details()}
    rights = [params[op["inputs"][1]] for op in interpreter._get_ops_details() if op["op_name"] == "BATCH_MATMUL"]
    return (interpreter.get_tensor(out["index"]).astype(np.float32) - zero) * scale, rights


def test_symmetric_matmul_operands_rewrites_projected_keys_only():
    """The rewrite that lets XNNPACK run int8 attention products: a right
    operand made by a projection gets zero point 0 and a range covering its
    calibrated one, and the product still computes the same; one that is a
    model input (whose parameters the caller quantizes with) is left alone."""
    from keras_nextvit.exporters.tflite import symmetric_matmul_operands

    content, expected, check = _tiny_attention_int8(right_from_input=False)
    before, (old,) = _run_float_io(content, check)
    rewritten = symmetric_matmul_operands(content)
    after, (new,) = _run_float_io(rewritten, check)
    assert old[1] != 0 and new[1] == 0
    scale, zero = old
    assert new[0] * 127 >= scale * max(128 + zero, 127 - zero) * (1 - 1e-6)  # the range still covers it
    assert new[0] * 127 <= scale * 255
    cosine = float(np.sum(after * expected) / np.linalg.norm(after) / np.linalg.norm(expected))
    assert cosine >= 0.999
    assert np.abs(after - expected).mean() <= 1.5 * np.abs(before - expected).mean()

    content, _, check = _tiny_attention_int8(right_from_input=True)
    assert symmetric_matmul_operands(content) == content


@pytest.mark.slow
def test_tflite_int8_keeps_a_trained_models_predictions(digits, tmp_path):
    """The synthetic weights above make every image's logits point almost
    the same way (cosine ~0.999 between images), so their int8 cosine says
    little: there the input-dependent part keeps a cosine of only ~0.35-0.45.
    A model trained on real images (conftest's ``digits``: a small Next-ViT
    on scikit-learn's digits) shows what int8 does to predictions:
    calibrated on training images, checked on held-out ones."""
    report = keras_nextvit.export(
        digits.model,
        tmp_path / "digits_int8.tflite",
        format="tflite",
        quantize="int8",
        representative_data=digits.calibration,
        verification_data=digits.images[digits.held_out],
    )
    check = report.output()
    assert check.cosine >= 0.98 and check.cosine_input_dependent >= 0.98, str(report)
    assert check.top1_agreement >= 0.97, str(report)


@pytest.mark.slow
def test_int8_from_image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    square = synthetic_tiny((64, 64, 3))
    report = keras_nextvit.export(
        square, tmp_path / "folder.tflite", format="tflite", quantize="int8",
        representative_data=str(folder), verification_data=nhwc(synthetic_input(3, (2, 3, 64, 64))),
    )
    assert report.cosine > 0.9


# ----------------------------------------------------------------- bad requests


@pytest.mark.parametrize("quantize", ["int8", "int8_float_attention"])
def test_int8_without_representative_data(model, tmp_path, quantize):
    with pytest.raises(ValueError, match=f"quantize='{quantize}' for tflite needs representative_data"):
        keras_nextvit.export(model, tmp_path / "m.tflite", format="tflite", quantize=quantize)


def test_unknown_format_and_mode(model, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'torchscript'"):
        keras_nextvit.export(model, tmp_path / "m", format="torchscript")
    with pytest.raises(ValueError, match="quantize='int4' is not available for tflite"):
        keras_nextvit.export(model, tmp_path / "m.tflite", format="tflite", quantize="int4")
    with pytest.raises(ValueError, match="quantize='float16' is not available for onnx"):
        keras_nextvit.export(model, tmp_path / "m.onnx", format="onnx", quantize="float16")


@pytest.mark.slow
def test_bad_representative_data(model, tmp_path, monkeypatch):
    def convert(*args, **kwargs):
        raise AssertionError("the conversion started before the representative data was checked")

    # arrays in memory are checked before anything is converted
    monkeypatch.setattr(tflite_export, "convert", convert)
    with pytest.raises(ValueError, match=r"shape \(1, 32, 32, 3\); expected \(batch, 64, 96, 3\)"):
        keras_nextvit.export(
            model, tmp_path / "m.tflite", format="tflite", quantize="int8",
            representative_data=[np.zeros((1, 32, 32, 3), np.float32)],
        )
    with pytest.raises(ValueError, match="holds no images"):
        empty = tmp_path / "empty"
        empty.mkdir()
        square = keras_nextvit.NextViT(TINY, input_shape=(64, 64, 3))
        keras_nextvit.export(square, tmp_path / "m.tflite", format="tflite", quantize="int8",
                             representative_data=str(empty))


def test_dynamic_size_needs_input_size(tmp_path):
    any_size = keras_nextvit.NextViTSmall(input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="Pass input_size=224"):
        keras_nextvit.export(any_size, tmp_path / "m.onnx", format="onnx")


def test_tensorrt_without_tensorrt(model, tmp_path):
    if tensorrt.importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(tensorrt.TensorRTUnavailable, match="tensorrt.*not installed.*trtexec --onnx"):
        keras_nextvit.export(model, tmp_path / "m.plan", format="tensorrt", quantize="float16")
    with pytest.raises(ValueError, match="needs representative_data"):
        keras_nextvit.export(model, tmp_path / "m.plan", format="tensorrt", quantize="int8")


def test_runtime_threads_from_the_argument_or_the_environment(monkeypatch, tmp_path):
    """The artifacts' runtimes take KERAS_NEXTVIT_NUM_THREADS unless a count
    is passed; a bad value is refused with the variable's name."""
    from keras_nextvit.exporters.verify import runtime_threads

    monkeypatch.delenv("KERAS_NEXTVIT_NUM_THREADS", raising=False)
    assert runtime_threads() is None and runtime_threads(3) == 3
    monkeypatch.setenv("KERAS_NEXTVIT_NUM_THREADS", "2")
    assert runtime_threads() == 2 and runtime_threads(3) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("KERAS_NEXTVIT_NUM_THREADS", bad)
        with pytest.raises(ValueError, match=f"KERAS_NEXTVIT_NUM_THREADS must be .* got '{bad}'"):
            runtime_threads()
    # the sessions the reports run take it
    monkeypatch.setenv("KERAS_NEXTVIT_NUM_THREADS", "1")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    path = tmp_path / "conv.onnx"
    onnx_export.export_onnx(model, path, batch_size=1)
    session = onnx_export.ort_session(path)
    assert session.get_session_options().intra_op_num_threads == 1


def test_report_sees_an_artifact_that_ignores_its_input():
    """Outputs that barely vary between images (as with synthetic weights)
    give a high plain cosine even to an artifact that returns the outputs of
    other images; the input-dependent cosine tells the two apart."""
    from keras_nextvit.exporters.verify import compare

    rng = np.random.default_rng(0)
    common = rng.normal(size=(1, 1000)) * 10
    expected = common + rng.normal(size=(4, 1000)) * 0.3
    wrong = common + rng.normal(size=(4, 1000)) * 0.3  # another batch's outputs
    faithful = expected + rng.normal(size=(4, 1000)) * 1e-3
    bad, good = compare("logits", wrong, expected), compare("logits", faithful, expected)
    assert bad.cosine > 0.99 and good.cosine > 0.99  # the plain cosine passes both
    assert bad.cosine_input_dependent < 0.1
    assert good.cosine_input_dependent > 0.999
    assert "input-dependent part" in str(
        keras_nextvit.exporters.ExportReport("onnx", "none", "m.onnx", 1, 1, 1.0, 1.0, [bad])
    )
    assert compare("logits", faithful[:1], expected[:1]).cosine_input_dependent is None


@pytest.mark.slow
def test_keras_reference_is_traced_once_per_model():
    """Every export is verified against the Keras model's inference: one
    trace per model and image size, whatever the batch, shared by that
    model's exports; a model whose weights were replaced since, or another
    model, is traced again."""
    from unittest import mock

    from keras_nextvit.exporters import keras_reference

    model = synthetic_tiny((32, 32, 3))
    x = nhwc(synthetic_input(7, (3, 3, 32, 32)))
    forward = keras_reference(model)
    np.testing.assert_allclose(forward(x[:2]), model(x[:2], training=False), rtol=1e-5, atol=1e-6)
    forward(x[:1])
    assert keras_reference(model) is forward
    assert len(forward._list_all_concrete_functions()) == 1  # batches of 2 and 1: one trace
    assert keras_reference(synthetic_tiny((32, 32, 3))) is not forward
    # a model of any size (a segmenter's input is (None, None, 3)) is traced
    # per image shape: a graph of known sizes, as the exports are
    fully_convolutional = keras_nextvit.NextViT(TINY, input_shape=(None, None, 3), include_top=False)
    at_32 = keras_reference(fully_convolutional, (32, 32, 3))
    assert at_32.input_signature[0].shape.as_list() == [None, 32, 32, 3]
    assert keras_reference(fully_convolutional, (64, 32, 3)) is not at_32
    assert keras_reference(fully_convolutional, (32, 32, 3)) is at_32
    merged = keras_nextvit.merge_batchnorm(model)
    before = keras_reference(merged)
    with mock.patch("gc.collect"):  # see test_cli's int8 test
        merged.quantize("int8")  # every Dense kernel replaced by an int8 one
    after = keras_reference(merged)
    assert after is not before
    np.testing.assert_allclose(after(x), merged(x, training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_exports_of_one_model_share_its_merged_form_and_saved_models(tmp_path, monkeypatch):
    """Exports of one model fold its BatchNorms once and write one SavedModel
    per traced form (float: none and float16; integer: int8 and
    int8_float_attention; dynamic; per batch size); once a weight changes
    both are made again, and the export follows the new weights."""
    from keras_nextvit import exporters
    from keras_nextvit.exporters import tflite

    merged, written = [], []
    merge, write = exporters.merge_batchnorm, tflite.export_saved_model
    monkeypatch.setattr(exporters, "merge_batchnorm", lambda m, **k: merged.append(m) or merge(m, **k))
    # recorded, not written: nothing is converted until the last export
    monkeypatch.setattr(tflite, "export_saved_model", lambda model, path, *a, **k: written.append(path))
    model = synthetic_tiny((32, 32, 3))
    deploy = exporters._fixed_size_model(model, None, merge_bn=True)
    assert exporters._fixed_size_model(model, None, merge_bn=True) is deploy and len(merged) == 1
    folders = {q: tflite._converter_saved_model(deploy, q, 1, tflite.MLP_CHUNK_BYTES)
               for q in ("none", "float16", "int8", "int8_float_attention", "dynamic")}
    assert folders["none"] == folders["float16"]
    assert folders["int8"] == folders["int8_float_attention"] != folders["dynamic"]
    assert written == [folders["none"], folders["int8"], folders["dynamic"]]
    assert tflite._converter_saved_model(deploy, "none", 2, tflite.MLP_CHUNK_BYTES) == written[-1]
    assert len(written) == 4
    # A changed weight: merged and written again (the stale entries are empty
    # folders, which the converter could not read), and the export is of the
    # new weights.
    head = model.get_layer("head_fc").kernel
    head.assign(-2.0 * head)
    monkeypatch.setattr(tflite, "export_saved_model", lambda *a, **k: written.append(a[1]) or write(*a, **k))
    x = nhwc(synthetic_input(3, (2, 3, 32, 32)))
    report = keras_nextvit.export(model, tmp_path / "after.tflite", verification_data=x)
    assert len(merged) == 2 and len(written) == 5 and written[-1] not in folders.values()
    assert report.cosine > 0.9999 and report.top1_agreement == 1.0, str(report)
