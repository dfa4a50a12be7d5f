"""OpenVINO IR export (``.xml`` + ``.bin``): float32, float16 weights, int8.

The graph is traced from the Keras model as Keras' own OpenVINO export
does (``openvino.convert_model`` on the model's ``tf.function``), with a
fixed input shape: OpenVINO then plans every layer for that shape (at 224,
batch 1, 42 ms instead of 50 ms with a dynamic batch on a 2-core Xeon).
``float16`` stores the weights in float16 (``openvino.save_model``'s
compression; the CPU widens them when it loads the model). ``int8`` is
NNCF post-training quantization: calibrated on representative images,
every convolution and matrix product runs on int8 inputs and weights.

:class:`OpenVINORunner` runs an IR on the CPU. OpenVINO computes in
bfloat16 by default on CPUs that have it (AVX512-BF16, AMX); the runner
pins float32 arithmetic unless asked for ``precision="bf16"``.

Needs the optional ``openvino`` extra (``pip install
"keras-nextvit[openvino]"``: ``openvino`` and ``nncf``).
"""

import contextlib
import os
import pathlib

import numpy as np

from .saved_model import INPUT_NAME, input_spec, serving_fn
from .verify import run_in_batches, runtime_threads

QUANTIZE_MODES = ("none", "float16", "int8")
PRECISIONS = ("f32", "bf16")
EXTRA = 'pip install "keras-nextvit[openvino]"'


class OpenVINOUnavailable(ImportError):
    """``openvino`` (or ``nncf`` for int8) is not installed; the message says
    what to install."""


@contextlib.contextmanager
def no_telemetry():
    """Keep OpenVINO's converter and NNCF from sending usage data.

    Both report to Intel over the network unless the user has opted out
    (``openvino_telemetry``: on by default, no dialog). An export must not
    reach the network, so their calls run inside this: the opt-out both
    honour (``disable_in_ci``: the ``CI`` variable, and ``NNCF_CI``, which
    NNCF reads when it is imported), restored afterwards.
    """
    saved = {name: os.environ.get(name) for name in ("CI", "NNCF_CI")}
    os.environ.update(CI="true", NNCF_CI="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def require(module="openvino"):
    """Import ``openvino`` or ``nncf``, or raise :class:`OpenVINOUnavailable`."""
    try:
        with no_telemetry():
            if module == "nncf":
                import nncf

                return nncf
            import openvino

            return openvino
    except ImportError as error:
        what = "int8 quantization for OpenVINO needs NNCF" if module == "nncf" else "The OpenVINO format needs OpenVINO"
        raise OpenVINOUnavailable(
            f"{what} ({error}). Install the optional extra: {EXTRA}."
        ) from None


def check_path(path):
    path = pathlib.Path(path)
    if path.suffix != ".xml":
        raise ValueError(
            f"An OpenVINO model is an .xml file (its weights go beside it, in .bin); got {str(path)!r}."
        )
    return path


def to_openvino(model, batch_size=1):
    """The ``openvino.Model`` of a Keras model (TensorFlow backend) with
    input ``images`` of shape ``(batch_size, h, w, c)`` (``None``: dynamic
    batch) and one output per model output, named as the report names them."""
    import tensorflow as tf

    from .saved_model import output_names

    ov = require()
    spec = input_spec(model, batch_size)
    fn = tf.function(serving_fn(model)).get_concrete_function(spec)
    with no_telemetry():
        converted = ov.convert_model(fn)
    names = output_names(model)
    # The function's outputs are TensorFlow's Identity, Identity_1, ...; with
    # a dynamic batch the converter also leaves some shape computations
    # (E-MHSA's strided slices) dangling as outputs: keep the real ones.
    identities = [f"Identity{f'_{i}' if i else ''}:0" for i in range(len(names))]
    results = []
    for identity in identities:
        found = [r for r, o in zip(converted.get_results(), converted.outputs) if identity in o.get_names()]
        if len(found) != 1:
            raise RuntimeError(f"The converted OpenVINO model has no single output {identity}.")
        results += found
    if len(results) != len(converted.outputs):
        converted = ov.Model(results, converted.get_parameters(), converted.get_friendly_name())
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(converted.outputs, names, strict=True):
        output.get_tensor().set_names({name})
    return converted


def quantize_int8(converted, calibration, model_type=None, ignored_scope=None, bias_correction="full"):
    """NNCF post-training int8 quantization of ``converted`` (an
    ``openvino.Model``) on ``calibration``: a list of NHWC float32 batches.

    The recipe is what measured best on Next-ViT (a small one trained on
    digits, held-out images; ``python tools/int8_study.py recipes``):
    symmetric int8 activations (NNCF's ``performance`` preset) with ranges
    from the calibration set's min and max, and NNCF's full bias correction
    (``fast_bias_correction=False``). NNCF's defaults (mean of per-image
    ranges, fast bias correction) lost far more of the model's
    input-dependent output there, and the fast bias correction was the
    larger part of the loss.

    ``model_type="transformer"`` applies NNCF's transformer rules;
    ``ignored_scope``: an ``nncf.IgnoredScope`` of layers to leave in float;
    ``bias_correction``: ``"full"``, ``"fast"`` or ``"none"``.
    """
    if bias_correction not in ("full", "fast", "none"):
        raise ValueError(f"bias_correction must be 'full', 'fast' or 'none', got {bias_correction!r}.")
    nncf = require("nncf")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if not calibration:
        raise ValueError("int8 quantization needs at least one calibration batch.")
    kwargs = {
        "subset_size": sum(len(batch) for batch in calibration),
        "preset": nncf.QuantizationPreset.PERFORMANCE,
        "fast_bias_correction": bias_correction == "fast",
        "advanced_parameters": AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            disable_bias_correction=bias_correction == "none",
        ),
    }
    if model_type is not None:
        kwargs["model_type"] = nncf.ModelType(model_type)
    if ignored_scope is not None:
        kwargs["ignored_scope"] = ignored_scope
    with no_telemetry():
        return nncf.quantize(converted, nncf.Dataset(calibration), **kwargs)


