"""Deployment: one API for every export target, each verified.

(The package is ``exporters`` so that ``keras_nextvit.export`` can be the
function.)

>>> report = keras_nextvit.export(model, "nextvit_s.tflite", format="tflite")
>>> print(report)          # max abs error, cosine, top-1 agreement, size, latency

Formats: ``saved_model``, ``tflite`` (``quantize`` none / float16 / dynamic
/ int8), ``onnx``, ``openvino`` (none / float16 / int8, with the
``openvino`` extra), ``tensorrt``, ``coreml`` (float16 by default / none /
int8 weights, with the ``coreml`` extra; numbers verified on macOS only).
All go through TensorFlow, so the TensorFlow backend of Keras must be
active. By default the model's BatchNorms are merged first
(:func:`keras_nextvit.merge_batchnorm`).
"""

import os
import pathlib
import weakref

import keras
import numpy as np

from .. import presets
from ..preprocessing import preprocess_input
from ..reparam import merge_batchnorm
from ..weights import is_detector
from . import onnx as onnx_export
from . import coreml, openvino, saved_model, tensorrt, tflite
from .cache import DerivedCache
from .verify import ExportReport, file_size, verify

FORMATS = ("saved_model", "tflite", "onnx", "openvino", "tensorrt", "coreml")
QUANTIZE = {
    "saved_model": ("none",),
    "onnx": ("none",),
    "tflite": tflite.QUANTIZE_MODES,
    "openvino": openvino.QUANTIZE_MODES,
    "tensorrt": tuple(tensorrt.PRECISIONS),
    "coreml": coreml.QUANTIZE_MODES,
}
# ``quantize=None``: "none" but for CoreML, which computes in float16 unless
# asked for float32 (the Neural Engine runs float16 only)
DEFAULT_QUANTIZE = {"coreml": coreml.DEFAULT_QUANTIZE}
UINT8_INPUT_FORMATS = ("saved_model", "coreml")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


# merged models, kept while their source lives and its weights are unchanged
_MERGED = DerivedCache()


def _fixed_size_model(model, input_size, merge_bn):
    """The model to export: merged and/or with a fixed spatial size. The
    merged form is made once per model, size and weights (see :mod:`.cache`)."""
    shape = tuple(model.inputs[0].shape[1:])
    if input_size is not None:
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        shape = (h, w, shape[-1])
    if None in shape[:2]:
        raise ValueError(
            f"The model's input is {tuple(model.inputs[0].shape)}: exporting needs a fixed "
            "height and width. Pass input_size=224 (or (height, width))."
        )
    if merge_bn:
        return _MERGED.get(model, shape, lambda: merge_batchnorm(model, input_shape=shape))
    if shape == tuple(model.inputs[0].shape[1:]):
        return model
    inputs = keras.Input(shape, name="images")
    return keras.Model(inputs, model(inputs), name=model.name)


def _image_files(folder):
    files = sorted(
        p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise ValueError(f"representative_data folder {folder} holds no images ({IMAGE_SUFFIXES}).")
    return files


def representative_batches(data, input_shape, steps=100, batch_size=1):
    """A converter-style callable yielding ``[x]``, ``x`` of shape
    ``(batch_size, h, w, c)`` (the exported model's batch).

    ``data``: an image folder (searched recursively; images are resized,
    center-cropped and normalised as the presets are), a callable returning
    an iterable, or an iterable of preprocessed NHWC batches or HWC images.
    """
    from ..preprocessing import load_image

    h, w, c = input_shape

    def check(x):
        x = np.asarray(x, np.float32)
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1:] != (h, w, c):
            raise ValueError(
                f"representative_data item has shape {x.shape}; expected (batch, {h}, {w}, {c}) "
                "preprocessed images."
            )
        return x

    if isinstance(data, (str, os.PathLike)):
        if not os.path.isdir(data):
            raise ValueError(f"representative_data {data} is not a folder of images.")
        if h != w:
            raise ValueError("An image folder calibrates square inputs only; pass arrays instead.")
        files = _image_files(data)

        def source():
            for path in files:
                yield preprocess_input(load_image(path, size=h)[None])

    elif callable(data):
        source = data
    else:
        items = [check(item) for item in data]  # in memory: a wrong shape fails now, not mid-conversion
        source = lambda: items  # noqa: E731

    def images():
        count = 0
        for batch in source():
            for x in check(batch):
                yield x
                count += 1
                if count >= steps:
                    return
        if count == 0:
            raise ValueError("representative_data yielded no images.")

    def dataset():
        group, batches = [], 0
        for x in images():
            group.append(x)
            if len(group) == batch_size:
                yield [np.stack(group)]
                group, batches = [], batches + 1
        if batches == 0:
            raise ValueError(
                f"representative_data has {len(group)} images, fewer than one batch of {batch_size}."
            )

    return dataset


