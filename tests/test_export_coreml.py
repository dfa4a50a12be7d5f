"""CoreML export (``format="coreml"``), where CoreML cannot run.

coremltools converts on Linux but runs predictions on macOS only, so here
the packages are checked without running them: the program's operators
against the Neural Engine list (a planted operator fails), cast/transpose
chains, input and output names, shapes and types, the bytes the weights
take; and the reports say that their numbers were not verified. The forms
the conversion traces are checked numerically against the Keras layers
(under XLA, which runs TensorFlow's grouped convolution on the CPU). The
Mac side, :class:`~keras_nextvit.exporters.coreml.CoreMLRunner` and
``tools/coreml_check.py check``, runs against a stand-in for coremltools'
prediction API (``ct.models.MLModel(path, compute_units=...).predict``)
that reads the real packages' descriptions.

A tiny Next-ViT (depths 1, 1, 5, 1) at 64x64 serves the routes, each model
converted once (7-9 s each here); Next-ViT-S/B/L at 224 and 384 convert in
the one slow test.
"""

import importlib.util
import json
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
from conftest import TINY, TOOLS, load_tool

import keras_nextvit
from keras_nextvit import exporters
from keras_nextvit.exporters import coreml

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="exports go through TensorFlow"
)
needs_coremltools = pytest.mark.skipif(
    importlib.util.find_spec("coremltools") is None, reason="needs the coreml extra (coremltools)"
)

