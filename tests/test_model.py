"""The model builder: shapes, sizes, serialization, bad input."""

import warnings

import keras
import numpy as np
import pytest
from conftest import infer
from keras import ops

import keras_nextvit
from keras_nextvit import flops


@pytest.fixture(scope="module")
def small_any():
    """Next-ViT-S for any input size, with random (seeded) weights."""
    keras.utils.set_random_seed(0)
    return keras_nextvit.NextViTSmall(input_shape=(None, None, 3))


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "builder,params,gmacs",
    [
        (keras_nextvit.NextViTSmall, 31_763_368, 5.76),
        (keras_nextvit.NextViTBase, 44_818_856, 8.23),
        (keras_nextvit.NextViTLarge, 57_874_344, 10.69),
    ],
)
def test_parameters_and_macs(builder, params, gmacs):
    model = builder(input_shape=(224, 224, 3))
    assert flops.trainable_parameters(model) == params
    for attention in (True, False):
        measured = flops.count_macs(model, 224, attention=attention) / 1e9
        assert abs(measured - gmacs) <= 0.02 * gmacs, (attention, measured)


def test_mac_count_grows_with_input(small_any):
    # Convolutions scale with pixels; attention grows faster than that.
    small = flops.count_macs(small_any, 224)
    large = flops.count_macs(small_any, 448)
    assert 4 * small < large < 4.5 * small


def test_conv3x3_macs_of_next_vit_s(small_any):
    # Stem: 3x3 convs 3->64 (stride 2), 64->32, 32->64 at 112x112, 64->64 (stride 2) to 56x56.
    stem = 112 * 112 * 9 * (3 * 64 + 64 * 32 + 32 * 64) + 56 * 56 * 9 * 64 * 64
    # MHCA: positions x channels x 32 (head_dim) x 9 per block; an NTB's MHCA
    # runs on its last 25% of channels.
    mhca_channels = {56: [96] * 3, 28: [192] * 3 + [64], 14: ([384] * 4 + [128]) * 2, 7: [768] * 2 + [256]}
    mhca = sum(size * size * c * 32 * 9 for size, cs in mhca_channels.items() for c in cs)
    assert flops.conv3x3_macs(small_any, 224) == stem + mhca
    assert flops.conv3x3_macs(small_any, 224) < flops.count_macs(small_any, 224)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (65, 32), (45, 45), (64, 96)])
def test_any_input_size(small_any, size):
    features = keras_nextvit.feature_extractor(small_any)
    x = images((1, *size, 3))
    with warnings.catch_warnings():  # called with one tensor, as the classifier is: no structure warning
        warnings.filterwarnings("error", message="The structure of `inputs` doesn't match")
        outs = features(x)
    h, w = size
    for stride, channels, out in zip((4, 8, 16, 32), (96, 256, 512, 1024), outs):
        # stem: two stride-2 convs with padding 1; stages: ceil-mode pooling
        expected_h, expected_w = h, w
        for _ in range(int(np.log2(stride))):
            expected_h, expected_w = -(-expected_h // 2), -(-expected_w // 2)
        assert tuple(out.shape) == (1, expected_h, expected_w, channels), (stride, out.shape)
    logits = small_any(x)
    assert logits.shape == (1, 1000) and np.all(np.isfinite(logits))


def test_feature_extractor_shapes_at_224():
    model = keras_nextvit.NextViTSmall(input_shape=(224, 224, 3), include_top=False)
    features = keras_nextvit.feature_extractor(model)
    assert [tuple(o.shape) for o in features.outputs] == [
        (None, 56, 56, 96),
        (None, 28, 28, 256),
        (None, 14, 14, 512),
        (None, 7, 7, 1024),
    ]
    assert features.count_params() == model.count_params() - 4 * 1024  # all but the final norm


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(include_top=True, classes=7), (2, 7)),
        (dict(include_top=False), (2, 2, 2, 1024)),
        (dict(include_top=False, pooling="avg"), (2, 1024)),
        (dict(include_top=False, pooling="max"), (2, 1024)),
    ],
)
def test_applications_signature(kwargs, shape):
    model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3), **kwargs)
    assert model(images((2, 64, 64, 3))).shape == shape


