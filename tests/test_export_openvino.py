"""The OpenVINO route: float32, float16 weights and NNCF int8, each verified
against the Keras model; the runner; and what happens without the extra."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import golden, nhwc

import keras_nextvit
from keras_nextvit.exporters import openvino

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="exports go through TensorFlow"
)

SHAPE = (64, 96, 3)


@pytest.fixture(scope="module")
def model(synthetic_small):
    return synthetic_small


@pytest.fixture(scope="module")
def float32(model, tmp_path_factory):
    """The float32 IR of Next-ViT-S, verified on the golden input."""
    path = tmp_path_factory.mktemp("openvino") / "nextvit_s.xml"
    golden_input = nhwc(golden("small_64x96_feat")["input_nchw"])
    report = keras_nextvit.export(model, path, format="openvino", verification_data=golden_input)
    return path, report


def ops(path):
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()}


@pytest.mark.slow
def test_float32_matches_keras_on_golden_input(float32):
    path, report = float32
    check = report.output("logits")
    assert check.max_abs_error <= 1e-4 * check.max_abs_reference, str(report)
    assert check.top1_agreement == 1.0
    assert path.with_suffix(".bin").stat().st_size > 100 * 2**20  # 31.8M float32 weights
    assert report.latency_ms > 0 and "openvino (none)" in str(report)
    compiled = openvino.OpenVINORunner(path).compiled
    assert [o.get_any_name() for o in compiled.outputs] == ["logits"]
    assert list(compiled.inputs[0].shape) == [1, *SHAPE]  # the fixed batch OpenVINO plans for
    assert "BatchNormInference" not in ops(path)  # merged before the export


def test_float32_is_float32_arithmetic_and_bf16_is_reported(float32):
    """OpenVINO would compute in bfloat16 on CPUs that have it; the runner
    pins float32 (the error bound above holds because of it) and the report
    adds the bf16 run where the CPU has bf16."""
    path, report = float32
    runner = openvino.OpenVINORunner(path)
    assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    if openvino.has_bf16():
        bf16 = report.variants["bf16"]
        assert bf16.output().cosine >= 0.99 and bf16.latency_ms > 0, str(report)
        assert "in bf16 arithmetic" in str(report)
        assert "bf16" in report.to_dict()["variants"]
    else:
        assert not report.variants


@pytest.mark.slow
def test_float16_weights(model, float32, tmp_path):
    path = tmp_path / "nextvit_s_fp16.xml"
    report = keras_nextvit.export(
        model, path, format="openvino", quantize="float16",
        verification_data=nhwc(golden("small_64x96_feat")["input_nchw"]),
    )
    assert report.output().cosine >= 0.999, str(report)
    assert report.output().top1_agreement == 1.0
    fp32_bytes = float32[0].with_suffix(".bin").stat().st_size
    assert path.with_suffix(".bin").stat().st_size < 0.55 * fp32_bytes


@pytest.mark.slow
def test_int8_keeps_a_trained_models_predictions(digits, tmp_path):
    """NNCF int8, calibrated on 64 training digits, checked on 96 held-out
    ones (see conftest's ``digits``)."""
    path = tmp_path / "digits_int8.xml"
    report = keras_nextvit.export(
        digits.model, path, format="openvino", quantize="int8",
        representative_data=digits.calibration, verification_data=digits.images[digits.held_out],
    )
    check = report.output()
    assert check.top1_agreement >= 0.97, str(report)
    assert check.cosine_input_dependent >= 0.98 and check.cosine >= 0.98, str(report)
    assert "FakeQuantize" in ops(path)  # int8 in the graph, not a float copy
    assert "BatchNormInference" not in ops(path)


def test_int8_without_representative_data(model, tmp_path):
    with pytest.raises(ValueError, match="needs representative_data"):
        keras_nextvit.export(model, tmp_path / "m.xml", format="openvino", quantize="int8")
    with pytest.raises(ValueError, match="not available for openvino"):
        keras_nextvit.export(model, tmp_path / "m.xml", format="openvino", quantize="dynamic")


def test_path_must_be_xml(model, tmp_path):
    with pytest.raises(ValueError, match=r"an \.xml file"):
        keras_nextvit.export(model, tmp_path / "m.onnx", format="openvino")
    with pytest.raises(ValueError, match=r"an \.xml file"):
        openvino.OpenVINORunner(tmp_path / "m.bin")
    with pytest.raises(FileNotFoundError, match="No OpenVINO model"):
        openvino.OpenVINORunner(tmp_path / "missing.xml")
    with pytest.raises(ValueError, match="precision must be one of"):
        openvino.OpenVINORunner(tmp_path / "missing.xml", precision="int8")


@pytest.mark.slow
def test_dynamic_size_needs_input_size(tmp_path):
    any_size = keras_nextvit.NextViT(depths=(1, 1, 5, 1), input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="Pass input_size=224"):
        keras_nextvit.export(any_size, tmp_path / "m.xml", format="openvino")
    report = keras_nextvit.export(
        any_size, tmp_path / "m.xml", format="openvino", input_size=(32, 48),
        verification_data=np.random.default_rng(0).standard_normal((2, 32, 48, 3)).astype("float32"),
    )
    assert report.output().max_abs_error <= 1e-4 * report.output().max_abs_reference, str(report)


@pytest.mark.slow
def test_feature_extractor_with_dynamic_batch(tmp_path):
    """A backbone's four stage outputs, named, at a batch of 3 through an IR
    exported with a dynamic batch."""
    backbone = keras_nextvit.feature_extractor(
        keras_nextvit.NextViT(depths=(1, 1, 5, 1), input_shape=(64, 64, 3), include_top=False)
    )
    images = np.random.default_rng(1).standard_normal((3, 64, 64, 3)).astype("float32")
    report = keras_nextvit.export(
        backbone, tmp_path / "features.xml", format="openvino", batch_size=None, verification_data=images
    )
    assert len(report.outputs) == 4
    for check, channels in zip(report.outputs, (96, 256, 512, 1024)):
        assert check.max_abs_error <= 1e-4 * check.max_abs_reference, str(report)
    runner = openvino.OpenVINORunner(tmp_path / "features.xml")
    assert runner.batch is None
    shapes = [o.shape for o in runner(images)]
    assert shapes == [(3, 16, 16, 96), (3, 8, 8, 256), (3, 4, 4, 512), (3, 2, 2, 1024)]


@pytest.mark.slow
def test_segmenter(tmp_path):
    from test_segmentation_export import SHAPE as SEG_SHAPE
    from test_segmentation_export import images, tiny

    report = keras_nextvit.export(
        tiny("upernet"), tmp_path / "seg.xml", format="openvino", input_size=SEG_SHAPE,
        verification_data=images(),
    )
    check = report.output()
    assert check.max_abs_error <= 1e-4 * check.max_abs_reference, str(report)
    assert check.per_pixel and check.top1_agreement >= 0.999, str(report)


def run_python(code, hidden=(), **env):
    """Run ``code`` in a fresh Python (TensorFlow backend) with the modules
    ``hidden`` failing to import, as if not installed."""
    hide = "".join(f"sys.modules[{name!r}] = None\n" for name in hidden)
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + hide + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", **env},
    )


