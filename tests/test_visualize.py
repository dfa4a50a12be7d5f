"""The inspection API: attention, key geometry, stage features, Grad-CAM."""

import keras
import matplotlib
import numpy as np
import pytest
from conftest import infer, synthetic_checkpoint

import keras_nextvit
from keras_nextvit import visualize

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def model():
    model = keras_nextvit.NextViTSmall(input_shape=(None, None, 3))
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint("small"))
    return model


def images(h, w, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, (batch, h, w, 3)).astype("float32")


def stage_grid(size):
    """Feature-map size after the stem (two stride-2 3x3 convs, padding 1)
    and then ceil-mode halvings."""
    size = (size - 1) // 2 + 1
    return (size - 1) // 2 + 1


@pytest.mark.parametrize("hw", [(64, 64), (64, 96), (45, 45), (33, 70)])
def test_attention_shapes_rows_and_geometry(model, hw):
    x = images(*hw)
    maps = visualize.attention_maps(model, x)
    assert [a.block for a in maps] == [
        "stages_1_blocks_3", "stages_2_blocks_4", "stages_2_blocks_9", "stages_3_blocks_2"
    ]
    for att in maps:
        h, w = stage_grid(hw[0]), stage_grid(hw[1])
        for _ in range(att.stage - 1):
            h, w = -(-h // 2), -(-w // 2)
        assert att.grid == (h, w)
        assert att.pool_size == {2: 16, 3: 4, 4: 1}[att.stage]
        heads = {2: 6, 3: 12, 4: 24}[att.stage]
        keys = (h * w) // att.pool_size
        assert att.probabilities.shape == (2, heads, h * w, keys)
        np.testing.assert_allclose(att.probabilities.sum(-1), 1.0, atol=1e-5)
        assert np.all(att.probabilities >= 0)
        key_map = visualize.key_token_map(att.grid, att.pool_size)
        assert key_map.max() + 1 == keys


def test_key_strips_are_row_major_not_square():
    keys = visualize.key_token_map((6, 6), 16)
    # 36 tokens, 16 per key: key 0 = rows 0-1 and the first 4 of row 2, ...
    expected = np.array(
        [[0] * 6, [0] * 6, [0] * 4 + [1] * 2, [1] * 6, [1] * 6, [1] * 2 + [-1] * 4]
    )
    np.testing.assert_array_equal(keys, expected)
    image = visualize.attention_image([0.25, 0.75], (6, 6), 16)
    assert np.isnan(image[5, 2:]).all() and (image[2, 4:] == 0.75).all() and (image[0] == 0.25).all()
    with pytest.raises(ValueError, match="3 attention weights do not fit"):
        visualize.attention_image([0.2, 0.3, 0.5], (6, 6), 16)


def test_geometry_is_what_the_layer_computes(model):
    """Rebuild one NTB's attention in NumPy from the strips of key_token_map."""
    x = images(45, 45, batch=1, seed=3)
    block = model.get_layer("stages_1_blocks_3")
    upstream = keras.Model(model.inputs, block.input)
    inputs = np.asarray(upstream(x))
    att = visualize.attention_maps(model, x)[0]

    tokens = np.asarray(block.norm1(block.patch_embed(inputs), training=False))[0]
    grid = tokens.shape[:2]
    tokens = tokens.reshape(-1, tokens.shape[-1])
    keys = visualize.key_token_map(grid, att.pool_size).reshape(-1)
    pooled = np.stack([tokens[keys == k].mean(0) for k in range(keys.max() + 1)])
    pooled = np.asarray(block.e_mhsa.norm(pooled[None], training=False))[0]
    attn = block.e_mhsa
    q = tokens @ np.asarray(attn.q.kernel) + np.asarray(attn.q.bias)
    k = pooled @ np.asarray(attn.k.kernel) + np.asarray(attn.k.bias)
    heads = attn.num_heads
    q = q.reshape(len(q), heads, -1).transpose(1, 0, 2)
    k = k.reshape(len(k), heads, -1).transpose(1, 0, 2)
    scores = q @ k.transpose(0, 2, 1) * attn.head_dim**-0.5
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(att.probabilities[0], probs, atol=1e-5)
    # A square 4x4 pooling instead of strips would not match:
    square = (np.arange(grid[0])[:, None] // 4) * 2 + np.arange(grid[1])[None] // 4
    assert not np.array_equal(square.reshape(-1)[: len(keys)], keys)


def test_stage_features_equal_feature_extractor(model):
    x = images(64, 96)
    features = visualize.stage_features(model, x)
    expected = infer(keras_nextvit.feature_extractor(model), x)
    for a, b in zip(features, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    stats = visualize.activation_statistics(features)
    assert [s["shape"][-1] for s in stats] == [96, 256, 512, 1024]
    rgb = visualize.pca_rgb(features[0][0])
    assert rgb.shape == features[0].shape[1:3] + (3,) and 0 <= rgb.min() and rgb.max() <= 1


def test_class_activation_map_is_grad_cam(model):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient check on the TensorFlow backend")
    x = images(96, 96)
    cams, classes = visualize.class_activation_map(model, x)  # the top class of each image
    last = model.get_layer("stages_3_blocks_2")
    probe = keras.Model(model.inputs, [last.output, model.output])
    with tf.GradientTape() as tape:
        features, logits = probe(x, training=False)
        score = tf.reduce_sum(tf.reduce_max(logits, axis=1))
    grads = tape.gradient(score, features).numpy()
    assert list(classes) == list(np.argmax(logits.numpy(), axis=1))
    alphas = grads.mean(axis=(1, 2))  # Grad-CAM: spatially averaged gradients
    expected = np.maximum(np.einsum("bhwc,bc->bhw", features.numpy(), alphas), 0)
    peaks = expected.reshape(2, -1).max(1)
    assert np.all(peaks > 0)
    np.testing.assert_allclose(cams, expected / peaks[:, None, None], atol=1e-4)


def patch_image(corner, size=128, seed=0):
    """Smooth noise with a bright, striped square in one corner."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 0.3, (size, size, 3)).astype("float32")
    half = size // 2
    r, c = {"top_left": (0, 0), "bottom_right": (half, half)}[corner]
    stripes = np.where((np.arange(half) // 4) % 2, 2.0, -2.0).astype("float32")
    image[r : r + half, c : c + half] = stripes[None, :, None]
    return image


def test_grad_cam_follows_the_region_that_drives_the_class(model):
    """A class defined by the patch's features: its CAM lights the patch,
    wherever the patch is (a map fixed in place, or flipped, fails one of
    the two corners)."""
    extractor = keras.Model(model.inputs, model.get_layer("stages_3_blocks_2").output)
    norm = model.get_layer("norm")
    scale = np.asarray(norm.gamma) / np.sqrt(np.asarray(norm.moving_variance) + norm.epsilon)
    train = patch_image("top_left", seed=1)[None]
    features = np.asarray(extractor(train))[0]  # (4, 4, 1024)
    inside = np.zeros(features.shape[:2], bool)
    inside[:2, :2] = True
    direction = (features[inside].mean(0) - features[~inside].mean(0)) * scale
    head = model.get_layer("head_fc")
    kernel = np.asarray(head.kernel).copy()
    kernel[:, 0], kernel[:, 1] = direction, -direction
    original = np.asarray(head.kernel)
    head.kernel.assign(kernel)
    try:
        for corner, cells in (("top_left", (slice(0, 2), slice(0, 2))), ("bottom_right", (slice(2, 4), slice(2, 4)))):
            test = patch_image(corner, seed=2)[None]  # other noise than the one used to define the class
            cam, _ = visualize.class_activation_map(model, test, class_index=0)
            region = np.zeros((4, 4), bool)
            region[cells] = True
            assert cam[0][region].mean() > 2 * cam[0][~region].mean(), (corner, cam[0])
            # the opposite class does not point at the patch
            anti, _ = visualize.class_activation_map(model, test, class_index=1)
            assert anti[0][region].mean() <= anti[0][~region].mean(), (corner, anti[0])
    finally:
        head.kernel.assign(original)


def test_plots_return_figures(model, tmp_path):
    x = images(64, 96, batch=1)
    shown = ((x[0] + 2) / 4).clip(0, 1)
    features = visualize.stage_features(model, x)
    att = visualize.attention_maps(model, x)[1]
    cams, _ = visualize.class_activation_map(model, x)
    figures = [
        visualize.plot_channel_grid(features[0][0], channels=8),
        visualize.plot_stage_pca(shown, [f[0] for f in features]),
        visualize.plot_activation_statistics(visualize.activation_statistics(features)),
        visualize.plot_attention(shown, att, heads=[0, 1]),
        visualize.plot_key_strips(att.grid, att.pool_size),
        visualize.plot_class_activation(shown[None], cams, labels=["x"]),
    ]
    for i, fig in enumerate(figures):
        assert isinstance(fig, matplotlib.figure.Figure)
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 1000
