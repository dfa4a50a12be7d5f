"""The synthetic-weight generator against the specification's test vectors."""

import numpy as np
from conftest import key_spec

from keras_nextvit import synthetic


def test_uniform_vector():
    np.testing.assert_array_equal(
        synthetic.uniform(0, 0, 3), [0.0, 0.33816659450531006, 0.8586764335632324]
    )


def test_tensor_vectors():
    spec = key_spec("small")
    expected = {
        0: [-0.23333333, -0.07552226, 0.16738233],
        1: [1.2245990, 1.0258750, 0.8887108],
        2: [-0.0067001162, -0.0013405049, -0.0089602433],
        3: [-0.0031081962, 0.0014544725, 0.012792552],
        4: [0.74919009, 0.82998836, 1.4724503],
        470: [0.0071823299, -0.027969778, -0.016666181],
        471: [0.0033787035, 0.0097353151, -0.0099613639],
    }
    for index, values in expected.items():
        name, shape = spec[index]
        tensor = synthetic.synthetic_tensor(name, shape, index)
        assert tensor.dtype == np.float32 and tensor.shape == shape
        np.testing.assert_allclose(tensor.ravel()[:3], values, rtol=1e-6)
    counter = synthetic.synthetic_tensor("stem.0.norm.num_batches_tracked", (), 5)
    assert counter.dtype == np.int64 and counter == 0


def test_input_vector():
    x = synthetic.synthetic_input(7, (1, 3, 2, 2))
    np.testing.assert_allclose(x.ravel()[:4], [-1.3045287, 1.5093946, 0.90541434, -1.4594166], rtol=1e-6)


def test_golden_inputs_are_regenerated():
    from conftest import CASES, golden

    for case in CASES:
        data = golden(case)
        x = synthetic.synthetic_input(int(data["input_seed"]), data["input_nchw"].shape)
        np.testing.assert_array_equal(x, data["input_nchw"])
