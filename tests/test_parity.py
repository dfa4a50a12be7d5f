"""Bit-faithful numerics: the Keras model against the reference's golden outputs.

Runs on whichever Keras backend is active; tests/test_backends.py runs this
file again under JAX and PyTorch.
"""

import functools

import keras
import pytest
from conftest import (
    CASES, assert_close, golden, infer, key_spec, nhwc, synthetic_checkpoint, zero_initialised,
)

import keras_nextvit
from keras_nextvit import weights

BUILDERS = {
    "small": keras_nextvit.NextViTSmall,
    "base": keras_nextvit.NextViTBase,
    "large": keras_nextvit.NextViTLarge,
}


@functools.lru_cache(maxsize=None)
def probe(variant):
    """A model with every output the golden data holds; its weights start at
    zero (every test reads their names or loads all of them)."""
    with zero_initialised():
        model = BUILDERS[variant](input_shape=(None, None, 3))
    stages = keras_nextvit.feature_extractor(model).outputs
    outputs = [model.output, model.get_layer("avg_pool").output, *stages]
    return model, keras.Model(model.inputs, outputs)


@pytest.mark.parametrize("variant", sorted(BUILDERS))
def test_state_dict_spec_matches_reference(variant):
    model, _ = probe(variant)
    assert weights.torch_state_dict_spec(model) == key_spec(variant, "timm")


@pytest.mark.parametrize("naming", ["timm", "official"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_golden_outputs(case, naming):
    variant = CASES[case]
    model, probe_model = probe(variant)
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint(variant, naming))
    data = golden(case)
    assert str(data["variant"]).endswith(variant)
    logits, pre_logits, *stages = infer(probe_model, nhwc(data["input_nchw"]))
    assert_close(logits, data["logits"], what="logits")
    assert_close(pre_logits, data["pre_logits"], what="pre_logits")
    checked = 0
    for i, stage in enumerate(stages, start=1):
        if f"stage{i}_nchw" in data:
            assert_close(stage, nhwc(data[f"stage{i}_nchw"]), what=f"stage{i}")
            checked += 1
    assert checked == (4 if case.endswith("_feat") else 0)


def test_wrong_weights_break_parity():
    """The parity check can fail: one perturbed attention tensor moves the
    logits past the bar."""
    model, probe_model = probe("small")
    state = dict(synthetic_checkpoint("small"))
    key = "stages.2.blocks.4.e_mhsa.k.weight"
    state[key] = state[key] * 3.0  # a copy: the cached checkpoint stays intact
    keras_nextvit.load_torch_weights(model, state)
    data = golden("small_64x96_feat")
    logits = infer(probe_model, nhwc(data["input_nchw"]))[0]
    with pytest.raises(AssertionError):
        assert_close(logits, data["logits"], what="logits")