@pytest.mark.slow
def test_without_the_extra(tmp_path):
    """Without openvino (and nncf) the package imports, and the OpenVINO
    format says which extra to install: from the API and the command line,
    before any model is built; int8 needs nncf even where openvino is."""
    out = run_python(f"""
        import keras_nextvit
        from keras_nextvit import cli
        from keras_nextvit.exporters.openvino import OpenVINOUnavailable
        model = keras_nextvit.NextViT(depths=(1, 1, 5, 1), input_shape=(32, 32, 3))
        try:
            keras_nextvit.export(model, r"{tmp_path / 'm.xml'}", format="openvino")
        except OpenVINOUnavailable as error:
            print("API:", error)
        sys.exit(cli.main(["export", r"{tmp_path / 'm.xml'}", "--format", "openvino"]))
    """, hidden=("openvino", "nncf"))
    assert out.returncode == 2, out.stderr
    assert 'API: The OpenVINO format needs OpenVINO' in out.stdout
    assert 'pip install "keras-nextvit[openvino]"' in out.stdout
    assert 'error: The OpenVINO format needs OpenVINO' in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m.xml").exists()

    out = run_python(f"""
        from keras_nextvit import cli
        sys.exit(cli.main(["export", r"{tmp_path / 'm.xml'}", "--format", "openvino",
                           "--quantize", "int8", "--representative-data", r"{tmp_path}"]))
    """, hidden=("nncf",))
    assert out.returncode == 2 and "needs NNCF" in out.stderr and "keras-nextvit[openvino]" in out.stderr


@pytest.mark.slow
def test_export_sends_no_telemetry(tmp_path):
    """OpenVINO's converter and NNCF send usage data unless opted out (and
    write a client id under ~/intel first); an int8 export, run outside
    pytest (NNCF silences itself under pytest), must do neither."""
    code = f"""
        import numpy as np, keras_nextvit
        model = keras_nextvit.NextViT(depths=(1, 1, 5, 1), input_shape=(32, 32, 3))
        calibration = [np.full((1, 32, 32, 3), i, np.float32) for i in range(2)]
        keras_nextvit.export(model, r"{tmp_path / 'm.xml'}", format="openvino", quantize="int8",
                             representative_data=calibration, verify_export=False)
        print("exported")
    """
    out = run_python(code, HOME=str(tmp_path), CI="", NNCF_CI="")
    assert "exported" in out.stdout, out.stderr[-2000:]
    assert not (tmp_path / "intel").exists(), sorted(p.name for p in (tmp_path / "intel").iterdir())
