"""CoreML export: an ML Program (``.mlpackage``, iOS 16 / macOS 13 or newer).

**Route.** The merged Keras model is traced on the TensorFlow backend into
one concrete function (fixed input shape) and converted with coremltools'
TensorFlow 2 frontend (``ct.convert([concrete_function],
source="tensorflow")``). Why this route and not the PyTorch one:

* every other export of the package goes through TensorFlow, so an export
  session already runs on it; the PyTorch route would need the Keras
  backend switched to torch, which Keras fixes per process;
* it converts every Next-ViT layer once the two forms below are traced:
  the classifiers, the feature extractors and both segmenters convert with
  nothing left that the converter does not know. On the PyTorch backend
  ``torch.jit.trace`` fails on Keras' shape arithmetic, and
  ``torch.export`` converts only with BatchNorm merged first (Keras'
  BatchNorm leaves an ``aten`` subtraction coremltools has no converter
  for): no better, and a second frontend to keep working;
* one concrete function, not a SavedModel folder (coremltools takes only a
  single concrete function from one), and not ``ct.convert(keras_model)``,
  which traces and freezes the model twice (5 s of the 16 s a tiny
  Next-ViT took).

coremltools 9.0 has been tested with TensorFlow up to 2.12 and says so on
import; the conversion works with the TensorFlow this package pins.

**Forms.** While tracing, :func:`coreml_forms` computes three things in
the form CoreML runs best (same weights, same numbers):

* MHCA's grouped 3x3 convolution as one ``tf.nn.conv2d`` with groups (a
  MIL ``conv`` with ``groups``). The default form splits it into one conv
  per head (what XLA and tf2onnx want), which converted into 12-24 convs
  per block, each behind a transpose: 239 transposes in Next-ViT-S;
  Keras' own grouped conv is an XLA call the converter cannot read;
* each pointwise ``Dense`` on a feature map as a 1x1 convolution: CoreML's
  Neural Engine runs convolutions on channel-first maps and matrix
  products on reshaped copies (Apple's guidance for transformers on the
  Neural Engine: 1x1 convs instead of linear layers);
* the FPN segmenter's nearest upsampling by whole factors as TensorFlow's
  nearest resize without half-pixel centres (PyTorch's rule; MIL's
  ``upsample_nearest_neighbor``) instead of row and column gathers.

Next-ViT-S at 224 then converts to 93 ``conv``, 25 ``matmul``, 46
``transpose`` and 31 ``reshape`` operations and no ``split``, instead of 193,
94, 239, 169 and 20 in the default forms, in 12-15 s instead of 18 s here.

**Precision** (``quantize``): ``float16``, the default for CoreML, computes
and stores the weights in float16 (coremltools' ``compute_precision``), the
one precision the Neural Engine runs; ``none`` computes in float32 (CPU and
GPU only: CoreML does not put a float32 program on the Neural Engine);
``int8`` computes in float16 with the weights of convolutions and matrix
products stored as int8, one symmetric scale per output channel
(``coremltools.optimize.coreml.linear_quantize_weights``), expanded when the
model loads. Activation quantization calibrated on representative data is
not offered: whether it gains anything on the Neural Engine can only be
measured on a Mac, and it has not been.

**Input and outputs.** ``images``: float32 ``(batch, height, width, 3)``,
normalised as the Keras model takes them; with ``uint8_input=True`` an
RGB image input (``ct.ImageType``, pixels 0-255) and the ImageNet
normalisation inside the program, as SavedModel's ``uint8_input``. Outputs
are float32 and named as the SavedModel signature names them (``logits``
for a classifier). The batch is fixed: the Neural Engine runs static
shapes.

**Checks.** CoreML runs predictions on macOS only: the Linux wheel of
coremltools has no runtime. Where there is none, :func:`check_package`
reads the written package and checks what can be checked without one
(the operators against :data:`NEURAL_ENGINE_OPS`, cast/transpose chains,
input and output names, shapes and types, the size of the weights), and
the export report says that its numbers were not verified.
``tools/coreml_check.py`` runs the packages on a Mac.

**The detector** does not export to CoreML. Its dense part (backbone, FPN,
RPN head: ``detector(images)``) is a fixed-shape function of the kind this
module converts, but its post-processing is not: the proposals of each level
(top-k over a data-dependent number of anchors), mmcv's ``batched_nms``,
RoIAlign with ``sampling_ratio=0`` (a number of samples per bin that
depends on each box's size; MIL's ``crop_resize`` samples one point per
bin), the box and mask heads over the surviving RoIs and the score
threshold all produce data-dependent shapes. MIL has
``non_maximum_suppression`` (a fixed box count) and ``topk``, but none of
these runs on the Neural Engine, and matching mmdet's results through them
is unproven. See :data:`DETECTOR_MESSAGE`.

Needs the optional ``coreml`` extra (``pip install
"keras-nextvit[coreml]"``). This module imports neither TensorFlow nor
Keras at load time, so ``tools/coreml_check.py`` loads it on a Mac that
has neither.
"""

