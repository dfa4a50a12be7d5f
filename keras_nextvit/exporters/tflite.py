"""TFLite export: float32, float16, dynamic-range and full-int8 models.

Conversion goes through a SavedModel (the converter's best-supported
input), written once per model, traced form and batch size while the
model's weights are unchanged (the float modes share one form, the integer
modes another; see :mod:`.cache`). Full-integer int8 is post-training quantization calibrated on a
representative dataset; its input and output are int8 tensors, and
:class:`TFLiteRunner` quantizes and dequantizes at the edges. Models run
with ``ai_edge_litert`` (TensorFlow's own ``tf.lite.Interpreter`` is
deprecated), which applies XNNPACK by default.
"""

import contextlib
import os
import tempfile
import warnings

import numpy as np

from .cache import DerivedCache
from .saved_model import SIGNATURE, export_saved_model
from .verify import run_in_batches, runtime_threads

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8", "int8_float_attention")

# What ``int8_float_attention`` leaves in float32: E-MHSA's two
# activation x activation products and the softmax between them. They carry
# no weights, and in float32 they keep a little more of the model's accuracy
# than in int8 at about the same speed. (In ``int8``, XNNPACK runs the
# products once their right operands are symmetric, see
# :func:`symmetric_matmul_operands`; the int8 softmax runs on TFLite's
# builtin kernel, as XNNPACK has none.)
FLOAT_ATTENTION_OPS = ("BATCH_MATMUL", "SOFTMAX")

# Full-integer int8: operators that pass int8 values through unchanged (their
# output carries their input's scale and zero point), and operators that
# requantize their output to whatever parameters it carries and read their
# inputs' parameters when they run. See :func:`symmetric_matmul_operands`.
_PASS_THROUGH_OPS = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS")
_REQUANTIZING_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "SUB", "MUL", "BATCH_MATMUL")


# The float32 weights of one slice of an MLP in the float TFLite models, at
# most. XNNPACK's GEMM slows down once a weight matrix outgrows a core's L2
# cache. On a 2-core Intel Xeon with 2 MiB of L2 per core (tools/
# profile_stages.py), stage 3's MLP (two 1.69 MiB matrices) takes 1.70 ms
# whole and 1.33-1.46 ms in two slices (ONNX Runtime: 1.25-1.38), stage 4's
# (6.75 MiB) 1.73-1.84 ms whole and 1.63-1.66 in eight.
MLP_CHUNK_BYTES = 2**20


def _check_chunk_bytes(budget_bytes):
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or budget_bytes <= 0:
        raise ValueError(
            f"mlp_chunk_bytes must be a positive number of bytes (or None for whole MLPs), "
            f"got {budget_bytes!r}."
        )


