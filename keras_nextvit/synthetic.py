"""Reproducible synthetic checkpoints and inputs.

Implements the specification of the project's golden reference data: every
value depends only on ``(seed, tensor index i, element index j)`` through a
SplitMix64-style mix, so the reference outputs can be checked without
downloading any checkpoint. See ``tests/data/README.md``.
"""

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def uniform(seed, index, count):
    """``count`` floats in [0, 1) for tensor ``index`` (float64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * _GOLDEN + np.uint64(index) * _C1
        z = z + np.arange(count, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _C1
        z = (z ^ (z >> np.uint64(27))) * _C2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def synthetic_tensor(name, shape, index, seed=0):
    """The value of state-dict entry ``index`` called ``name``."""
    shape = tuple(int(d) for d in shape)
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    u = uniform(seed, index, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    if name.endswith("running_var"):
        value = 0.5 + u
    elif name.endswith("running_mean"):
        value = (u - 0.5) * 0.04
    elif name.endswith("bias"):
        value = (u - 0.5) * 0.02
    elif len(shape) == 1:
        value = 0.75 + 0.5 * u
    else:
        fan_in = int(np.prod(shape[1:]))
        value = (2.0 * u - 1.0) * 0.7 * np.sqrt(3.0 / fan_in)
    return value.astype(np.float32)


def synthetic_state_dict(spec, seed=0):
    """``{name: array}`` for a ``[(name, shape), ...]`` state-dict spec."""
    return {name: synthetic_tensor(name, shape, i, seed) for i, (name, shape) in enumerate(spec)}


def synthetic_input(seed, shape):
    """Input images, channels-first ``(N, 3, H, W)``, values in [-2, 2)."""
    count = int(np.prod(shape))
    return (4.0 * uniform(seed, 0, count) - 2.0).reshape(shape).astype(np.float32)