import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil

import numpy as np

from .verify import file_size, run_in_batches

QUANTIZE_MODES = ("none", "float16", "int8")
DEFAULT_QUANTIZE = "float16"
MINIMUM_DEPLOYMENT_TARGET = "iOS16"  # ML Programs with float16 I/O types and int8 weights; macOS 13
INPUT_NAME = "images"
SUFFIX = ".mlpackage"
EXTRA = 'pip install "keras-nextvit[coreml]"'
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
NO_RUNTIME = (
    "not verified: no CoreML runtime here (coremltools runs predictions on macOS only; "
    "run tools/coreml_check.py check on a Mac)"
)

DETECTOR_MESSAGE = (
    "A detector does not export to CoreML: its post-processing (per-level top-k proposals, batched NMS, "
    "RoIAlign with an adaptive sampling ratio, the box and mask heads on the surviving RoIs, the score "
    "threshold) has data-dependent shapes that an ML Program cannot express for the Neural Engine. "
    "Export it with format='onnx' or format='openvino', or export its backbone alone: "
    "keras_nextvit.export(detector.backbone, 'backbone.mlpackage', format='coreml', input_size=(800, 1216))."
)

# MIL operators (coremltools' iOS 16 opset names) that the Neural Engine runs,
# as data. Apple publishes no per-operator list for the Neural Engine: Core ML
# decides where each operation runs when it compiles the model, and Xcode's
# performance report (or coremltools' MLComputePlan, macOS 14.4+) shows the
# decision. The list takes the operators Next-ViT's classifiers, feature
# extractors and segmenters convert to (and ``linear``, ``split`` and
# ``batch_norm``, which other forms and ``merge_bn=False`` give) that these
# sources say run there:
#   - Apple's "Deploying Transformers on the Apple Neural Engine" (machine
#     learning research article, 2022) and its reference code
#     (apple/ml-ane-transformers), which build attention for the Neural
#     Engine from conv, matmul/einsum, softmax, layer_norm, split, concat,
#     reshape and transpose, with elementwise arithmetic and pooling;
#   - hollance/neural-engine's notes on which Core ML layers do and do not
#     run on the Neural Engine (experimental findings, not Apple's; among
#     those that do not: gather, dynamic shapes, custom and recurrent layers).
# An operator outside it is reported, not assumed to fail: it may run on the
# Neural Engine all the same; tools/coreml_check.py prints where Core ML plans
# each operator on a Mac.
NEURAL_ENGINE_OPS = frozenset({
    # weights, and int8 weights expanded to float16 when the model loads
    "const", "constexpr_affine_dequantize",
    # convolution, matrix products, pooling
    "conv", "matmul", "linear", "avg_pool",
    # elementwise, activations, normalisation, reductions
    "add", "sub", "mul", "relu", "softmax", "batch_norm", "reduce_mean",
    # layout (cheap only in moderation: see the cast/transpose chain check)
    "reshape", "transpose", "expand_dims", "squeeze", "concat", "split", "pad",
    # the segmenters' upsampling
    "upsample_bilinear", "upsample_nearest_neighbor",
    # dtype changes: at the program's inputs and outputs only (see CHAIN_OPS)
    "cast",
})
# Operators that only move or retype data: two in a row (a transpose of a
# transpose, a cast of a cast) are left-overs the converter's passes should
# have folded, and a cast inside a float16 program switches precision. Both
# are flagged, except where the program adapts its inputs and outputs (the
# float32 input cast to float16 and transposed to channel-first, and the
# way back at the outputs).
CHAIN_OPS = frozenset({"cast", "transpose"})

