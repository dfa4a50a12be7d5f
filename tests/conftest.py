import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

DATA = pathlib.Path(__file__).parent / "data"

# Golden cases of the reference implementation (see tests/data/README.md).
CASES = {
    "small_224_b2": "small",
    "small_64x96_feat": "small",
    "base_224": "base",
    "large_224": "large",
}


def golden(case):
    with np.load(DATA / f"{case}.npz") as data:
        return {key: data[key] for key in data.files}


def key_spec(variant, naming="timm"):
    keys = json.loads((DATA / f"nextvit_{variant}.keys.json").read_text())
    return [(name, tuple(shape)) for name, shape in keys[naming]]


_STATE_CACHE = {}


def synthetic_checkpoint(variant, naming="timm"):
    """The reference's synthetic weights (seed 0) in the given naming."""
    from keras_nextvit import synthetic

    key = (variant, naming)
    if key not in _STATE_CACHE:
        _STATE_CACHE[key] = synthetic.synthetic_state_dict(key_spec(variant, naming))
    return _STATE_CACHE[key]


def nhwc(array):
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def assert_close(actual, expected, rel=1e-4, what="output"):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual - expected)))
    bound = rel * float(np.max(np.abs(expected)))
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


@pytest.fixture(scope="session")
def synthetic_small():
    """Next-ViT-S at the golden 64x96 size with the reference's synthetic
    weights: the model the export tests convert (exports leave it as it
    was, so one serves them all)."""
    import keras_nextvit

    model = keras_nextvit.NextViTSmall(input_shape=(64, 96, 3))
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint("small"))
    return model


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory):
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def digits():
    """A small Next-ViT trained for 4 epochs on scikit-learn's digits
    (32x32, normalised; ~98% held-out accuracy), for the int8 exports: the
    synthetic weights make every image's logits point almost the same way,
    so only a trained model shows what int8 does to predictions. (After 2
    epochs, at ~88%, near-ties flip under any int8 and top-1 agreement
    measures the ties rather than the quantization.) Returns a namespace with
    ``model``, ``images``, ``labels``, ``train`` and ``held_out`` indices,
    and ``calibration`` (8 batches of 8 training images)."""
    import sys
    import types

    sys.path.insert(0, str(DATA.parent.parent / "tools"))
    from int8_study import train_digits

    model, images, labels, train, held_out = train_digits(epochs=4)
    _, accuracy = model.evaluate(images[held_out], labels[held_out], verbose=0)
    assert accuracy >= 0.9  # trained: its logits depend on the image
    calibration = [images[train[i : i + 8]] for i in range(0, 64, 8)]
    return types.SimpleNamespace(
        model=model, images=images, labels=labels, train=train, held_out=held_out,
        calibration=calibration,
    )
