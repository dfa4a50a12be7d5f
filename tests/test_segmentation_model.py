"""Segmenters: building, checkpoints (mmseg, classification backbones), every
bad input, segment() and its pipeline, the command line, serialisation."""

import functools

import keras
import numpy as np
import pytest
from conftest import infer, synthetic_checkpoint
from test_segmentation_parity import seg_checkpoint

import keras_nextvit
from keras_nextvit import cli
from keras_nextvit.segmentation import NextViTSegmenter, inference
from keras_nextvit.weights import CheckpointError

TINY = dict(variant=(1, 1, 5, 1), num_classes=5, channels=(32, 16))


@functools.lru_cache(maxsize=None)
def small(head="fpn", auxiliary=False):
    return NextViTSegmenter("small", head, auxiliary_head=auxiliary)


def images(shape=(2, 64, 64, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def assert_same_outputs(a, b, x):
    np.testing.assert_array_equal(infer(a, x), infer(b, x))


# ------------------------------------------------------------- checkpoints


def save_pth(state, path, wrap=True):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    # A published mmseg checkpoint: the tensors under state_dict, meta beside them.
    torch.save({"meta": {"CLASSES": ["a"], "iter": 80000}, "state_dict": tensors} if wrap else tensors, path)


@pytest.mark.slow
def test_published_checkpoint_formats(tmp_path):
    model = small()
    state = seg_checkpoint("fpn", "small")
    keras_nextvit.load_torch_weights(model, state)
    expected = infer(model, images())
    save_pth(state, tmp_path / "fpn.pth")
    again = NextViTSegmenter("small", "fpn", weights=str(tmp_path / "fpn.pth"))
    np.testing.assert_array_equal(infer(again, images()), expected)
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "fpn.safetensors"))
    keras_nextvit.load_torch_weights(again, tmp_path / "fpn.safetensors")
    np.testing.assert_array_equal(infer(again, images()), expected)


@pytest.mark.slow
def test_auxiliary_head_loaded_or_skipped():
    state = seg_checkpoint("upernet", "small")
    with_aux = small("upernet", True)
    keras_nextvit.load_torch_weights(with_aux, state)
    aux = with_aux.get_layer("auxiliary_head").convs[0].conv.kernel
    np.testing.assert_array_equal(
        np.asarray(aux), state["auxiliary_head.convs.0.conv.weight"].transpose(2, 3, 1, 0)
    )
    without = small("upernet")
    keras_nextvit.load_torch_weights(without, state)  # auxiliary_head.* skipped by name
    x = images()
    np.testing.assert_allclose(
        infer(without, x), infer(with_aux, x)[0], rtol=0, atol=1e-5
    )


def test_classification_checkpoint_as_weights_says_backbone_weights():
    with pytest.raises(CheckpointError, match="backbone_weights="):
        keras_nextvit.load_torch_weights(small(), synthetic_checkpoint("small"))


@pytest.mark.parametrize("naming", ["timm", "official"])
def test_backbone_weights_from_a_classification_checkpoint(naming):
    state = synthetic_checkpoint("small", naming)
    model = NextViTSegmenter("small", "fpn", backbone_weights=state)
    classifier = keras_nextvit.NextViTSmall(input_shape=(None, None, 3))
    keras_nextvit.load_torch_weights(classifier, state)
    for layer in classifier.layers:
        if layer.name.startswith(("stem_", "stages_")) or layer.name == "norm":
            for mine, theirs in zip(model.get_layer(layer.name).weights, layer.weights, strict=True):
                np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs), err_msg=mine.path)
    fresh = model.get_layer("extra_norm_1")  # not in the checkpoint: starts fresh
    np.testing.assert_array_equal(np.asarray(fresh.gamma), np.ones(256))
    np.testing.assert_array_equal(np.asarray(fresh.moving_variance), np.ones(256))


def test_backbone_weights_from_a_segmentation_checkpoint():
    state = seg_checkpoint("upernet", "small")
    model = NextViTSegmenter("small", "fpn", backbone_weights=state)
    kernel = np.asarray(model.get_layer("stages_2_blocks_4").e_mhsa.k.kernel)
    np.testing.assert_array_equal(kernel, state["backbone.features.11.e_mhsa.k.weight"].T)


def test_segmentation_checkpoint_of_another_variant_or_head():
    with pytest.raises(CheckpointError, match=r"Next-ViT-B \+ Semantic FPN") as error:
        keras_nextvit.load_torch_weights(small(), seg_checkpoint("fpn", "base"))
    assert "Next-ViT-S" in str(error.value)
    with pytest.raises(CheckpointError, match=r"looks like Next-ViT-S \+ UperNet"):
        keras_nextvit.load_torch_weights(small(), seg_checkpoint("upernet", "small"))
    with pytest.raises(CheckpointError, match="segmentation model"):
        keras_nextvit.load_torch_weights(
            keras_nextvit.NextViTSmall(input_shape=(64, 64, 3)), seg_checkpoint("fpn", "small")
        )


