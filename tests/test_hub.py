"""keras_nextvit.hub: Next-ViT in keras-hub's task API (presets,
ImageClassifier, DeepLabV3, RetinaNet)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import JAX_QUICK_COMPILE_UNFUSED, TINY, assert_close, synthetic_checkpoint

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import keras_nextvit  # noqa: E402
from keras_nextvit import hub, training  # noqa: E402
from keras_nextvit.hub.shapes import coloured_shapes  # noqa: E402


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def save_safetensors(state, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def hub_presets(tmp_path_factory):
    """For each naming, a synthetic-weight Next-ViT-S checkpoint and the
    keras-hub preset folder written from it: ``{naming: (checkpoint, folder)}``."""
    tmp = tmp_path_factory.mktemp("hub")
    presets = {}
    for naming in ("timm", "official"):
        checkpoint = save_safetensors(synthetic_checkpoint("small", naming), tmp / f"{naming}.safetensors")
        hub.save_preset(checkpoint, str(tmp / naming))
        presets[naming] = (checkpoint, str(tmp / naming))
    return presets


@pytest.fixture(scope="module")
def hub_preset(hub_presets):
    return hub_presets["timm"]


@pytest.mark.parametrize("naming", ["timm", "official"])
@pytest.mark.slow
def test_image_classifier_from_preset_equals_nextvit(hub_presets, naming):
    """keras-hub's base ImageClassifier.from_preset finds the Next-ViT task and
    computes the logits of NextViTSmall(weights=checkpoint)."""
    checkpoint, folder = hub_presets[naming]
    for name in ("config.json", "model.weights.h5", "task.json", "task.weights.h5",
                 "preprocessor.json", "metadata.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    classifier = keras_hub.models.ImageClassifier.from_preset(folder)
    assert isinstance(classifier, hub.NextViTImageClassifier)
    assert isinstance(classifier.backbone, hub.NextViTBackbone)
    assert classifier.backbone.depths == (3, 4, 10, 3)
    x = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype("float32")
    expected = numpy(keras_nextvit.NextViTSmall(weights=checkpoint)(x))
    assert_close(numpy(classifier(x)), expected, rel=1e-5, what="from_preset logits")
    # and the backbone alone
    backbone = keras_hub.models.Backbone.from_preset(folder)
    assert isinstance(backbone, hub.NextViTBackbone)


@pytest.mark.slow
def test_preprocessor_is_the_presets_transform(hub_preset):
    """The preset's preprocessor resizes, crops and normalises as
    load_image + preprocess_input do (Keras' antialiased bicubic resize
    instead of PIL's); predict() applies it."""
    _, folder = hub_preset
    from PIL import Image

    classifier = keras_hub.models.ImageClassifier.from_preset(folder)
    converter = classifier.preprocessor.image_converter
    assert (converter.crop_size, converter.crop_pct) == ((224, 224), 0.95)
    raw = np.asarray(Image.open(keras_nextvit.preprocessing.SAMPLE_IMAGE).convert("RGB"))
    ours = numpy(converter(raw[None]))
    expected = keras_nextvit.preprocess_input(keras_nextvit.load_image(raw)[None])
    assert ours.shape == expected.shape == (1, 224, 224, 3)
    assert np.mean(np.abs(ours - expected)) < 0.02  # ~1 grey level of 255
    # an image already at the crop size, crop_pct 1: no resize, only normalisation
    exact = hub.NextViTImageConverter(image_size=224, crop_pct=1.0)
    np.testing.assert_allclose(numpy(exact(expected_uint8 := keras_nextvit.load_image(raw)[None])),
                               keras_nextvit.preprocess_input(expected_uint8), atol=1e-5)
    logits = classifier.predict(raw[None], verbose=0)
    np.testing.assert_allclose(logits, numpy(classifier(ours)), atol=1e-5 * np.abs(logits).max())


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.slow
def test_from_preset_on_backend(hub_presets, backend):
    """The preset folders (written on TensorFlow) load on JAX and PyTorch and
    give NextViTSmall's logits there, for both namings."""
    pytest.importorskip(backend)
    code = f"""
        import numpy as np, keras, keras_hub, keras_nextvit
        assert keras.backend.backend() == {backend!r}
        x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype("float32")
        for checkpoint, folder in {list(hub_presets.values())!r}:
            a = keras.ops.convert_to_numpy(keras_hub.models.ImageClassifier.from_preset(folder)(x))
            b = keras.ops.convert_to_numpy(keras_nextvit.NextViTSmall(weights=checkpoint)(x))
            err, bound = float(np.abs(a - b).max()), 1e-5 * float(np.abs(b).max())
            assert err <= bound, (folder, err, bound)
            print("OK", folder, err, bound)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
             **(JAX_QUICK_COMPILE_UNFUSED if backend == "jax" else {})},
    )
    assert out.returncode == 0 and out.stdout.count("OK") == 2, (out.stdout + out.stderr)[-3000:]


@pytest.fixture(scope="module")
def tiny():
    """A small NextViT with random weights and the hub backbone that carries them."""
    keras.utils.set_random_seed(0)
    model = keras_nextvit.NextViT(depths=TINY, input_shape=(None, None, 3), classes=5)
    return model, hub.backbone_from_model(model)


@pytest.mark.slow
def test_pyramid_outputs_equal_feature_extractor(tiny):
    model, backbone = tiny
    assert sorted(backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    x = np.random.default_rng(1).standard_normal((2, 64, 96, 3)).astype("float32")
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)(x)
    features = keras_nextvit.feature_extractor(model)(x)
    for level, (stride, expected) in enumerate(zip((4, 8, 16, 32), features), start=2):
        got = numpy(pyramid[f"P{level}"])
        assert got.shape[1:3] == (64 // stride, 96 // stride)
        np.testing.assert_array_equal(got, numpy(expected))
    # the backbone's own output: the normalised last map of include_top=False
    top_less = keras.Model(model.inputs, model.get_layer("norm").output)
    np.testing.assert_array_equal(numpy(backbone(x)), numpy(top_less(x)))


@pytest.mark.slow
def test_backbone_round_trips(tiny, tmp_path):
    _, backbone = tiny
    x = np.random.default_rng(2).standard_normal((1, 64, 64, 3)).astype("float32")
    expected = numpy(backbone(x))
    backbone.save(tmp_path / "b.keras")
    reloaded = keras.saving.load_model(tmp_path / "b.keras")
    assert isinstance(reloaded, hub.NextViTBackbone) and reloaded.depths == TINY
    np.testing.assert_array_equal(numpy(reloaded(x)), expected)
    backbone.save_to_preset(str(tmp_path / "preset"))
    from_preset = hub.NextViTBackbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(numpy(from_preset(x)), expected)
    assert from_preset.get_config() == backbone.get_config()


@pytest.mark.slow
def test_classifier_round_trip(tiny, tmp_path):
    """A classifier with its preprocessor, saved and reloaded as .keras."""
    _, backbone = tiny
    data = coloured_shapes(2, 80, seed=3)
    classifier = hub.NextViTImageClassifier(
        backbone, num_classes=3,
        preprocessor=hub.NextViTImageClassifierPreprocessor(
            hub.NextViTImageConverter(image_size=64, crop_pct=0.9)
        ),
    )
    expected = classifier.predict(data["images"][:2], verbose=0)
    classifier.save(tmp_path / "c.keras")
    reloaded = keras.saving.load_model(tmp_path / "c.keras")
    np.testing.assert_allclose(reloaded.predict(data["images"][:2], verbose=0), expected, atol=1e-6)


def _fit(task, x, y, epochs):
    # the optimizer's variables made before fit: TensorFlow traces the
    # training step once instead of twice
    training.build_optimizer_variables(task)
    history = task.fit(x, y, batch_size=4, epochs=epochs, verbose=0).history["loss"]
    assert history[-1] < history[0], f"the loss did not fall: {history}"
    return history


@pytest.mark.slow
def test_deeplab_v3_with_nextvit_encoder(tmp_path):
    keras.utils.set_random_seed(0)
    data = coloured_shapes(8, 64, seed=0)
    x = data["images"] / 127.5 - 1
    encoder = hub.NextViTBackbone(depths=TINY, drop_path_rate=0.0)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=[1, 2, 3], low_level_feature_key="P2", projection_filters=16,
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone, num_classes=4)
    segmenter.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,  # XLA's compile costs more than it saves in 3 epochs
    )
    _fit(segmenter, x, data["masks"][..., None], epochs=3)
    expected = numpy(segmenter(x[:2]))
    assert expected.shape == (2, 64, 64, 4)
    segmenter.save(tmp_path / "deeplab.keras")
    reloaded = keras.saving.load_model(tmp_path / "deeplab.keras")
    np.testing.assert_allclose(numpy(reloaded(x[:2])), expected, atol=1e-6)


@pytest.mark.slow
def test_retinanet_with_nextvit_encoder(tmp_path):
    keras.utils.set_random_seed(0)
    data = coloured_shapes(8, 64, seed=0)
    x = data["images"] / 127.5 - 1
    encoder = hub.NextViTBackbone(depths=TINY, drop_path_rate=0.0)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=5, use_p5=False, use_fpn_batch_norm=True
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone, num_classes=3, bounding_box_format="yxyx", pre_logits_num_conv_layers=1
    )
    detector.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
    _fit(detector, x, {"boxes": data["boxes"], "labels": data["labels"]}, epochs=3)
    detections = detector.predict(x[:2], verbose=0)
    assert detections["boxes"].shape[0] == 2 and detections["boxes"].shape[-1] == 4
    expected = {k: numpy(v) for k, v in detector(x[:2]).items()}
    detector.save(tmp_path / "retinanet.keras")
    reloaded = keras.saving.load_model(tmp_path / "retinanet.keras")
    for key, value in reloaded(x[:2]).items():
        np.testing.assert_allclose(numpy(value), expected[key], atol=1e-6, err_msg=key)


def test_save_preset_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="Unknown preset 'nextvit_smal'"):
        hub.save_preset("nextvit_smal", tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        hub.save_preset(str(tmp_path / "missing.safetensors"), tmp_path / "p")
    checkpoint = save_safetensors(synthetic_checkpoint("small"), tmp_path / "s.safetensors")
    with pytest.raises(keras_nextvit.CheckpointError, match="not the requested variant 'base'"):
        hub.save_preset(checkpoint, tmp_path / "p", variant="base")
    with pytest.raises(ValueError, match="crop_pct"):
        hub.NextViTImageConverter(crop_pct=1.5)
    with pytest.raises(ValueError, match="channels-last RGB"):
        hub.NextViTImageConverter(image_size=32)(np.zeros((1, 3, 40, 40)))
    with pytest.raises(ValueError, match="data_format must be"):
        hub.NextViTBackbone(depths=TINY, data_format="channels_middle")
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        hub.NextViTBackbone(depths=TINY, image_shape=(3, 64), data_format="channels_first")
    with pytest.raises(ValueError, match="below the minimum"):
        hub.NextViTBackbone(depths=TINY, image_shape=(16, 16, 3))


@pytest.mark.slow
def test_cli_hub_preset(hub_preset, tmp_path, capsys):
    from keras_nextvit import cli

    checkpoint, _ = hub_preset
    folder = str(tmp_path / "cli_preset")
    assert cli.main(["hub-preset", checkpoint, folder, "--image-size", "256", "--crop-pct", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "ImageClassifier.from_preset" in out
    converter = keras_hub.models.ImageClassifier.from_preset(folder).preprocessor.image_converter
    assert (converter.crop_size, converter.crop_pct) == ((256, 256), 1.0)
    assert cli.main(["hub-preset", "nextvit_smal", folder]) == 2
    assert "Unknown preset" in capsys.readouterr().err


@pytest.mark.parametrize("order", ["keras_nextvit, keras_hub", "keras_hub, keras_nextvit"])
@pytest.mark.slow
def test_registered_once_keras_hub_is_imported(order):
    """keras-hub loads TensorFlow, so ``import keras_nextvit`` leaves it alone
    on other backends; the hub classes are registered as soon as keras_hub is
    imported, before or after keras_nextvit."""
    code = f"""
        import sys, keras
        for name in "{order}".split(", "):
            __import__(name)
            if name == "keras_nextvit":
                print("HUB_AFTER_NEXTVIT", "keras_hub" in sys.modules)
        print("REGISTERED", keras.saving.get_registered_object("keras_nextvit>NextViTBackbone") is not None)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REGISTERED True" in out.stdout, out.stdout
    if order.startswith("keras_nextvit"):
        assert "HUB_AFTER_NEXTVIT False" in out.stdout, out.stdout


@pytest.mark.slow
def test_without_keras_hub():
    """Without keras-hub, keras_nextvit imports and keras_nextvit.hub (and the
    command) say what to install."""
    code = """
        import sys
        sys.modules["keras_hub"] = None
        import keras_nextvit
        assert "keras_nextvit.hub" not in sys.modules
        try:
            import keras_nextvit.hub
        except ImportError as error:
            print("ERROR", error)
        from keras_nextvit import cli
        print("EXIT", cli.main(["hub-preset", "nextvit_small.bd_in1k", "out"]))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'pip install "keras-nextvit[keras-hub]"' in out.stdout, out.stdout
    assert "EXIT 2" in out.stdout
    assert 'pip install "keras-nextvit[keras-hub]"' in out.stderr
    assert "Traceback" not in out.stderr