def default_inputs(shape, batch=2, seed=1234):
    from ..synthetic import synthetic_input

    h, w, c = shape
    return synthetic_input(seed, (batch, c, h, w)).transpose(0, 2, 3, 1).copy()


def _to_uint8(images):
    """Normalised float images back to the uint8 pixels they came from
    (the inverse of ``preprocess_input``)."""
    mean = np.asarray(presets.IMAGENET_MEAN) * 255
    std = np.asarray(presets.IMAGENET_STD) * 255
    return np.clip(np.round(images * std + mean), 0, 255).astype(np.uint8)


_REFERENCES = weakref.WeakKeyDictionary()


def keras_reference(model, image_shape=None):
    """``model``'s inference (``training=False``) on images of
    ``image_shape`` (height, width, channels; default: the model's), any
    batch size, as a ``tf.function``: what every export is verified against.
    Traced once per model and image shape and kept while the model lives, so
    that a session exporting one model to several formats traces it once
    (3-4 s for Next-ViT-S at 96x96 here). A model whose weights were replaced
    since (``model.quantize``) is traced again."""
    import tensorflow as tf

    image_shape = tuple(model.inputs[0].shape[1:] if image_shape is None else image_shape)
    key = (image_shape, tuple(id(v) for v in model.weights))
    traced = _REFERENCES.setdefault(model, {})
    if key not in traced:
        owner = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32)], autograph=False)
        def forward(x):
            return owner()(x, training=False)

        for stale in [k for k in traced if k[1] != key[1]]:  # traced for replaced weights
            del traced[stale]
        traced[key] = forward
    return traced[key]


def _require_tensorflow_backend(fmt):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Exporting to {fmt} goes through TensorFlow, but the Keras backend is "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow (a model's weights "
            "move between backends with .weights.h5)."
        )


def default_quantize(format, quantize=None):
    """``quantize``, or the format's default when it is ``None``."""
    return DEFAULT_QUANTIZE.get(format, "none") if quantize is None else quantize


def check_request(path, format="tflite", quantize=None, representative_data=None, uint8_input=False,
                  batch_size=1):
    """Raise on an export request that cannot be carried out, before any
    model is built or traced: an unknown format or quantization, int8
    without calibration data, a missing extra, TensorRT where it cannot run,
    a backend other than TensorFlow. Returns the TensorRT route (``None`` for
    the other formats)."""
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {FORMATS}.")
    quantize = default_quantize(format, quantize)
    if quantize not in QUANTIZE[format]:
        raise ValueError(
            f"quantize={quantize!r} is not available for {format}; choose one of {QUANTIZE[format]}."
        )
    if uint8_input and format not in UINT8_INPUT_FORMATS:
        raise ValueError("uint8_input is supported for format='saved_model' and format='coreml' only.")
    # CoreML's int8 is weight quantization: nothing to calibrate
    if quantize.startswith("int8") and representative_data is None and format != "coreml":
        raise ValueError(
            f"quantize={quantize!r} for {format} needs representative_data to calibrate on: an image "
            "folder or an iterable/generator of preprocessed NHWC batches."
        )
    _require_tensorflow_backend(format)
    if format == "openvino":
        openvino.check_path(path)
        openvino.require("nncf" if quantize == "int8" else "openvino")
    if format == "coreml":
        coreml.check_path(path)
        coreml.check_batch_size(batch_size)
        coreml.require()  # raises CoreMLUnavailable naming the extra
    if format == "tensorrt":
        return tensorrt.tensorrt_route()  # raises TensorRTUnavailable with the reason
    return None