def test_classifier_activation_and_input_tensor():
    inputs = keras.Input((64, 64, 3))
    model = keras_nextvit.NextViTSmall(
        input_tensor=inputs, classes=5, classifier_activation="softmax"
    )
    probs = keras.ops.convert_to_numpy(model(images((3, 64, 64, 3))))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_drop_path_is_active_in_training_only():
    model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3), drop_path_rate=0.5)
    rates = [layer.drop_path for layer in model.layers if hasattr(layer, "drop_path")]
    np.testing.assert_allclose(rates, np.linspace(0, 0.5, len(rates)), rtol=1e-6)
    x = images((4, 64, 64, 3))
    a, b = model(x, training=False), model(x, training=False)
    np.testing.assert_array_equal(a, b)
    c, d = model(x, training=True), model(x, training=True)
    assert not np.allclose(c, d)


def test_batchnorm_settings(small_any):
    norms = [
        layer
        for layer in small_any._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) > 50
    assert {(n.epsilon, n.momentum) for n in norms} == {(1e-5, 0.9)}


# ------------------------------------------------------------ serialization


@pytest.fixture(scope="module")
def trained_like():
    """A small model with non-trivial BatchNorm statistics."""
    from conftest import synthetic_checkpoint

    model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3))
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint("small"))
    return model


@pytest.mark.slow
def test_keras_file_round_trip(trained_like, tmp_path):
    x = images((2, 64, 64, 3))
    path = tmp_path / "model.keras"
    trained_like.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(infer(restored, x), infer(trained_like, x))


LOAD_IN_A_FRESH_PROCESS = r"""
import sys
import keras_nextvit  # before Keras: its modules load (and register) once Keras is imported
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


@pytest.mark.slow
def test_keras_file_loads_after_import_keras_nextvit(tmp_path):
    """``import keras_nextvit`` is lazy (the command line answers without
    Keras), yet ``keras.saving.load_model`` right after it finds every layer
    and segmenter class, whichever of keras and keras_nextvit came first."""
    import os
    import subprocess
    import sys

    keras.utils.set_random_seed(0)
    model = keras_nextvit.NextViTSegmenter((1, 1, 5, 1), "fpn", num_classes=3, input_shape=(64, 64, 3))
    model.save(tmp_path / "segmenter.keras")
    x = images((1, 64, 64, 3))
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    args = [str(tmp_path / name) for name in ("segmenter.keras", "x.npy", "y.npy")]
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), infer(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_config_round_trip(trained_like):
    x = images((2, 64, 64, 3))
    clone = keras.Model.from_config(trained_like.get_config())
    clone.set_weights(trained_like.get_weights())
    np.testing.assert_array_equal(infer(clone, x), infer(trained_like, x))


@pytest.mark.slow
def test_weights_h5_round_trip(trained_like, tmp_path):
    x = images((2, 64, 64, 3))
    path = tmp_path / "model.weights.h5"
    trained_like.save_weights(path)
    other = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3), weights=str(path))
    np.testing.assert_array_equal(infer(other, x), infer(trained_like, x))


@pytest.mark.parametrize(
    "layer",
    [
        keras_nextvit.NCB(96, strides=2, drop_path=0.1, dropout=0.1),
        keras_nextvit.NTB(256, strides=2, sr_ratio=4, drop_path=0.2, attention_dropout=0.1),
        keras_nextvit.EfficientMHSA(64, sr_ratio=2),
        keras_nextvit.MHCA(64),
        keras_nextvit.MLP(128, 64, dropout=0.1),
        keras_nextvit.MLP(128, 64, hidden_chunks=4),
        keras_nextvit.PatchEmbed(64, strides=2),
        keras_nextvit.ConvBNReLU(16, strides=2),
        keras_nextvit.DropPath(0.2),
    ],
)
def test_layer_config_round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_mlp_in_hidden_slices_is_the_same_function():
    """The sliced MLP (the float TFLite export's form) sums per-slice
    products: same function, other rounding. Training keeps the whole form."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 7, 48)).astype("float32")
    whole = keras_nextvit.MLP(144, 48)
    whole.build(x.shape)
    whole.set_weights([rng.normal(size=w.shape).astype("float32") for w in whole.get_weights()])
    expected = keras.ops.convert_to_numpy(whole(x))
    for chunks in (2, 3, 9):
        sliced = keras_nextvit.MLP(144, 48, hidden_chunks=chunks)
        sliced.build(x.shape)
        sliced.set_weights(whole.get_weights())
        got = keras.ops.convert_to_numpy(sliced(x))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        assert not np.array_equal(got, expected)  # the sliced path ran: another order of sums
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(sliced(x, training=True)), expected)
    with pytest.raises(ValueError, match=r"hidden_chunks \(5\) must be a positive divisor of hidden_units \(144\)"):
        keras_nextvit.MLP(144, 48, hidden_chunks=5)