# bytes a weight takes per quantize mode (lower, upper bound), for the size check
WEIGHT_BYTES = {"none": (3.5, 4.5), "float16": (1.7, 2.3), "int8": (0.9, 1.3)}

_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32", 131080: "int8"}


class CoreMLUnavailable(ImportError):
    """coremltools is not installed; the message says what to install."""


def require():
    """Import coremltools (its start-up warnings about untested TensorFlow
    and PyTorch versions silenced), or raise :class:`CoreMLUnavailable`."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as error:
        raise CoreMLUnavailable(
            f"The CoreML format needs coremltools ({error}). Install the optional extra: {EXTRA}."
        ) from None
    finally:
        logger.setLevel(level)
    return coremltools


def has_runtime():
    """Whether coremltools can run predictions here (macOS only)."""
    import importlib.util

    try:
        require()
        return importlib.util.find_spec("coremltools.libcoremlpython") is not None
    except (ImportError, ValueError):
        return False


def check_path(path):
    path = pathlib.Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"A CoreML ML Program is a {SUFFIX} package; got {path}.")


def check_batch_size(batch_size):
    if batch_size is None:
        raise ValueError(
            "CoreML exports take a fixed batch size (the Neural Engine runs static shapes); "
            "pass batch_size=1 (no --dynamic-batch)."
        )


# ---------------------------------------------------------------- conversion
@contextlib.contextmanager
def coreml_forms(model):
    """Trace MHCA's grouped conv as one grouped ``tf.nn.conv2d``, pointwise
    ``Dense`` layers on feature maps as 1x1 convolutions and the FPN's
    nearest upsampling by whole factors as TensorFlow's nearest resize
    (``upsample_nearest_neighbor``; the general form gathers rows and
    columns, which the Neural Engine does not run) (see the module doc),
    restoring the model after."""
    import keras
    import tensorflow as tf

    from ..layers import MHCA

    def grouped(layer):
        conv = layer.group_conv3x3

        def grouped_conv(x):
            y = tf.nn.conv2d(x, conv.kernel, strides=1, padding="SAME")  # groups from the kernel's shape
            return y if conv.bias is None else y + conv.bias

        return grouped_conv

    def pointwise(layer):
        def call(x, *args, **kwargs):
            if len(x.shape) != 4:
                return type(layer).call(layer, x, *args, **kwargs)
            y = tf.nn.conv2d(x, layer.kernel[None, None], strides=1, padding="VALID")
            y = y if layer.bias is None else y + layer.bias
            return y if layer.activation is None else layer.activation(y)

        return call

    from ..segmentation import fpn

    resize_nearest = fpn.resize_nearest

    def nearest(x, size):  # FPN's top-down path: 2x upsampling at the sizes a model exports at
        (h, w), size = x.shape[1:3], tuple(size)
        if None in (h, w) or not all(isinstance(s, int) for s in size) or size[0] % h or size[1] % w:
            return resize_nearest(x, size)
        # floor(d * in / out), PyTorch's rule, is TensorFlow's without half-pixel centres
        return tf.compat.v1.image.resize_nearest_neighbor(x, size, align_corners=False, half_pixel_centers=False)

    patched = []
    for layer in model._flatten_layers():
        if isinstance(layer, MHCA):
            patched.append((layer, "_grouped_conv", grouped(layer)))
        elif type(layer) is keras.layers.Dense and not getattr(layer, "quantization_mode", None):
            patched.append((layer, "call", pointwise(layer)))
    for layer, name, fn in patched:
        layer.__dict__[name] = fn  # an instance attribute shadows the method
    fpn.resize_nearest = nearest
    try:
        yield
    finally:
        fpn.resize_nearest = resize_nearest
        for layer, name, _ in patched:
            layer.__dict__.pop(name, None)


def concrete_function(model, batch_size=1, uint8_input=False):
    """``model``'s inference as one TensorFlow concrete function of a fixed
    input shape, traced in :func:`coreml_forms` (with the ImageNet
    normalisation first when ``uint8_input``: the input is then pixels)."""
    import tensorflow as tf

    from .saved_model import serving_fn

    h, w, c = model.inputs[0].shape[1:]
    serve = serving_fn(model, uint8_input)

    @tf.function(input_signature=[tf.TensorSpec((batch_size, h, w, c), tf.float32, name=INPUT_NAME)],
                 autograph=False)
    def forward(images):
        return serve(images)

    with coreml_forms(model):
        return forward.get_concrete_function()


@contextlib.contextmanager
def _quiet_progress():
    """coremltools draws a progress bar per conversion stage (six per
    model) and one for weight quantization; draw none."""
    modules = [
        ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
        ("coremltools.converters.mil.frontend.tensorflow.convert_utils", "_tqdm"),
        ("coremltools.converters.mil.frontend.tensorflow.load", "_tqdm"),
        ("coremltools.converters.mil.frontend.tensorflow2.load", "_tqdm"),
        ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
    ]
    import importlib

    saved = []
    for module_name, attribute in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attribute):
            saved.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, lambda iterable, *args, **kwargs: iterable)
    try:
        yield
    finally:
        for module, attribute, value in saved:
            setattr(module, attribute, value)


def quantize_weights(mlmodel):
    """int8 weights (symmetric, one scale per output channel) for every
    convolution and matrix product of 2048 weights or more."""
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=2048
        )
    )
    with _quiet_progress():
        return cto.linear_quantize_weights(mlmodel, config=config)


def convert(model, path, quantize=DEFAULT_QUANTIZE, batch_size=1, uint8_input=False, output_names=None):
    """Convert ``model`` (merged, fixed size) and write the ML Program to
    ``path`` (``.mlpackage``, replaced if it exists); returns ``path``."""
    ct = require()
    check_path(path)
    check_batch_size(batch_size)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r} is not available for coreml; choose one of {QUANTIZE_MODES}.")
    from .saved_model import output_names as signature_names

    names = list(output_names or signature_names(model))
    h, w, c = model.inputs[0].shape[1:]
    shape = (batch_size, h, w, c)
    if uint8_input:
        inputs = [ct.ImageType(name=INPUT_NAME, shape=shape, color_layout=ct.colorlayout.RGB, channel_first=False)]
    else:
        inputs = [ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)]
    function = concrete_function(model, batch_size, uint8_input)
    graph_names = [t.name.split(":")[0] for t in function.outputs]  # Identity, Identity_1, ...
    if len(graph_names) != len(names):
        raise RuntimeError(f"The traced function has outputs {graph_names}; the model has {names}.")
    with _quiet_progress():
        mlmodel = ct.convert(
            [function],
            source="tensorflow",
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET),
            compute_precision=ct.precision.FLOAT32 if quantize == "none" else ct.precision.FLOAT16,
            inputs=inputs,
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in graph_names],
        )
    if quantize == "int8":
        mlmodel = quantize_weights(mlmodel)
    spec = mlmodel.get_spec()
    converted = [o.name for o in spec.description.output]
    if converted != graph_names:
        raise RuntimeError(f"The CoreML program has outputs {converted}; the traced function {graph_names}.")
    for old, new in zip(converted, names):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    spec.description.metadata.shortDescription = (
        f"{model.name} (keras-nextvit): {'RGB pixels 0-255' if uint8_input else 'ImageNet-normalised NHWC images'} "
        f"-> {', '.join(names)}"
    )
    spec.description.metadata.userDefined.update({
        "keras_nextvit.quantize": quantize, "keras_nextvit.input": "uint8 RGB" if uint8_input else "normalised",
    })
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    path = pathlib.Path(path)
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
    return str(path)


# ---------------------------------------------------------------- checks without a runtime
@dataclasses.dataclass
class Feature:
    """An input or output of the package: ``kind`` is ``array`` or ``image``."""

    name: str
    kind: str
    shape: tuple
    dtype: str

    def __str__(self):
        return f"{self.name} {self.kind} {self.dtype} {tuple(self.shape)}"


@dataclasses.dataclass
class ProgramCheck:
    """What :func:`check_package` / :func:`check_spec` found. ``problems``
    is empty when everything passed."""

    operators: dict  # operator type -> count (consts left out)
    unsupported: dict  # operators outside NEURAL_ENGINE_OPS -> count
    chains: list  # cast/transpose chains outside the input and output adapters
    inputs: list
    outputs: list
    size_bytes: int = 0
    weight_bytes: int = 0
    parameters: int = 0
    problems: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def lines(self):
        """The report's "checked" lines."""
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.operators.items(), key=lambda kv: (-kv[1], kv[0])))
        lines = [
            f"operators: {sum(self.operators.values())} ({ops}); "
            + ("all on the Neural Engine list" if not self.unsupported
               else f"OFF the Neural Engine list: {self.unsupported}"),
            "cast/transpose chains: " + ("none outside the input/output adapters" if not self.chains
                                         else "; ".join(self.chains)),
            "inputs: " + "; ".join(map(str, self.inputs)),
            "outputs: " + "; ".join(map(str, self.outputs)),
        ]
        size = f"package {self.size_bytes / 2**20:.1f} MiB, weights {self.weight_bytes / 2**20:.1f} MiB"
        if self.parameters:
            size += f" for {self.parameters:,} parameters ({self.weight_bytes / self.parameters:.2f} bytes each)"
        lines.append(size)
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return lines