def _export_detector(detector, path, format, quantize, merge_bn, input_size, verification_data,
                     verify_export):
    """A Mask R-CNN to one ONNX graph (see :mod:`.detection`), verified on
    ``verification_data`` (uint8 images; default: two synthetic photos)."""
    from . import detection

    if format == "tensorrt":
        raise ValueError(
            "A detector's TensorRT engine is built from its ONNX export: export format='onnx' (the "
            "graph uses TopK, NonZero, NonMaxSuppression, RoiAlign, ScatterND, GatherElements, which "
            "TensorRT >= 8.6's ONNX parser takes), then on the GPU machine `trtexec "
            "--onnx=detector.onnx --saveEngine=detector.plan`. This package does not build or verify "
            "detector engines yet."
        )
    if format == "coreml":
        raise ValueError(coreml.DETECTOR_MESSAGE)
    if format not in ("onnx", "openvino"):
        raise ValueError(
            f"A detector exports to ONNX (format='onnx') or OpenVINO (format='openvino'); {format!r} "
            "is not supported for detectors yet."
        )
    if quantize != "none":
        raise ValueError(f"A detector exports in float32 only (quantize='none'), got {quantize!r}.")
    size = detection.check_image_size(input_size or (800, 1216))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        detection.export_detector_onnx(detector, path, size, merge_bn)
    else:
        detection.export_detector_openvino(detector, path, size, merge_bn)
    if not verify_export:
        return None
    runner = detection.DetectorRunner(path)
    if verification_data is None:
        rng = np.random.default_rng(1234)
        verification_data = [rng.integers(0, 256, (size[0] - 13, size[1] - 29, 3), dtype=np.uint8)
                             for _ in range(2)]
    return detection.verify_detector(detector, runner, list(verification_data), path, format)