SIZE = 64
SEGMENTER = dict(num_classes=5, channels=(32, 16), input_shape=(SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return keras_nextvit.NextViT(TINY, input_shape=(SIZE, SIZE, 3), name="tiny")


@pytest.fixture(scope="module")
def packages(tiny, tmp_path_factory):
    """One export per route: the classifier in float16 (the default), the
    feature extractor in float32 with an image input, the FPN segmenter with
    int8 weights, the UperNet segmenter in float16."""
    from keras_nextvit.segmentation import NextViTSegmenter

    folder = tmp_path_factory.mktemp("coreml")
    models = {
        "classifier": (tiny, {}),
        "features": (keras_nextvit.feature_extractor(tiny), dict(quantize="none", uint8_input=True)),
        "fpn": (NextViTSegmenter(TINY, "fpn", **SEGMENTER), dict(quantize="int8")),
        "upernet": (NextViTSegmenter(TINY, "upernet", **SEGMENTER), {}),
    }
    found = {}
    for name, (model, options) in models.items():
        path = folder / f"{name}.mlpackage"
        report = keras_nextvit.export(model, path, format="coreml", **options)
        found[name] = types.SimpleNamespace(path=path, report=report, model=model, **options)
    return found


def features(package):
    spec = coreml.load_spec(package.path)
    return [coreml._feature(d) for d in spec.description.input], [coreml._feature(d) for d in spec.description.output]


# ---------------------------------------------------------------- the packages
@needs_coremltools
def test_classifier_is_a_float16_ml_program_for_ios16(packages):
    package = packages["classifier"]
    spec = coreml.load_spec(package.path)
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 7  # iOS 16 / macOS 13
    assert spec.description.metadata.userDefined["keras_nextvit.quantize"] == "float16"
    inputs, outputs = features(package)
    assert inputs == [coreml.Feature("images", "array", (1, SIZE, SIZE, 3), "float32")]
    assert outputs == [coreml.Feature("logits", "array", (1, 1000), "float32")]
    check = coreml.check_package(package.path)
    assert check.ok and not check.unsupported and not check.chains
    # the forms: MHCA as one grouped conv, pointwise layers as 1x1 convs, no per-head split
    assert check.operators["conv"] > check.operators.get("matmul", 0) and "split" not in check.operators
    assert check.operators["cast"] == 2  # float32 in -> float16, float16 -> float32 out
    # float16 weights: 2 bytes per merged parameter
    merged = keras_nextvit.merge_batchnorm(package.model)
    assert 1.9 < check.weight_bytes / merged.count_params() < 2.1


@needs_coremltools
def test_the_report_says_the_numbers_were_not_verified(packages):
    report = packages["classifier"].report
    assert report.format == "coreml" and report.quantize == "float16"
    assert report.unverified.startswith("not verified: no CoreML runtime here") and report.outputs == []
    text = str(report)
    assert "numbers not verified" in text and "tools/coreml_check.py" in text
    assert "checked: operators:" in text and "all on the Neural Engine list" in text
    assert "checked: inputs: images array float32 (1, 64, 64, 3)" in text
    assert "checked: outputs: logits array float32 (1, 1000)" in text
    assert "(2.00 bytes each)" in text
    with pytest.raises(ValueError, match="was compared with Keras: not verified"):
        report.max_abs_error
    assert json.loads(json.dumps(report.to_dict()))["unverified"] == report.unverified


@needs_coremltools
def test_feature_extractor_takes_rgb_pixels_and_keeps_float32(packages):
    package = packages["features"]
    inputs, outputs = features(package)
    assert inputs == [coreml.Feature("images", "image", (SIZE, SIZE), "RGB")]
    model = package.model
    assert [o.name for o in outputs] == list(model.output_names)
    assert [o.shape for o in outputs] == [(1, *t.shape[1:]) for t in model.outputs]
    assert {o.dtype for o in outputs} == {"float32"} and len(outputs) == 4
    check = coreml.check_package(package.path)
    assert check.ok and "cast" not in check.operators  # float32 compute: nothing to cast
    assert check.operators["sub"] == 1  # the ImageNet normalisation inside (sub, mul)
    assert 3.9 < check.weight_bytes / keras_nextvit.merge_batchnorm(model).count_params() < 4.1
    assert "image RGB (64, 64)" in str(package.report)


@needs_coremltools
@pytest.mark.parametrize("head", ["fpn", "upernet"])
def test_segmenters(packages, head):
    package = packages[head]
    inputs, outputs = features(package)
    assert inputs == [coreml.Feature("images", "array", (1, SIZE, SIZE, 3), "float32")]
    assert [(o.shape, o.dtype) for o in outputs] == [((1, SIZE, SIZE, 5), "float32")]
    check = coreml.check_package(package.path)
    assert check.ok, check.problems
    assert "upsample_bilinear" in check.operators and "gather" not in check.operators
    merged = keras_nextvit.merge_batchnorm(package.model)
    each = check.weight_bytes / merged.count_params()
    if head == "fpn":  # int8 weights, expanded to float16 when the model loads
        assert package.report.quantize == "int8" and check.operators["constexpr_affine_dequantize"] > 0
        assert check.operators["upsample_nearest_neighbor"] == 3  # the top-down path, not gathers
        assert 0.95 < each < 1.1
    else:
        assert 1.9 < each < 2.1


# ---------------------------------------------------------------- the checker
@needs_coremltools
def test_a_planted_operator_and_chains_fail_the_check():
    ct = coreml.require()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 8, 4))], opset_version=ct.target.iOS16)
    def program(x):
        y = mb.relu(x=mb.transpose(x=x, perm=[0, 3, 1, 2]))  # the input's layout adapter: fine
        y = mb.transpose(x=mb.transpose(x=y, perm=[0, 2, 3, 1]), perm=[0, 3, 1, 2])  # a chain
        y = mb.relu(x=mb.cast(x=y, dtype="fp16"))  # a precision switch inside
        y = mb.gather(x=y, indices=np.array([0, 2], np.int32), axis=1)  # not on the list
        return mb.relu(x=mb.cast(x=y, dtype="fp32"))

    mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                         pass_pipeline=ct.PassPipeline.EMPTY, compute_precision=ct.precision.FLOAT32)
    check = coreml.check_spec(mlmodel.get_spec())
    assert not check.ok and check.unsupported == {"gather": 1}
    assert check.chains == ["transpose -> transpose at transpose_2", "transpose -> cast at cast_0",
                            "cast inside the program at cast_1"]
    assert any("OFF the Neural Engine list: {'gather': 1}" in line for line in check.lines())
    # with gather allowed, only the chains remain
    assert coreml.check_spec(mlmodel.get_spec(), allowed=coreml.NEURAL_ENGINE_OPS | {"gather"}).unsupported == {}