def test_other_number_of_classes_and_nothing_assigned():
    model = NextViTSegmenter("small", "fpn", num_classes=19)
    before = [np.asarray(v).copy() for v in model.weights[:3]]
    with pytest.raises(CheckpointError, match=r"150 classes.*num_classes"):
        keras_nextvit.load_torch_weights(model, seg_checkpoint("fpn", "small"))
    for value, variable in zip(before, model.weights[:3]):
        np.testing.assert_array_equal(value, np.asarray(variable))


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="head must be one of"):
        NextViTSegmenter("small", "deeplab")
    with pytest.raises(ValueError, match="variant must be one of"):
        NextViTSegmenter("tiny")
    with pytest.raises(ValueError, match="below the minimum of 32"):
        NextViTSegmenter(input_shape=(16, 64, 3))
    with pytest.raises(ValueError, match="not both"):
        NextViTSegmenter(weights="a.pth", backbone_weights="nextvit_small.bd_in1k")
    model = NextViTSegmenter(**TINY)
    with pytest.raises(ValueError, match="height 20 is below the minimum of 32"):
        model.predict(np.zeros((1, 20, 64, 3)), verbose=0)


# ------------------------------------------------------- forms of the model


@pytest.mark.parametrize("head", ["fpn", "upernet"])
@pytest.mark.slow
def test_keras_file_round_trip_and_fixed_size_form(tmp_path, head):
    """A .keras round trip computes the same; a fixed-size build (where the
    TensorFlow backend resizes with its native bilinear op) computes what
    the any-size build (explicit gathers) does, at an odd size."""
    model = NextViTSegmenter(head=head, auxiliary_head=head == "upernet", **TINY)
    x = images((1, 97, 65, 3))
    path = tmp_path / "seg.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    for a, b in zip(infer(model, x), infer(restored, x)):
        np.testing.assert_array_equal(a, b)
    fixed = NextViTSegmenter(head=head, input_shape=(97, 65, 3), auxiliary_head=head == "upernet", **TINY)
    fixed.set_weights(model.get_weights())
    for a, b in zip(infer(model, x), infer(fixed, x)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())


def test_stride_4_logits():
    model = NextViTSegmenter(upsample=False, **TINY)
    assert infer(model, images((1, 65, 97, 3))).shape == (1, 17, 25, 5)


# ------------------------------------------------------------------ segment


def test_rescaled_size_is_mmcv_keep_ratio():
    assert inference.rescaled_size(375, 500) == (512, 683)  # 512/375 binds
    assert inference.rescaled_size(300, 3000) == (205, 2048)  # 2048/3000 binds
    assert inference.rescaled_size(512, 512) == (512, 512)


def test_numpy_bilinear_is_pytorchs():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((13, 7, 4)).astype("float32")
    for size in ((29, 16), (5, 3), (13, 7), (26, 9)):
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x.transpose(2, 0, 1))[None], size=size, mode="bilinear", align_corners=False
        )[0].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(inference.resize_bilinear_numpy(x, size), expected, atol=1e-5)


class PixelModel:
    """A stand-in segmenter whose logits at a pixel depend on that pixel
    only: sliding windows must then reproduce whole-image inference."""

    def __call__(self, batch):
        return np.concatenate([batch, -batch.sum(-1, keepdims=True)], axis=-1)


def test_slide_equals_whole_for_a_pointwise_model():
    image = np.random.default_rng(4).integers(0, 256, (100, 131, 3), dtype=np.uint8)
    whole = inference.segment(PixelModel(), image, scale=None, return_logits=True)
    slide = inference.segment(
        PixelModel(), image, mode="slide", scale=None, crop_size=(64, 48), stride=(40, 33), return_logits=True
    )
    np.testing.assert_allclose(slide[1], whole[1], atol=1e-5)
    np.testing.assert_array_equal(slide[0], whole[0])


@pytest.mark.slow
def test_segment_is_the_model_at_the_images_size():
    model = NextViTSegmenter(**TINY)
    image = np.random.default_rng(5).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    classes, logits = inference.segment(model, image, scale=None, return_logits=True)
    direct = infer(model, keras_nextvit.preprocess_input(image[None]))[0]
    np.testing.assert_allclose(logits, direct, atol=1e-4 * np.abs(direct).max())
    assert classes.shape == (70, 90) and classes.dtype == np.int32
    resized = inference.segment(model, image)  # upstream default: short side to 512, back again
    assert resized.shape == (70, 90)