def load_spec(path):
    """The protobuf ``Model`` of a package (no runtime needed)."""
    ct = require()
    return ct.utils.load_spec(str(path))


def _feature(description):
    kind = description.type.WhichOneof("Type")
    if kind == "multiArrayType":
        array = description.type.multiArrayType
        return Feature(description.name, "array", tuple(int(d) for d in array.shape),
                       _ARRAY_DTYPES.get(array.dataType, f"type {array.dataType}"))
    if kind == "imageType":
        image = description.type.imageType
        space = {10: "GRAYSCALE", 20: "RGB", 30: "BGR", 40: "GRAYSCALE_FLOAT16"}.get(image.colorSpace, "?")
        return Feature(description.name, "image", (int(image.height), int(image.width)), space)
    return Feature(description.name, kind or "?", (), "?")


def _operations(block):
    """Every operation of ``block``, nested blocks (loops, conditions) included."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _operations(inner)


def _main_block(function):
    return function.block_specializations[function.opset]


def _chains(function):
    """Cast/transpose operations fed by another cast/transpose, and casts,
    outside the adapters at the function's inputs and outputs."""
    block = _main_block(function)
    producer, inputs = {}, {i.name for i in function.inputs}
    for op in block.operations:
        for out in op.outputs:
            producer[out.name] = op
    outputs = set(block.outputs)

    def source(op):
        for binding in op.inputs["x"].arguments if "x" in op.inputs else ():
            if binding.WhichOneof("binding") == "name":
                return binding.name
        return None

    def at_input(op):  # op is a chain (of cast/transpose) back to a function input
        while op is not None and op.type in CHAIN_OPS:
            name = source(op)
            if name in inputs:
                return True
            op = producer.get(name)
        return False

    consumers = {}
    for op in block.operations:
        if op.type in CHAIN_OPS:
            consumers.setdefault(source(op), []).append(op)

    def at_output(op):  # op's value reaches an output through casts/transposes only
        pending = [op]
        while pending:
            current = pending.pop()
            if any(o.name in outputs for o in current.outputs):
                return True
            for o in current.outputs:
                pending += consumers.get(o.name, [])
        return False

    found = []
    for op in block.operations:
        if op.type not in CHAIN_OPS:
            continue
        before = producer.get(source(op))
        chained = before is not None and before.type in CHAIN_OPS
        if not (chained or op.type == "cast"):
            continue
        if at_input(op) or at_output(op):
            continue
        what = f"{before.type} -> {op.type}" if chained else "cast inside the program"
        found.append(f"{what} at {op.outputs[0].name}")
    return found