def convert(model, path, quantize="none", representative=None, batch_size=1):
    """Write ``model`` as OpenVINO IR at ``path`` (``.xml``, weights in the
    ``.bin`` beside it); returns the path.

    ``representative``: a zero-argument callable yielding ``[batch]`` lists
    of float32 NHWC arrays (``int8`` only).
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}.")
    if quantize == "int8" and representative is None:
        raise ValueError(
            "quantize='int8' needs representative_data to calibrate on: an image folder or an "
            "iterable/generator of preprocessed NHWC batches."
        )
    path = check_path(path)
    ov = require()
    if quantize == "int8":
        require("nncf")  # before the conversion, not after it
    converted = to_openvino(model, batch_size)
    if quantize == "int8":
        converted = quantize_int8(converted, [batch[0] for batch in representative()])
    ov.save_model(converted, str(path), compress_to_fp16=(quantize == "float16"))
    return path


def has_bf16():
    """Whether OpenVINO's CPU plugin computes bfloat16 natively here
    (AVX512-BF16 or AMX)."""
    ov = require()
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


class OpenVINORunner:
    """Runs an OpenVINO IR on the CPU on NumPy NHWC batches.

    ``precision``: ``"f32"`` (float32 arithmetic, what verification needs)
    or ``"bf16"`` (bfloat16 where float32 would run: faster on CPUs with
    AVX512-BF16 or AMX, and OpenVINO's own default on them). ``names``: the
    outputs to return, in order (default: all).
    """

    def __init__(self, path, names=None, precision="f32", num_threads=None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        ov = require()
        path = check_path(path)
        if not path.exists():
            raise FileNotFoundError(f"No OpenVINO model at {path}.")
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": runtime_threads(num_threads) or os.cpu_count(),
        }
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.names = list(names) if names is not None else [o.get_any_name() for o in self.compiled.outputs]
        batch = self.compiled.inputs[0].partial_shape[0]
        self.batch = batch.get_length() if batch.is_static else None

    def _run(self, images):
        results = self.request.infer([np.ascontiguousarray(images)])
        by_name = {output.get_any_name(): value for output, value in results.items()}
        return [np.asarray(by_name[name], np.float32) for name in self.names]

    def __call__(self, images):
        return run_in_batches(self._run, np.asarray(images, np.float32), self.batch)