@needs_coremltools
def test_a_planted_operator_in_an_exported_package_fails(packages):
    spec = coreml.load_spec(packages["classifier"].path)
    block = coreml._main_block(spec.mlProgram.functions["main"])
    next(op for op in block.operations if op.type == "softmax").type = "non_zero"
    inputs, outputs = features(packages["classifier"])
    check = coreml.check_spec(spec, inputs, outputs)
    assert check.unsupported == {"non_zero": 1}
    assert check.problems == ["operators outside the Neural Engine list: {'non_zero': 1}"]
    wrong = [coreml.Feature("logits", "array", (1, 10), "float32")]
    assert "outputs are [logits array float32 (1, 1000)], expected [logits array float32 (1, 10)]" in (
        coreml.check_spec(spec, inputs, wrong).problems[-1])


def test_the_forms_compute_the_keras_layers():
    """What the conversion traces (a grouped conv in one, pointwise layers as
    1x1 convs, the FPN's nearest upsampling as a resize) is what Keras
    computes; run under XLA, the only way TensorFlow runs grouped
    convolutions on a CPU."""
    import tensorflow as tf

    from keras_nextvit.layers import MHCA
    from keras_nextvit.segmentation import fpn

    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 12, 64))
    x = MHCA(64, deploy=True, name="mhca")(inputs)
    x = keras.layers.Dense(48, activation="relu", name="pointwise")(x)
    model = keras.Model(inputs, [x, keras.layers.Dense(5, name="tokens")(keras.layers.Reshape((96, 48))(x))])
    images = np.random.default_rng(0).standard_normal((2, 8, 12, 64)).astype("float32")
    expected = [np.asarray(o) for o in model(images)]
    with coreml.coreml_forms(model):
        forms = tf.function(lambda x: model(x), jit_compile=True)
        got = [np.asarray(o) for o in forms(images)]
        upsampled = np.asarray(fpn.resize_nearest(tf.constant(images[..., :3]), (16, 36)))
        odd = fpn.resize_nearest(tf.constant(images[..., :3]), (11, 13))  # not a whole factor: the gathers
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(upsampled, np.asarray(fpn.resize_nearest(images[..., :3], (16, 36))))
    np.testing.assert_array_equal(np.asarray(odd), np.asarray(fpn.resize_nearest(images[..., :3], (11, 13))))
    assert "call" not in model.get_layer("pointwise").__dict__  # restored
    assert fpn.resize_nearest.__module__ == "keras_nextvit.segmentation.ops"