def check_spec(spec, expected_inputs=None, expected_outputs=None, allowed=NEURAL_ENGINE_OPS):
    """Check a package's protobuf ``Model`` (see the module doc).

    ``expected_inputs`` / ``expected_outputs``: lists of :class:`Feature`
    the package must declare (names, kinds, shapes, types), in order.
    """
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"Not an ML Program: the package holds a {spec.WhichOneof('Type')!r}.")
    operators, chains = {}, []
    for name, function in spec.mlProgram.functions.items():
        for op in _operations(_main_block(function)):
            if op.type != "const":
                operators[op.type] = operators.get(op.type, 0) + 1
        chains += [f"{name}: {c}" if len(spec.mlProgram.functions) > 1 else c for c in _chains(function)]
    unsupported = {op: n for op, n in operators.items() if op not in allowed}
    inputs = [_feature(d) for d in spec.description.input]
    outputs = [_feature(d) for d in spec.description.output]
    problems = []
    if unsupported:
        problems.append(f"operators outside the Neural Engine list: {unsupported}")
    if chains:
        problems.append(f"unexpected cast/transpose chains: {chains}")
    for what, found, expected in (("inputs", inputs, expected_inputs), ("outputs", outputs, expected_outputs)):
        if expected is not None and [dataclasses.astuple(f) for f in found] != [
            dataclasses.astuple(f) for f in expected
        ]:
            problems.append(
                f"{what} are [{'; '.join(map(str, found))}], expected [{'; '.join(map(str, expected))}]"
            )
    return ProgramCheck(operators, unsupported, chains, inputs, outputs, problems=problems)


