"""The segmenters against the golden outputs of the reference (mmseg) models.

Next-ViT-S + Semantic FPN (1x3x128x160) and + UperNet (1x3x128x128) with the
synthetic weights of tests/data/segmentation: the backbone's four normalised
outputs, the decode head's stride-4 logits, the auxiliary head's stride-16
logits and the logits at the input size, each within 1e-4 of its largest
value. Runs on the active backend; tests/test_backends.py runs it again under
JAX and PyTorch.
"""

import functools
import json

import keras
import numpy as np
import pytest
from conftest import DATA, assert_close, infer, nhwc, zero_initialised

import keras_nextvit
from keras_nextvit import synthetic, weights
from keras_nextvit.segmentation import NextViTSegmenter, segmenter_features

SEG_DATA = DATA / "segmentation"
CASES = {"seg_fpn_small_128x160": ("small", "fpn"), "seg_upernet_small_128x128": ("small", "upernet")}


def seg_key_spec(head, variant):
    keys = json.loads((SEG_DATA / f"seg_{head}_{variant}.keys.json").read_text())
    return [(name, tuple(shape)) for name, shape in keys]


@functools.lru_cache(maxsize=None)
def seg_checkpoint(head, variant):
    """The reference's synthetic segmenter weights (seed 0), mmseg names."""
    return synthetic.synthetic_state_dict(seg_key_spec(head, variant))


def seg_golden(case):
    with np.load(SEG_DATA / f"{case}.npz") as data:
        return {key: data[key] for key in data.files}


@functools.lru_cache(maxsize=None)
def probe(variant, head):
    """A segmenter with its auxiliary head, and a model with every output
    the golden data holds. Its weights start at zero: every test that uses
    it reads their names or loads all of them."""
    auxiliary = head == "upernet"
    with zero_initialised():
        model = NextViTSegmenter(variant, head, auxiliary_head=auxiliary)
    features = segmenter_features(model).outputs
    decode = model.get_layer("decode_head").output
    return model, keras.Model(model.inputs, [*features, decode, *model.outputs])


# Trainable parameters of the inference segmenters (no auxiliary head), and
# UperNet's with it (the figures; the upstream README's 36.3 / 49.3 /
# 62.4 M and 66.3 / 79.3 / 92.4 M also count the unused ImageNet classifier).
PARAMETERS = {
    ("fpn", "small"): 35_227_926,
    ("fpn", "base"): 48_283_414,
    ("fpn", "large"): 61_338_902,
    ("upernet", "small"): 64_039_702,
    ("upernet", "base"): 77_095_190,
    ("upernet", "large"): 90_150_678,
}
WITH_AUXILIARY = {"small": 65_258_412, "base": 78_313_900, "large": 91_369_388}


@pytest.mark.parametrize("head", ["fpn", "upernet"])
@pytest.mark.parametrize("variant", ["small", "base", "large"])
def test_state_dict_spec_matches_reference(variant, head):
    """Every tensor the segmenter has, with mmseg's name and shape, in the
    reference's order; what is left over is exactly what the README says a
    segmenter never uses. And the parameter counts."""
    from keras_nextvit.flops import trainable_parameters

    with zero_initialised():  # only names, shapes and counts are read
        model = NextViTSegmenter(variant, head, auxiliary_head=head == "upernet")
    total = trainable_parameters(model)
    if head == "upernet":
        assert total == WITH_AUXILIARY[variant]
        total -= trainable_parameters(model.get_layer("auxiliary_head"))
    assert total == PARAMETERS[(head, variant)]
    ours = weights.torch_state_dict_spec(model)
    reference = seg_key_spec(head, variant)
    unused = [n for n, _ in reference if n.startswith(weights.UNUSED_SEGMENTATION_TENSORS)]
    assert ours == [(n, s) for n, s in reference if n not in unused]
    assert len(unused) == 2 + 5  # proj_head.0 weight and bias; extra_norm_list.3 (5 tensors)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_golden_outputs(case):
    variant, head = CASES[case]
    data = seg_golden(case)
    assert str(data["head"]) == head and str(data["variant"]).endswith(variant)
    model, probe_model = probe(variant, head)
    keras_nextvit.load_torch_weights(model, seg_checkpoint(head, variant))
    outputs = infer(probe_model, nhwc(data["input_nchw"]))
    features, (decode, logits, *aux) = outputs[:4], outputs[4:]
    for i, feature in enumerate(features, start=1):
        assert_close(feature, nhwc(data[f"feature{i}"]), what=f"feature{i}")
    assert_close(decode, nhwc(data["decode_logits"]), what="decode_logits")
    first = nhwc(data["logits_first_channels"])
    assert_close(logits[..., : first.shape[-1]], first, what="logits (first channels)")
    agreement = np.mean(np.argmax(logits, axis=-1) == data["argmax"])
    assert agreement >= 0.999, f"argmax agrees on {agreement:.4%} of pixels"
    assert len(aux) == ("aux_logits" in data)
    if aux:
        assert_close(aux[0], nhwc(data["aux_logits"]), what="aux_logits")


def test_wrong_weights_break_parity():
    """The check can fail: one scaled decode-head tensor moves the logits
    past the bar."""
    model, probe_model = probe("small", "fpn")
    state = dict(seg_checkpoint("fpn", "small"))
    key = "decode_head.scale_heads.2.2.conv.weight"
    state[key] = state[key] * 1.5
    keras_nextvit.load_torch_weights(model, state)
    data = seg_golden("seg_fpn_small_128x160")
    decode = infer(probe_model, nhwc(data["input_nchw"]))[4]
    with pytest.raises(AssertionError):
        assert_close(decode, nhwc(data["decode_logits"]), what="decode_logits")
