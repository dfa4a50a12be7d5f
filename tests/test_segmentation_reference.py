"""The Keras segmenters against the independent PyTorch reference
(tools/torch_reference_segmentation.py) at odd and non-square sizes, batch 2,
for all three variants and both heads: where nearest / bilinear resizing and
adaptive pooling bins are easiest to get wrong."""

import keras
import numpy as np
import pytest
from conftest import assert_close, infer, load_tool

torch = pytest.importorskip("torch")

import keras_nextvit  # noqa: E402
from keras_nextvit.segmentation import NextViTSegmenter, segmenter_features  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis:UserWarning")


ref = load_tool("torch_reference_segmentation", "nextvit_seg_torch_reference")

# (variant, head, (N, C, H, W)): odd, non-square, batch 2. At 97x65 stage 4 is
# 4x3, so the PPM's 3- and 6-bins overlap and every top-down resize is odd.
CASES = [
    ("small", "fpn", (2, 3, 97, 65)),
    ("small", "fpn", (1, 3, 33, 130)),
    ("small", "upernet", (2, 3, 97, 65)),
    ("small", "upernet", (1, 3, 200, 47)),
    ("base", "fpn", (2, 3, 71, 90)),
    ("base", "upernet", (2, 3, 71, 90)),
    ("large", "fpn", (2, 3, 45, 77)),
    ("large", "upernet", (2, 3, 45, 77)),
]


def _pair(variant, head):
    torch_model = ref.load_synthetic(ref.build_segmenter(variant, head, auxiliary=head == "upernet"), seed=0)
    model = NextViTSegmenter(variant, head, auxiliary_head=head == "upernet")
    keras_nextvit.load_torch_weights(model, ref.synthetic_numpy_state(torch_model, seed=0))
    features = segmenter_features(model).outputs
    probe = keras.Model(model.inputs, [*features, model.get_layer("decode_head").output, *model.outputs])
    return torch_model, probe


_PAIRS = {}


@pytest.mark.parametrize("variant,head,shape", CASES)
@pytest.mark.slow
def test_matches_torch_reference(variant, head, shape):
    if (variant, head) not in _PAIRS:
        _PAIRS.clear()  # one pair at a time: the large ones are big
        _PAIRS[(variant, head)] = _pair(variant, head)
    torch_model, probe = _PAIRS[(variant, head)]
    x = ref.ref.synthetic_input(31 + shape[2], shape)
    with torch.no_grad():
        expected = torch_model.forward_all(x)
    x = x.numpy()
    outputs = infer(probe, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    to_nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    for i, feature in enumerate(expected["features"]):
        assert_close(outputs[i], to_nhwc(feature), what=f"feature{i + 1}")
    assert_close(outputs[4], to_nhwc(expected["decode_logits"]), what="decode_logits")
    assert_close(outputs[5], to_nhwc(expected["logits"]), what="logits")
    assert outputs[5].shape[1:3] == shape[2:]
    if head == "upernet":
        assert_close(outputs[6], to_nhwc(expected["aux_logits"]), what="aux_logits")
