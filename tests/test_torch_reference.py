"""The independent PyTorch reference (tools/torch_reference.py): it must
reproduce the golden data, and the Keras model must agree with it on odd and
non-square image sizes that the golden data does not cover."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close, load_tool

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

# Odd, non-square and minimal sizes (NCHW). (1, 3, 32, 32) is the smallest
# accepted input: stage 2's E-MHSA then sees exactly one 16-token window and
# stage 3's one 4-token window.
ODD_SHAPES = [
    (1, 3, 33, 47),
    (1, 3, 65, 32),
    (2, 3, 45, 45),
    (1, 3, 32, 32),
    (1, 3, 71, 57),
]

pytestmark = [
    # Keras warns when a softmax axis has size 1 (a single E-MHSA key at
    # small sizes): expected here.
    pytest.mark.filterwarnings("ignore:You are using a softmax over axis:UserWarning"),
    pytest.mark.filterwarnings("ignore:The structure of `inputs` doesn't match:UserWarning"),
]


ref = load_tool("torch_reference", "nextvit_torch_reference")


@pytest.fixture(scope="module")
def torch_small():
    return ref.load_synthetic(ref.build("small"), seed=0)


@pytest.fixture(scope="module")
def keras_small(torch_small):
    keras_nextvit = pytest.importorskip("keras_nextvit")
    model = keras_nextvit.NextViTSmall(input_shape=(None, None, 3))
    keras_nextvit.load_torch_weights(model, ref.synthetic_numpy_state(torch_small, seed=0))
    return model, keras_nextvit.feature_extractor(model)


def torch_outputs(model, images_nchw):
    x = torch.from_numpy(np.ascontiguousarray(images_nchw))
    with torch.inference_mode():
        stages = model.forward_features(x)
        pre_logits = model.norm(stages[-1]).mean(dim=(2, 3))
        logits = model.head(pre_logits)
    return logits.numpy(), pre_logits.numpy(), [s.numpy() for s in stages]


@pytest.mark.parametrize("variant", ["small", "base", "large"])
def test_state_dict_matches_timm_naming(variant):
    with torch.device("meta"):
        model = ref.build(variant)
    got = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    expected = json.loads((DATA / f"nextvit_{variant}.keys.json").read_text())["timm"]
    assert got == expected


def test_reference_reproduces_golden_features(torch_small):
    golden = np.load(DATA / "small_64x96_feat.npz")
    assert str(golden["variant"]) == "small"
    images = golden["input_nchw"]
    np.testing.assert_array_equal(
        ref.synthetic_input(int(golden["input_seed"]), images.shape).numpy(), images
    )
    logits, pre_logits, stages = torch_outputs(torch_small, images)
    assert_close(logits, golden["logits"], what="logits")
    assert_close(pre_logits, golden["pre_logits"], what="pre_logits")
    for i, stage in enumerate(stages, start=1):
        assert_close(stage, golden[f"stage{i}_nchw"], what=f"stage{i}")
    # forward() and forward_pre_logits() are the same computation.
    with torch.inference_mode():
        x = torch.from_numpy(images)
        assert_close(torch_small(x).numpy(), logits, what="forward")
        assert_close(torch_small.forward_pre_logits(x).numpy(), pre_logits, what="pre_logits()")


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_keras_matches_reference_on_odd_sizes(torch_small, keras_small, shape):
    model, features = keras_small
    images = ref.synthetic_input(1, shape).numpy()
    logits, _, stages = torch_outputs(torch_small, images)

    images_nhwc = images.transpose(0, 2, 3, 1)
    assert_close(np.asarray(model(images_nhwc, training=False)), logits, what="logits")
    keras_stages = features(images_nhwc, training=False)
    assert len(keras_stages) == 4
    for i, (k, t) in enumerate(zip(keras_stages, stages), start=1):
        assert_close(np.asarray(k), t.transpose(0, 2, 3, 1), what=f"stage{i}")
