"""Deploying segmenters: BatchNorm merging (backbone, extra norms and every
ConvModule of the heads) and the export formats, each verified with per-pixel
top-1 agreement."""

import functools
import keras
import numpy as np
import pytest
from conftest import assert_close, infer, nhwc
from test_segmentation_parity import CASES, probe, seg_checkpoint, seg_golden

import keras_nextvit
from keras_nextvit import cli
from keras_nextvit.reparam import count_batchnorms
from keras_nextvit.segmentation import NextViTSegmenter

TINY = dict(variant=(1, 1, 5, 1), num_classes=5, channels=(32, 16))
SHAPE = (64, 96)

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="exports go through TensorFlow"
)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_merged_segmenter_on_golden_input(case):
    variant, head = CASES[case]
    model, _ = probe(variant, head)
    keras_nextvit.load_torch_weights(model, seg_checkpoint(head, variant))
    merged = keras_nextvit.merge_batchnorm(model)
    assert count_batchnorms(model) > 0 and count_batchnorms(merged) == 0
    data = seg_golden(case)
    outputs = infer(merged, nhwc(data["input_nchw"]))
    logits = outputs[0] if isinstance(outputs, list) else outputs
    first = nhwc(data["logits_first_channels"])
    assert_close(logits[..., : first.shape[-1]], first, what="merged logits")
    if "aux_logits" in data:
        assert_close(outputs[1], nhwc(data["aux_logits"]), what="merged aux_logits")


@functools.lru_cache(maxsize=None)
def tiny(head):
    """One tiny segmenter per head for the file's exports (which leave it
    unchanged), so that they share its merged form and SavedModels."""
    model = NextViTSegmenter(head=head, **TINY)
    # Give the BatchNorms statistics that matter, so merging them is tested.
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    return model


def images(batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *SHAPE, 3)).astype("float32")


@tensorflow_only
@pytest.mark.parametrize(
    "head,fmt,suffix",
    # The TFLite export goes through a SavedModel; UperNet's ONNX covers
    # what FPN's would (nearest and bilinear resizes, the PPM's pooling matrices).
    [("fpn", "tflite", ".tflite"), ("upernet", "tflite", ".tflite"), ("upernet", "onnx", ".onnx")],
)
@pytest.mark.slow
def test_float_exports(tmp_path, head, fmt, suffix):
    report = keras_nextvit.export(
        tiny(head), tmp_path / f"seg{suffix}", format=fmt, input_size=SHAPE,
        batch_size=None if fmt == "onnx" else 1, verification_data=images(),
    )
    check = report.output()
    assert check.max_abs_error <= 1e-4 * check.max_abs_reference, str(report)
    assert check.per_pixel and check.top1_agreement >= 0.999, str(report)
    assert "per-pixel top-1 agreement" in str(report)


@tensorflow_only
@pytest.mark.slow
def test_int8_and_float16_tflite(tmp_path):
    model = tiny("fpn")
    calibration = [images(1, seed) for seed in range(4)]
    report = keras_nextvit.export(
        model, tmp_path / "seg_int8.tflite", quantize="int8", input_size=SHAPE,
        representative_data=calibration, verification_data=images(),
    )
    check = report.output()
    assert check.per_pixel and check.top1_agreement is not None
    assert check.cosine > 0.9, str(report)
    half = keras_nextvit.export(
        model, tmp_path / "seg_fp16.tflite", quantize="float16", input_size=SHAPE, verification_data=images()
    )
    assert half.output().cosine > 0.999 and half.file_size_bytes < 0.6 * report.file_size_bytes * 4


def test_export_command_refuses_a_classification_preset_for_a_segmenter(capsys):
    code = cli.main(["export", "seg.onnx", "--format", "onnx", "--head", "fpn",
                     "--weights", "nextvit_small.bd_in1k"])
    assert code == 2
    err = capsys.readouterr().err
    assert "classification preset" in err and "Traceback" not in err
