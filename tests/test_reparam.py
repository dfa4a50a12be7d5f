"""BatchNorm merging: no BatchNorm left, the same function on the golden inputs."""

import keras
import numpy as np
import pytest
from conftest import CASES, TINY, assert_close, golden, infer, nhwc, synthetic_checkpoint, synthetic_tiny

import keras_nextvit
from keras_nextvit import reparam

BUILDERS = {
    "small": keras_nextvit.NextViTSmall,
    "base": keras_nextvit.NextViTBase,
    "large": keras_nextvit.NextViTLarge,
}


def outputs_of(model):
    """Logits and the four stage outputs in one model."""
    stages = keras_nextvit.feature_extractor(model).outputs
    return keras.Model(model.inputs, [model.output, *stages])


@pytest.mark.parametrize("case", ["small_64x96_feat", "base_224", "large_224"])
@pytest.mark.slow
def test_merged_model_matches(case):
    variant = CASES[case]
    model = BUILDERS[variant](input_shape=(None, None, 3))
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint(variant))
    merged = keras_nextvit.merge_batchnorm(model)
    assert reparam.count_batchnorms(model) > 0
    assert reparam.count_batchnorms(merged) == 0
    assert merged.count_params() < model.count_params()

    x = nhwc(golden(case)["input_nchw"])
    before = infer(outputs_of(model), x)
    after = infer(outputs_of(merged), x)
    for name, a, b in zip(["logits", "stage1", "stage2", "stage3", "stage4"], after, before):
        assert_close(a, b, what=name)


@pytest.mark.parametrize("kwargs", [dict(include_top=False), dict(include_top=False, pooling="max")])
@pytest.mark.slow
def test_headless_merge_keeps_the_final_norm_as_affine(kwargs):
    model = synthetic_tiny((64, 64, 3), **kwargs)
    merged = keras_nextvit.merge_batchnorm(model)
    assert reparam.count_batchnorms(merged) == 0
    assert isinstance(merged.get_layer("norm"), keras_nextvit.layers.ChannelAffine)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    assert_close(infer(merged, x), infer(model, x), what="features")


@pytest.mark.slow
def test_merge_is_not_a_no_op():
    """Merged weights really differ from the originals (the test can fail)."""
    model = synthetic_tiny((64, 64, 3))
    merged = keras_nextvit.merge_batchnorm(model)
    fc1 = merged.get_layer("stages_0_blocks_0").mlp.fc1.kernel
    assert not np.allclose(np.asarray(fc1), np.asarray(model.get_layer("stages_0_blocks_0").mlp.fc1.kernel))
    # Skipping one fold breaks the function.
    block = merged.get_layer("stages_3_blocks_0")
    block.mlp.fc1.kernel.assign(model.get_layer("stages_3_blocks_0").mlp.fc1.kernel)
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype("float32")
    with pytest.raises(AssertionError):
        assert_close(infer(merged, x), infer(model, x))


@pytest.mark.slow
def test_merged_model_serializes(tmp_path):
    model = keras_nextvit.NextViT(TINY, input_shape=(64, 64, 3), classes=5)
    merged = keras_nextvit.merge_batchnorm(model)
    path = tmp_path / "merged.keras"
    merged.save(path)
    restored = keras.saving.load_model(path)
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(infer(restored, x), infer(merged, x))
    assert reparam.count_batchnorms(restored) == 0


@pytest.mark.slow
def test_merge_keeps_pre_logits_output():
    """A model that also outputs pre-logits keeps the final norm (as an affine)."""
    model = synthetic_tiny((64, 64, 3))
    two = keras.Model(model.inputs, [model.output, model.get_layer("avg_pool").output])
    merged = keras_nextvit.merge_batchnorm(two)
    assert reparam.count_batchnorms(merged) == 0 and len(merged.outputs) == 2
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    for a, b, name in zip(infer(merged, x), infer(two, x), ["logits", "pre_logits"]):
        assert_close(a, b, what=name)