def _weight_bytes(path):
    weights = pathlib.Path(path) / "Data" / "com.apple.CoreML" / "weights"
    return file_size(weights) if weights.exists() else 0


def check_package(path, expected_inputs=None, expected_outputs=None, parameters=None, quantize=None):
    """:func:`check_spec` on the package at ``path``, plus its size: with
    ``parameters`` and ``quantize``, the weight file must hold the bytes per
    parameter the precision stores (:data:`WEIGHT_BYTES`)."""
    check = check_spec(load_spec(path), expected_inputs, expected_outputs)
    check.size_bytes = file_size(path)
    check.weight_bytes = _weight_bytes(path)
    if parameters:
        check.parameters = int(parameters)
        low, high = WEIGHT_BYTES[quantize]
        each = check.weight_bytes / parameters
        if not low <= each <= high:
            check.problems.append(
                f"the weights take {each:.2f} bytes per parameter; {quantize} stores {low}-{high}"
            )
    return check


def expected_features(model, output_names, batch_size=1, uint8_input=False):
    """The inputs and outputs a package of ``model`` must declare."""
    h, w, c = model.inputs[0].shape[1:]
    if uint8_input:
        inputs = [Feature(INPUT_NAME, "image", (h, w), "RGB")]
    else:
        inputs = [Feature(INPUT_NAME, "array", (batch_size, h, w, c), "float32")]
    shapes = [model.outputs[i].shape[1:] for i in range(len(model.outputs))]
    outputs = [Feature(n, "array", (batch_size, *s), "float32") for n, s in zip(output_names, shapes)]
    return inputs, outputs


# ---------------------------------------------------------------- running (macOS)
class CoreMLRunner:
    """Runs a package on NumPy NHWC batches with CoreML (macOS only).

    ``compute_units``: ``CPU_ONLY``, ``CPU_AND_GPU``, ``CPU_AND_NE`` or
    ``ALL``. A package with an image input takes uint8 RGB pixels; one with
    an array input float images. Larger batches than the package's run in
    chunks; outputs come back float32 in the package's output order.
    """

    def __init__(self, path, compute_units="ALL"):
        ct = require()
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}.")
        self.path, self.compute_units = str(path), compute_units
        self.model = ct.models.MLModel(self.path, compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.input = _feature(spec.description.input[0])
        self.names = [o.name for o in spec.description.output]
        self.image = self.input.kind == "image"
        self.batch = 1 if self.image else self.input.shape[0]

    def _run(self, images):
        if self.image:
            from PIL import Image

            value = Image.fromarray(np.asarray(images[0], np.uint8), "RGB")
        else:
            value = np.ascontiguousarray(images, np.float32)
        out = self.model.predict({self.input.name: value})
        return [np.asarray(out[name], np.float32) for name in self.names]

    def __call__(self, images):
        images = np.asarray(images)
        if self.image and images.dtype != np.uint8:
            raise ValueError(f"{self.path} takes uint8 RGB pixels (an image input), got {images.dtype}.")
        return run_in_batches(self._run, images, self.batch)


def runtime_versions():
    """``"coremltools X on macOS Y"`` (for reports)."""
    import platform

    ct = require()
    mac = platform.mac_ver()[0]
    return f"coremltools {ct.__version__}" + (f" on macOS {mac}" if mac else f" on {platform.system()}")


def package_files(directory):
    """The ``.mlpackage`` folders in ``directory``, sorted."""
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(SUFFIX))