def mlp_hidden_chunks(input_units, hidden_units, budget_bytes=MLP_CHUNK_BYTES):
    """How many slices of the hidden units keep each slice's fc1 (and fc2)
    weights within ``budget_bytes``: the smallest count that divides
    ``hidden_units`` into widths that are multiples of 16 (XNNPACK's tile);
    the finest such slicing when none fits, 1 when there is none."""
    _check_chunk_bytes(budget_bytes)
    counts = [
        c for c in range(1, hidden_units // 16 + 1) if hidden_units % c == 0 and (hidden_units // c) % 16 == 0
    ]
    for chunks in counts:
        if input_units * (hidden_units // chunks) * 4 <= budget_bytes:
            return chunks
    return counts[-1] if counts else 1


@contextlib.contextmanager
def xnnpack_forms(model, quantize="none", mlp_chunk_bytes=MLP_CHUNK_BYTES):
    """Trace the forms XNNPACK runs fastest, restoring the model after.

    MHCA as one grouped conv (15 ms instead of 23 ms for int8 Next-ViT-S at
    224 here). For the int8 models the average pools of PatchEmbed and
    E-MHSA as depthwise convolutions (XNNPACK runs those in int8, not average
    pools; see ``layers._window_mean_as_depthwise``). For the float models
    (``none``, ``float16``: XNNPACK computes both in float32) each MLP in slices of :func:`mlp_hidden_chunks` with
    ``mlp_chunk_bytes`` (``None``: whole MLPs); the integer models keep
    whole MLPs (their weights are a quarter of the size, and every extra sum
    would be one more rounding to int8).
    """
    from ..layers import MHCA, MLP, EfficientMHSA, PatchEmbed

    if mlp_chunk_bytes is not None:
        _check_chunk_bytes(mlp_chunk_bytes)
    saved = []  # (layer, attribute, value to restore)
    for layer in model._flatten_layers():
        if isinstance(layer, MHCA) and layer.split_heads:
            saved.append((layer, "split_heads", True))
            layer.split_heads = False
        elif isinstance(layer, (PatchEmbed, EfficientMHSA)) and quantize.startswith("int8"):
            saved.append((layer, "pool_as_depthwise", layer.pool_as_depthwise))
            layer.pool_as_depthwise = True
        elif isinstance(layer, MLP) and quantize in ("none", "float16") and mlp_chunk_bytes is not None:
            chunks = mlp_hidden_chunks(layer.fc1.kernel.shape[0], layer.hidden_units, mlp_chunk_bytes)
            saved.append((layer, "hidden_chunks", layer.hidden_chunks))
            layer.hidden_chunks = chunks
    try:
        yield
    finally:
        for layer, name, value in saved:
            setattr(layer, name, value)


# The converter's SavedModels, one per model, traced form and batch size
# while the model lives and its weights are unchanged: the float modes
# (none, float16) convert the same form, the integer modes another.
_SAVED_MODELS = DerivedCache()


def _converter_saved_model(model, quantize, batch_size, mlp_chunk_bytes):
    """The SavedModel folder the converter reads, written on first use."""
    if quantize.startswith("int8"):
        form = ("int8", None)
    elif quantize in ("none", "float16"):
        form = ("float", mlp_chunk_bytes)
    else:
        form = (quantize, None)

    def write():
        folder = tempfile.TemporaryDirectory(prefix="keras_nextvit_tflite_")  # removed with the entry
        with xnnpack_forms(model, quantize, mlp_chunk_bytes):
            export_saved_model(model, os.path.join(folder.name, "saved_model"), batch_size, for_converter=True)
        return folder

    return os.path.join(_SAVED_MODELS.get(model, (form, batch_size), write).name, "saved_model")


def convert(model, quantize="none", representative=None, batch_size=1, mlp_chunk_bytes=MLP_CHUNK_BYTES):
    """TFLite flatbuffer bytes of ``model``.

    ``representative``: a zero-argument callable yielding ``[batch]`` lists
    of float32 NHWC arrays (int8 modes only). ``mlp_chunk_bytes``: the
    float models' MLP slice size (see :func:`xnnpack_forms`); lower it for
    cores with a smaller L2 cache, ``None`` keeps whole MLPs.

    ``int8``: full-integer post-training quantization, every tensor int8
    (what integer-only accelerators need). ``int8_float_attention``: the
    same, except :data:`FLOAT_ATTENTION_OPS`, which run in float32 between
    a dequantize and a quantize; input and output stay int8.
    """
    import tensorflow as tf

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}.")
    if quantize.startswith("int8") and representative is None:
        raise ValueError(
            f"quantize={quantize!r} needs representative_data to calibrate on: "
            "an image folder or an iterable/generator of NHWC float batches."
        )
    saved = _converter_saved_model(model, quantize, batch_size, mlp_chunk_bytes)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize.startswith("int8"):
        converter.representative_dataset = representative
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if quantize == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return symmetric_matmul_operands(converter.convert())
    if quantize == "int8_float_attention":
        # The converter's own way to keep chosen ops in float: calibrate,
        # then quantize everything but the deny-listed operators.
        with warnings.catch_warnings():
            # The debugger checks its models with tf.lite.Interpreter, whose
            # deprecation notice is not about anything the caller does.
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=representative,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_ops=list(FLOAT_ATTENTION_OPS), fully_quantize=True
                ),
            )
            return debugger.get_nondebug_quantized_model()
    return converter.convert()