def test_segment_bad_input(tmp_path):
    model = NextViTSegmenter(**TINY)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt is not an image file"):
        inference.segment(model, text)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        inference.segment(model, tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="20x64 pixels; segmenting needs at least 32"):
        inference.segment(model, np.zeros((20, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="float in"):
        inference.segment(model, np.full((40, 40, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="shape \\(40, 40\\)"):
        inference.segment(model, np.zeros((40, 40)))
    fixed = NextViTSegmenter(input_shape=(64, 64, 3), **TINY)
    with pytest.raises(ValueError, match="takes 64x64 images only"):
        inference.segment(fixed, np.zeros((80, 80, 3), np.uint8), scale=None)


def test_plot_segmentation():
    from keras_nextvit import visualize

    image = np.zeros((40, 60, 3), np.uint8)
    classes = np.zeros((40, 60), np.int32)
    classes[:, 40:] = 2  # 'sky' takes a third
    fig = visualize.plot_segmentation(image, classes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["wall (67%)", "sky (33%)"]
    overlay = visualize.overlay_segmentation(image, classes, alpha=1.0)
    assert tuple(overlay[0, 50]) == (6, 230, 230)  # ADE20K's sky
    with pytest.raises(ValueError, match="same size"):
        visualize.overlay_segmentation(image, classes[:10])


# ------------------------------------------------------------ command line


@pytest.mark.slow
def test_segment_command(tmp_path, capsys):
    from PIL import Image

    from keras_nextvit.preprocessing import SAMPLE_IMAGE

    out = tmp_path / "overlay.png"
    assert cli.main(["segment", str(SAMPLE_IMAGE), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "segmented chelsea.jpg" in printed.out and "randomly initialised" in printed.err
    with Image.open(SAMPLE_IMAGE) as photo, Image.open(out) as overlay:
        assert overlay.size == photo.size


def test_segment_command_bad_input_has_no_traceback(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert cli.main(["segment", str(text)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not an image file" in err and "Traceback" not in err
    assert cli.main(["segment", str(text.with_name("nope.png"))]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_info_segmentation_prints_sizes_and_flops(capsys):
    assert cli.main(["info", "--segmentation"]) == 0
    out = capsys.readouterr().out
    for count in ("35,227,926", "48,283,414", "61,338,902", "64,039,702", "77,095,190", "90,150,678"):
        assert count in out
    assert "207.6" in out and "967.8" in out  # GMACs without attention products; paper: 208, 968


def test_imports_run_one_way():
    """Builders -> loader -> naming: naming imports nothing of the package,
    the loader imports no builder."""
    import ast
    import pathlib

    package = pathlib.Path(keras_nextvit.__file__).parent

    def package_imports(path):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                found.add(node.module or "")
        return found

    assert package_imports(package / "naming.py") == set()
    loader = package_imports(package / "weights.py")
    assert not loader & {"model", "segmentation", "segmentation.model"}, loader


@pytest.mark.slow
def test_importing_the_package_loads_no_tensorflow_on_other_backends():
    """The segmentation package must not pull TensorFlow (its tf.data
    pipelines) into ``import keras_nextvit`` on the JAX backend."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    # keras first: the package then loads all its modules (registering them with Keras)
    code = (
        "import sys, keras, keras_nextvit; assert 'keras_nextvit.segmentation.model' in sys.modules; "
        "print('tensorflow' in sys.modules)"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_keras_weights_file_of_another_class_count_is_a_checkpoint_error(tmp_path):
    """``weights=`` with a ``.weights.h5`` goes through the loader the
    classifier and the detector share: a file that does not fit names the
    variable and both shapes instead of Keras' multi-line error."""
    path = tmp_path / "three.weights.h5"
    keras_nextvit.NextViTSegmenter((1, 1, 5, 1), "fpn", num_classes=3, input_shape=(64, 64, 3)).save_weights(path)
    with pytest.raises(keras_nextvit.CheckpointError, match=r"three\.weights\.h5 does not fit 'nextvit_custom_fpn': it "
                                                            r"holds decode_head/conv_seg/kernel with shape \(128, 3\), "
                                                            r"the model's is \(128, 5\)"):
        keras_nextvit.NextViTSegmenter((1, 1, 5, 1), "fpn", num_classes=5, input_shape=(64, 64, 3), weights=path)
    with pytest.raises(FileNotFoundError, match="Weights file not found"):
        keras_nextvit.NextViTSegmenter((1, 1, 5, 1), "fpn", num_classes=3, weights=tmp_path / "none.weights.h5")
