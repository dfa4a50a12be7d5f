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
def tmp_session(tmp_path_factory):
    return tmp_path_factory.mktemp("session")