def symmetric_matmul_operands(flatbuffer):
    """Full-integer int8 model bytes whose BATCH_MATMULs take a right operand
    with zero point 0, so that XNNPACK runs them.

    XNNPACK has an int8 batch matmul for a right operand that is not a
    constant only when that operand is quantized symmetrically; otherwise the
    product falls back to TFLite's builtin kernel. The converter gives E-MHSA's
    keys and values (the right operands of its two products) the asymmetric
    range it calibrated, and Next-ViT-S at 224 then spends 5.9-6.2 of its
    15-16 ms in those 8 products, 0.15-0.20 ms once they run in XNNPACK (AMD
    EPYC, 2 threads; ``python tools/int8_study.py ops``). Here each such operand
    gets the symmetric range that covers its calibrated one (zero point 0,
    scale ``max(|min|, max) / 127``): the producer (a Dense projection)
    requantizes to it, and the reshapes and transposes between, which must
    keep their input's parameters, get the same. That costs at most one bit
    of the operand's resolution. An operand is left as it is where that
    chain is anything else (a model input or output, an operator with fixed
    output parameters, a consumer that needs its input's parameters).
    """
    from tensorflow.lite.python import schema_py_generated as fb

    names = {code: name for name, code in vars(fb.BuiltinOperator).items() if not name.startswith("_")}
    data = bytearray(flatbuffer)  # the parameters are rewritten in place
    model = fb.Model.GetRootAs(data, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    codes = [names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode())) for c in codes]
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        kinds = [codes[op.OpcodeIndex()] for op in ops]
        producer, consumers = {}, {}
        for i, op in enumerate(ops):
            producer.update((int(t), i) for t in op.OutputsAsNumpy())
            for t in op.InputsAsNumpy():
                consumers.setdefault(int(t), []).append(i)
        ends = {int(t) for t in graph.InputsAsNumpy()} | {int(t) for t in graph.OutputsAsNumpy()}

        def chain(tensor):
            """The tensors that must share ``tensor``'s parameters, or None
            where they cannot all be changed."""
            while tensor in producer and kinds[producer[tensor]] in _PASS_THROUGH_OPS:
                tensor = int(ops[producer[tensor]].Inputs(0))
            if tensor not in producer or kinds[producer[tensor]] not in _REQUANTIZING_OPS:
                return None
            found, todo = [], [tensor]
            while todo:
                t = todo.pop()
                if t in ends:
                    return None
                found.append(t)
                for c in consumers.get(t, []):
                    if kinds[c] in _PASS_THROUGH_OPS and int(ops[c].Inputs(0)) == t:
                        todo.extend(int(o) for o in ops[c].OutputsAsNumpy())
                    elif kinds[c] not in _REQUANTIZING_OPS:
                        return None
            return found

        for op, kind in zip(ops, kinds):
            if kind != "BATCH_MATMUL" or graph.Tensors(op.Inputs(1)).Type() != fb.TensorType.INT8:
                continue
            params = graph.Tensors(op.Inputs(1)).Quantization()
            if params is None or params.ZeroPointLength() != 1 or params.ZeroPoint(0) == 0:
                continue
            tensors = chain(int(op.Inputs(1)))
            if tensors is None:
                continue
            params = [graph.Tensors(t).Quantization() for t in tensors]
            if any(p is None or p.ScaleLength() != 1 or p.ZeroPointLength() != 1 for p in params):
                continue
            shared = {(float(p.Scale(0)), int(p.ZeroPoint(0))) for p in params}
            if len(shared) != 1:
                continue
            (scale, zero), = shared
            # the calibrated range is scale * [-128 - zero, 127 - zero]
            symmetric = np.float32(scale * max(128 + zero, 127 - zero) / 127)
            for p in params:
                p.ScaleAsNumpy()[0] = symmetric
                p.ZeroPointAsNumpy()[0] = 0
    return bytes(data)


def _interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ImportError(
            "Running TFLite models needs ai-edge-litert (pip install ai-edge-litert)."
        ) from None
    return Interpreter(model_path=str(path), num_threads=num_threads)


class TFLiteRunner:
    """Runs a ``.tflite`` model's serving signature on NumPy batches."""

    def __init__(self, path, names, num_threads=None):
        self.interpreter = _interpreter(path, runtime_threads(num_threads) or os.cpu_count())
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.names = names
        inputs = self.runner.get_input_details()
        (self.input_name, self.input_detail), = inputs.items()
        self.output_details = self.runner.get_output_details()
        fixed = self.input_detail["shape_signature"][0] != -1
        self.batch = int(self.input_detail["shape"][0]) if fixed else None

    @staticmethod
    def _quantize(x, detail):
        scale, zero = detail["quantization"]
        if detail["dtype"] == np.float32 or scale == 0:
            return np.asarray(x, detail["dtype"])
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])

    @staticmethod
    def _dequantize(q, detail):
        scale, zero = detail["quantization"]
        if detail["dtype"] == np.float32 or scale == 0:
            return np.asarray(q, np.float32)
        return (q.astype(np.float32) - zero) * scale

    def _run(self, images):
        outputs = self.runner(**{self.input_name: self._quantize(images, self.input_detail)})
        return [self._dequantize(outputs[n], self.output_details[n]) for n in self.names]

    def __call__(self, images):
        return run_in_batches(self._run, np.asarray(images, np.float32), self.batch)
