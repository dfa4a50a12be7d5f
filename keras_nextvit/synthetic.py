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


_SHIFTS = tuple(np.uint64(s) for s in (30, 27, 31, 40))
_BLOCK = 1 << 16  # elements per pass: the block and its scratch stay in a core's L2 cache


def uniform(seed, index, count):
    """``count`` floats in [0, 1) for tensor ``index`` (float64).

    Element ``j`` is ``mix(seed * GOLDEN + index * C1 + j) >> 40`` over
    2 ** 24, ``mix`` SplitMix64's finaliser (shifts 30, 27, 31 and
    multipliers C1, C2), all modulo 2 ** 64. Computed in blocks, in place:
    whole-array temporaries made Next-ViT-L's 58 M values take 1 s."""
    s30, s27, s31, s40 = _SHIFTS
    count = int(count)
    out = np.empty(count, np.float64)
    with np.errstate(over="ignore"):
        start = np.uint64(seed) * _GOLDEN + np.uint64(index) * _C1
        size = min(count, _BLOCK)
        offsets = np.arange(size, dtype=np.uint64)
        z, scratch = np.empty(size, np.uint64), np.empty(size, np.uint64)
        for first in range(0, count, _BLOCK):
            n = min(_BLOCK, count - first)
            zn, tn = z[:n], scratch[:n]
            np.add(offsets[:n], start + np.uint64(first), out=zn)
            for shift, multiplier in ((s30, _C1), (s27, _C2)):
                np.right_shift(zn, shift, out=tn)
                np.bitwise_xor(zn, tn, out=zn)
                np.multiply(zn, multiplier, out=zn)
            np.right_shift(zn, s31, out=tn)
            np.bitwise_xor(zn, tn, out=zn)
            np.right_shift(zn, s40, out=zn)
            # 24-bit integers and a power-of-two scale: exact in float64
            np.multiply(zn, 1.0 / float(1 << 24), out=out[first:first + n], casting="unsafe")
    return out


def synthetic_tensor(name, shape, index, seed=0):
    """The value of state-dict entry ``index`` called ``name``."""
    shape = tuple(int(d) for d in shape)
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    value = uniform(seed, index, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    # in place, in the order of the specification's formulas (same roundings)
    if name.endswith("running_var"):
        value += 0.5  # 0.5 + u
    elif name.endswith("running_mean"):
        value -= 0.5  # (u - 0.5) * 0.04
        value *= 0.04
    elif name.endswith("bias"):
        value -= 0.5  # (u - 0.5) * 0.02
        value *= 0.02
    elif len(shape) == 1:
        value *= 0.5  # 0.75 + 0.5 * u
        value += 0.75
    else:
        fan_in = int(np.prod(shape[1:]))
        value *= 2.0  # (2 u - 1) * 0.7 * sqrt(3 / fan_in)
        value -= 1.0
        value *= 0.7
        value *= np.sqrt(3.0 / fan_in)
    return value.astype(np.float32)


def synthetic_state_dict(spec, seed=0):
    """``{name: array}`` for a ``[(name, shape), ...]`` state-dict spec."""
    return {name: synthetic_tensor(name, shape, i, seed) for i, (name, shape) in enumerate(spec)}


def synthetic_input(seed, shape):
    """Input images, channels-first ``(N, 3, H, W)``, values in [-2, 2)."""
    count = int(np.prod(shape))
    return (4.0 * uniform(seed, 0, count) - 2.0).reshape(shape).astype(np.float32)