# ---------------------------------------------------------------- requests
def test_without_coremltools_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    from unittest import mock

    from keras_nextvit import cli

    monkeypatch.setitem(sys.modules, "coremltools", None)  # as if not installed
    extra = 'pip install "keras-nextvit[coreml]"'
    with pytest.raises(coreml.CoreMLUnavailable, match=extra.replace("[", r"\[").replace("]", r"\]")):
        exporters.check_request(tmp_path / "m.mlpackage", "coreml")
    assert not coreml.has_runtime()
    with mock.patch("keras_nextvit.model.NextViT", side_effect=AssertionError("a model was built")):
        assert cli.main(["export", str(tmp_path / "m.mlpackage"), "--format", "coreml", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-nextvit export: error: The CoreML format needs "
                                                   "coremltools") and extra in err and "Traceback" not in err


@needs_coremltools
def test_requests_coreml_cannot_carry_out(tmp_path):
    with pytest.raises(ValueError, match=r"is a \.mlpackage package; got .*m\.onnx"):
        exporters.check_request(tmp_path / "m.onnx", "coreml")
    with pytest.raises(ValueError, match="fixed batch size"):
        exporters.check_request(tmp_path / "m.mlpackage", "coreml", batch_size=None)
    with pytest.raises(ValueError, match="not available for coreml"):
        exporters.check_request(tmp_path / "m.mlpackage", "coreml", "dynamic")
    with pytest.raises(ValueError, match="format='saved_model' and format='coreml' only"):
        exporters.check_request(tmp_path / "m.tflite", "tflite", uint8_input=True)
    # int8 is weight quantization: no calibration data needed; float16 is the default
    exporters.check_request(tmp_path / "m.mlpackage", "coreml", "int8", uint8_input=True)
    assert exporters.default_quantize("coreml") == "float16" and exporters.default_quantize("tflite") == "none"
    with pytest.raises(ValueError, match="A detector does not export to CoreML: .*batched NMS.*detector.backbone"):
        exporters._export_detector(None, tmp_path / "d.mlpackage", "coreml", "float16", True, None, None, True)


# ---------------------------------------------------------------- the Mac side, on a stand-in
class ComputeUnit:
    def __init__(self, name):
        self.name = name


def fake_coremltools(outputs_for, calls, real_load_spec, plan=None):
    """A stand-in for the coremltools a Mac has: ``MLModel(path,
    compute_units=...)`` reads the real package's description and
    ``predict`` answers with ``outputs_for(inputs, compute_units)``."""
    ct = types.ModuleType("coremltools")
    ct.__version__ = "9.0-stand-in"
    ct.ComputeUnit = types.SimpleNamespace(**{n: ComputeUnit(n) for n in coreml.COMPUTE_UNITS})

    class MLModel:
        def __init__(self, path, compute_units=None):
            self.path, self.units = path, compute_units.name
            self.spec = real_load_spec(path)
            calls.append(("load", path.rsplit("/", 1)[-1], self.units))

        def get_spec(self):
            return self.spec

        def get_compiled_path(self):
            return self.path + "c"

        def predict(self, data):
            calls.append(("predict", self.units, {k: type(v).__name__ for k, v in data.items()}))
            return outputs_for(data, self.units)

    ct.models = types.ModuleType("coremltools.models")
    ct.models.MLModel = MLModel
    modules = {"coremltools": ct, "coremltools.models": ct.models}
    if plan is not None:
        ct.models.compute_plan = types.ModuleType("coremltools.models.compute_plan")
        ct.models.compute_plan.MLComputePlan = plan
        modules["coremltools.models.compute_plan"] = ct.models.compute_plan
    return modules


@needs_coremltools
def test_runner_feeds_pixels_to_an_image_input_and_arrays_to_an_array_input(packages, monkeypatch):
    from PIL import Image

    load = coreml.require().utils.load_spec  # the real one, before the stand-in replaces coremltools
    calls, seen = [], []
    shapes = {"classifier": [(1, 1000)], "features": [(1, *t.shape[1:]) for t in packages["features"].model.outputs]}
    feature_outputs = features(packages["features"])[1]

    def outputs_for(data, units):
        value = data["images"]
        seen.append(np.asarray(value))
        if isinstance(value, Image.Image):
            assert value.mode == "RGB" and value.size == (SIZE, SIZE)
            return {o.name: np.full(s, len(seen), np.float16) for o, s in zip(feature_outputs, shapes["features"])}
        assert value.dtype == np.float32 and value.shape == (1, SIZE, SIZE, 3)
        return {"logits": np.full((1, 1000), value.mean(), np.float32)}

    for name, module in fake_coremltools(outputs_for, calls, lambda path: load(str(path))).items():
        monkeypatch.setitem(sys.modules, name, module)
    images = np.random.default_rng(0).uniform(-2, 2, (3, SIZE, SIZE, 3)).astype(np.float32)
    runner = coreml.CoreMLRunner(packages["classifier"].path, "CPU_AND_NE")
    assert not runner.image and runner.batch == 1 and runner.names == ["logits"]
    (logits,) = runner(images)  # a batch of 3 through a batch-1 package: three predictions
    np.testing.assert_allclose(logits[:, 0], images.reshape(3, -1).mean(axis=1), rtol=1e-6)
    assert calls[0][2] == "CPU_AND_NE" and [c[0] for c in calls].count("predict") == 3
    pixels = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    runner = coreml.CoreMLRunner(packages["features"].path, "ALL")
    assert runner.image and runner.names == list(packages["features"].model.output_names)
    outs = runner(pixels)
    assert [o.shape for o in outs] == [(2, *s[1:]) for s in shapes["features"]] and outs[0].dtype == np.float32
    np.testing.assert_array_equal(seen[-1], pixels[1])  # each image as a PIL image, in order
    with pytest.raises(ValueError, match="takes uint8 RGB pixels"):
        runner(pixels.astype(np.float32))
    with pytest.raises(ValueError, match="compute_units must be one of"):
        coreml.CoreMLRunner(packages["features"].path, "GPU")


@needs_coremltools
def test_on_a_mac_the_export_verifies_on_all_units_and_the_cpu(packages, tiny, tmp_path, monkeypatch):
    """Where CoreML runs (macOS), the report compares the package with Keras
    on compute units ALL, and on the CPU alone as a variant. Here a runner
    that computes the Keras model (rounded to float16 off the CPU) stands in
    for CoreML, and the classifier's package for the conversion."""
    import shutil

    units = []

    class Runner:
        def __init__(self, path, compute_units):
            units.append(compute_units)
            self.units = compute_units

        def __call__(self, images):
            out = np.asarray(tiny(images, training=False))
            return [out if self.units == "CPU_ONLY" else out.astype(np.float16).astype(np.float32)]

    monkeypatch.setattr(coreml, "convert", lambda model, path, *args: shutil.copytree(packages["classifier"].path, path))
    monkeypatch.setattr(coreml, "has_runtime", lambda: True)
    monkeypatch.setattr(coreml, "CoreMLRunner", Runner)
    report = keras_nextvit.export(tiny, tmp_path / "m.mlpackage", format="coreml")
    assert units == ["ALL", "CPU_ONLY"] and report.unverified is None
    assert report.cosine > 0.9999 and report.top1_agreement == 1
    assert report.variants["cpu_only"].max_abs_error < 1e-4 * report.output().max_abs_reference
    assert "checked: operators:" in str(report) and "latency" in str(report)


def test_check_tool_loads_the_coreml_code_without_tensorflow():
    """The Mac that runs `check` need not have TensorFlow or Keras."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import coreml_check as t; "
        "coreml, verify = t.load_exporters(); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'; "
        "print(sorted(coreml.QUANTIZE_MODES), verify.compare.__name__, t.bar_for('none', 'CPU_ONLY'))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(TOOLS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['float16', 'int8', 'none'] compare ('relative_error', '<=', 0.0001)" in result.stdout


@needs_coremltools
def test_check_tool_prepares_here_and_checks_on_a_stand_in(tmp_path, monkeypatch, capsys):
    """`prepare` writes a real package and the Keras outputs; `check` runs it
    on every compute unit of a stand-in CoreML (float32 on the CPU, float16
    rounding elsewhere, and a broken Neural Engine in a second run) and
    prints the table."""
    tool = load_tool("coreml_check")
    out = tmp_path / "prepared"
    assert tool.main(["prepare", "--out", str(out), "--variant", "1,1,5,1", "--size", "32",
                      "--quantize", "float16", "--images", "3"]) == 0
    printed = capsys.readouterr().out
    assert "numbers not verified" in printed and "wrote model_float16.mlpackage and reference.npz" in printed
    reference = np.load(out / "reference.npz")
    assert reference["images"].shape == (3, 32, 32, 3) and reference["pixels"].dtype == np.uint8
    assert list(reference["names"]) == ["logits"] and reference["output_0"].shape == (3, 1000)

    load = coreml.require().utils.load_spec  # the real one, before the stand-in replaces coremltools
    images, logits = reference["images"], reference["output_0"]
    broken = {"units": None}

    def outputs_for(data, units):  # the Keras logits of the image given, as each unit would round them
        index = int(np.argmin(np.abs(images - data["images"]).reshape(len(images), -1).max(axis=1)))
        out = logits[index : index + 1]
        if units != "CPU_ONLY":
            out = out.astype(np.float16)
        if units == broken["units"]:
            out = np.random.default_rng(index).standard_normal(out.shape)
        return {"logits": out}

    class Plan:
        @classmethod
        def load_from_path(cls, path, compute_units):
            plan = cls()
            ops = [types.SimpleNamespace(operator_name=n) for n in ("const", "conv", "conv", "softmax", "cast")]
            block = types.SimpleNamespace(operations=ops)
            main = types.SimpleNamespace(block=block)
            plan.model_structure = types.SimpleNamespace(program=types.SimpleNamespace(functions={"main": main}))
            return plan

        def get_compute_device_usage_for_mlprogram_operation(self, op):
            device = type("MLCPUComputeDevice" if op.operator_name == "cast" else "MLNeuralEngineComputeDevice",
                          (), {})()
            return types.SimpleNamespace(preferred_compute_device=device)

    calls = []
    for name, module in fake_coremltools(outputs_for, calls, lambda path: load(str(path)), Plan).items():
        monkeypatch.setitem(sys.modules, name, module)
    tool.load_exporters()
    report = tmp_path / "report.json"
    code = tool.main(["check", "--dir", str(out), "--repeats", "2", "--warmup", "1", "--json", str(report)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = json.loads(report.read_text())["rows"]
    assert [r["compute_units"] for r in rows] == ["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"]
    assert rows[0]["max_abs_error"] == 0 and rows[0]["quantize"] == "float16"
    assert all(r["meets"] and r["cosine"] > 0.999999 and r["top1_agreement"] == 1 for r in rows)
    assert "coremltools 9.0-stand-in" in printed and "package" in printed and "batch 1 ms" in printed
    assert "model_float16.mlpackage: Core ML's plan on ALL: NeuralEngine 3; CPU 1 (cast 1)" in printed
    assert ("load", "model_float16.mlpackage", "CPU_AND_NE") in calls

    broken["units"] = "CPU_AND_NE"
    assert tool.main(["check", "--dir", str(out), "--repeats", "1", "--warmup", "0", "--no-compute-plan"]) == 1
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "CPU_AND_NE" in line)
    assert "MISSES" in line and "cosine >= 0.999" in line and "plan" not in printed


# ---------------------------------------------------------------- the published variants
@needs_coremltools
@pytest.mark.slow
@pytest.mark.parametrize("variant,size", [("small", 224), ("base", 224), ("large", 224),
                                          ("small", 384), ("base", 384), ("large", 384)])
def test_published_variants_convert(tmp_path, variant, size):
    """Next-ViT-S/B/L at 224 and at the 384 presets' size (random weights:
    the conversion does not depend on them): float16 ML Programs whose
    every operator is on the Neural Engine list. Each converts in a process
    of its own: Next-ViT-L's conversion takes ~3 GB, which a test worker
    would add to what the tests before it left (7.6 GB in all in the suite)."""
    path = tmp_path / f"{variant}_{size}.mlpackage"
    result = subprocess.run([sys.executable, "-c", CONVERT_PUBLISHED, variant, str(size), str(path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert report["unverified"] and "all on the Neural Engine list" in report["checks"][0]
    inputs, outputs = features(types.SimpleNamespace(path=path))
    assert inputs == [coreml.Feature("images", "array", (1, size, size, 3), "float32")]
    assert outputs == [coreml.Feature("logits", "array", (1, 1000), "float32")]


CONVERT_PUBLISHED = """
import json, sys
import keras_nextvit
from keras_nextvit.presets import VARIANTS

variant, size, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = keras_nextvit.NextViT(VARIANTS[variant]["depths"], input_shape=(size, size, 3), drop_path_rate=0.0)
report = keras_nextvit.export(model, path, format="coreml")
print(json.dumps({"unverified": bool(report.unverified), "checks": list(report.checks)}))
"""