# ---------------------------------------------------------------- bad input


def test_four_channel_input_with_three_channel_weights(tmp_path):
    with pytest.raises(ValueError, match="3 input channels.*input_shape=\\(64, 64, 4\\)"):
        keras_nextvit.NextViTSmall(input_shape=(64, 64, 4), weights="nextvit_small.bd_in1k")


def test_four_channel_image_into_rgb_model(small_any):
    # Keras' input check names the input and both shapes.
    with pytest.raises(ValueError, match=r"'images'.*expected shape=\(None, None, None, 3\), found shape=\(1, 64, 64, 4\)"):
        small_any(images((1, 64, 64, 4)))


def test_four_channel_model_without_weights_works():
    model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 4), classes=3)
    assert model(images((1, 64, 64, 4))).shape == (1, 3)


def test_too_small_input_shape():
    with pytest.raises(ValueError, match="height 31 is below the minimum of 32"):
        keras_nextvit.NextViTSmall(input_shape=(31, 64, 3))


@pytest.mark.parametrize("size", [(16, 64), (64, 20)])
def test_too_small_image(small_any, size):
    with pytest.raises(ValueError, match="below the minimum of 32 pixels"):
        small_any(images((1, *size, 3)))
    with pytest.raises(ValueError, match="below the minimum of 32 pixels"):
        small_any.predict(images((1, *size, 3)), verbose=0)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="pooling"):
        keras_nextvit.NextViTSmall(include_top=False, pooling="mean")
    with pytest.raises(ValueError, match="multiple of 5"):
        keras_nextvit.NextViT(depths=(3, 4, 7, 3))
    with pytest.raises(ValueError, match="1000-class head"):
        keras_nextvit.NextViTSmall(weights="nextvit_small.bd_in1k", classes=10)


def test_one_key_attention_is_ones_without_a_warning():
    """At 32x32 every E-MHSA attends over a single pooled key: the weights are
    the softmax's (exactly 1), and Keras' warning about a softmax over a size-1
    axis does not reach the user."""
    import warnings

    from keras_nextvit.layers import attention_weights

    scores = np.random.default_rng(0).normal(size=(2, 3, 5, 1)).astype("float32") * 10
    np.testing.assert_array_equal(ops.convert_to_numpy(attention_weights(scores)),
                                  ops.convert_to_numpy(ops.softmax(scores, axis=-1)))
    many = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(attention_weights(many)),
                                  ops.convert_to_numpy(ops.softmax(many, axis=-1)))
    model = keras_nextvit.NextViT((1, 1, 5, 1), input_shape=(32, 32, 3), classes=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(np.zeros((1, 32, 32, 3), "float32"), training=False)
    assert not [w for w in caught if "softmax" in str(w.message)], [str(w.message) for w in caught]
    if keras.backend.backend() == "tensorflow":  # q and k stay connected: zero gradients, not None
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = ops.sum(model(np.ones((1, 32, 32, 3), "float32"), training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        assert not [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