def export(
    model,
    path,
    format="tflite",
    quantize=None,
    representative_data=None,
    merge_bn=True,
    batch_size=1,
    input_size=None,
    uint8_input=False,
    verification_data=None,
    calibration_steps=100,
    verify_export=True,
):
    """Export ``model`` and verify the artifact against it.

    Args:
        model: a Next-ViT Keras model (any head; multi-output models too)
            or a segmenter (:func:`keras_nextvit.NextViTSegmenter`; the report
            then counts top-1 agreement per pixel), or a detector
            (:func:`keras_nextvit.NextViTMaskRCNN`: ONNX or OpenVINO, for a fixed
            padded ``input_size`` (height, width), default (800, 1216); a
            :class:`~.detection.DetectionExportReport` on uint8 images).
        path: output file (``.tflite``, ``.onnx``, ``.xml`` for OpenVINO,
            ``.plan``) or folder (SavedModel, TF-TRT, CoreML's ``.mlpackage``).
        format: ``saved_model``, ``tflite``, ``onnx``, ``openvino``,
            ``tensorrt`` or ``coreml``.
        quantize: ``None`` (default): ``none``, but ``float16`` for CoreML.
            TFLite: ``none``, ``float16``, ``dynamic``, ``int8``
            (full-integer) or ``int8_float_attention`` (int8 but for the
            attention products and softmax, which stay float32);
            OpenVINO: ``none``, ``float16`` (weights), ``int8`` (NNCF);
            TensorRT: ``none`` (FP32), ``float16``, ``int8``;
            CoreML: ``float16`` (float16 compute, the Neural Engine's),
            ``none`` (float32: CPU and GPU), ``int8`` (int8 weights,
            float16 compute; no calibration).
        representative_data: calibration data for int8: an image folder, or
            an iterable / generator function of preprocessed NHWC batches.
        merge_bn: fold BatchNorms first (the deployment form).
        batch_size: fixed batch size, or ``None`` for a dynamic batch.
        input_size: fix the image size when the model's is ``None``.
        uint8_input: SavedModel and CoreML (an RGB image input): take uint8
            images and normalise inside.
        verification_data: NHWC float batch to verify on (default: 2
            synthetic images).
        calibration_steps: images used for int8 calibration at most.
        verify_export: run the verification (returns ``None`` without).

    Returns:
        An :class:`ExportReport`. For OpenVINO on a CPU with bfloat16
        arithmetic (AVX512-BF16, AMX) its ``variants["bf16"]`` reports the
        same file run in bfloat16. For CoreML its ``checks`` list what was
        checked in the package (operators against the Neural Engine list,
        inputs, outputs, size); off macOS there is no CoreML runtime, and the
        report says that its numbers were not verified (``unverified``, no
        ``outputs``); on macOS ``variants["cpu_only"]`` reports the package
        run on the CPU alone.
    """
    quantize = default_quantize(format, quantize)
    if is_detector(model):  # a Mask R-CNN
        return _export_detector(model, path, format, quantize, merge_bn, input_size, verification_data,
                                verify_export)
    route = check_request(path, format, quantize, representative_data, uint8_input, batch_size)
    deploy = _fixed_size_model(model, input_size, merge_bn)
    shape = tuple(deploy.inputs[0].shape[1:])
    names = saved_model.output_names(deploy)
    representative = (
        representative_batches(representative_data, shape, calibration_steps, batch_size or 1)
        if representative_data is not None
        else None
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    if format == "saved_model":
        saved_model.export_saved_model(deploy, path, batch_size, uint8_input)
        runner = saved_model.SavedModelRunner(path, names)
        if uint8_input:
            raw = runner

            def runner(x):  # verify through the in-graph preprocessing
                return raw(_to_uint8(x))

    elif format == "tflite":
        path.write_bytes(tflite.convert(deploy, quantize, representative, batch_size))
        runner = tflite.TFLiteRunner(path, names)
    elif format == "openvino":
        openvino.convert(deploy, path, quantize, representative, batch_size)
        runner = openvino.OpenVINORunner(path, names)
    elif format == "coreml":
        coreml.convert(deploy, path, quantize, batch_size, uint8_input, names)
        check = coreml.check_package(
            path, *coreml.expected_features(deploy, names, batch_size, uint8_input),
            parameters=deploy.count_params() if merge_bn else None, quantize=quantize,
        )
        if merge_bn and not check.ok:
            raise RuntimeError(f"The CoreML program of {path} fails its checks: {'; '.join(check.problems)}.")
        if not coreml.has_runtime():  # off macOS: what was checked, no numbers
            if not verify_export:
                return None
            nan = float("nan")
            return ExportReport(format, quantize, str(path), file_size(path), batch_size, nan, nan, [],
                                unverified=coreml.NO_RUNTIME, checks=check.lines())
        runner = coreml.CoreMLRunner(path, "ALL")
        if uint8_input:
            image_runner = runner

            def runner(x):  # verify through the in-program normalisation
                return image_runner(_to_uint8(x))

    elif format == "onnx":
        proto = onnx_export.export_onnx(deploy, path, batch_size)
        unsupported = onnx_export.unsupported_by_tensorrt(proto)
        if merge_bn and unsupported:
            raise RuntimeError(f"The ONNX graph holds operators TensorRT cannot parse: {unsupported}.")
        runner = onnx_export.ONNXRunner(path)
    else:
        precision = tensorrt.PRECISIONS[quantize]
        calibration = [b[0] for b in representative()] if representative else None
        if route == "tf-trt":
            saved = saved_model.export_saved_model(deploy, str(path) + ".saved_model", batch_size)
            tensorrt.convert_tf_trt(saved, path, precision, calibration)
            runner = saved_model.SavedModelRunner(path, names)
        else:
            onnx_path = path.with_suffix(".onnx")
            onnx_export.export_onnx(deploy, onnx_path, batch_size)
            tensorrt.build_engine(onnx_path, path, precision, calibration)
            runner = tensorrt.EngineRunner(path)

    if not verify_export:
        return None
    inputs = default_inputs(shape) if verification_data is None else np.asarray(verification_data, np.float32)
    if uint8_input:
        inputs = preprocess_input(_to_uint8(inputs))  # what uint8 pixels can represent

    import tensorflow as tf

    forward = keras_reference(model, inputs.shape[1:])

    def keras_fn(x):
        out = forward(tf.constant(x))
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    from ..naming import is_segmenter

    expected = keras_fn(inputs)
    report = verify(
        keras_fn, runner, inputs, names, format, quantize, path, per_pixel=is_segmenter(model),
        expected=expected,
    )
    if format == "coreml":
        report.checks = check.lines()
        cpu = coreml.CoreMLRunner(path, "CPU_ONLY")
        report.variants["cpu_only"] = verify(
            keras_fn, (lambda x: cpu(_to_uint8(x))) if uint8_input else cpu, inputs, names, format,
            quantize, path, per_pixel=is_segmenter(model), expected=expected,
            keras_latency_ms=report.keras_latency_ms,
        )
    if format == "openvino" and openvino.has_bf16():
        bf16 = openvino.OpenVINORunner(path, names, precision="bf16")
        report.variants["bf16"] = verify(
            keras_fn, bf16, inputs, names, format, quantize, path, per_pixel=is_segmenter(model),
            expected=expected, keras_latency_ms=report.keras_latency_ms,
        )
    return report


__all__ = ["ExportReport", "FORMATS", "check_request", "export", "keras_reference", "representative_batches"]
