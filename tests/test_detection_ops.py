"""NMS and RoIAlign on their own: against the PyTorch reference's
transcriptions of mmcv's kernels on hard random cases (ties, duplicates,
chains of suppressions, RoIs at and past the borders, empty and elongated
ones), and inside a compiled function (TensorFlow with XLA; on JAX every
call is already one jitted function), on the active backend."""

import importlib

import keras
import numpy as np
import pytest
from conftest import load_tool
from keras import ops

# the modules (the package exports functions of the same names)
nms_lib = importlib.import_module("keras_nextvit.detection.nms")
roi_lib = importlib.import_module("keras_nextvit.detection.roi_align")

torch = pytest.importorskip("torch")

ref = load_tool("torch_reference_detection", "nextvit_det_torch_reference_ops")


def hard_boxes(n=400, seed=0):
    """Clustered boxes (long suppression chains), exact duplicates, equal
    scores, in three groups."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 180, (8, 2))
    xy = centres[rng.integers(0, 8, n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(8, 40, (n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    boxes[n // 2: n // 2 + 10] = boxes[:10]  # duplicates
    scores = rng.uniform(0, 1, n).astype(np.float32)
    scores[::7] = scores[0]  # ties
    groups = rng.integers(0, 3, n).astype(np.int32)
    return boxes, scores, groups


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_batched_nms_equals_the_reference(iou):
    boxes, scores, groups = hard_boxes()
    got = ops.convert_to_numpy(nms_lib.batched_nms(boxes, scores, groups, iou))
    _, expected = ref.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                  torch.from_numpy(groups.astype(np.int64)), iou)
    np.testing.assert_array_equal(got, expected.numpy())
    got_one = ops.convert_to_numpy(nms_lib.nms(boxes, scores, iou, max_num=50))
    _, expected_one = ref.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou)
    np.testing.assert_array_equal(got_one, expected_one.numpy()[:50])


@pytest.mark.parametrize("groups_per_slice", [1, 3])
def test_batched_nms_in_slices_of_groups(monkeypatch, groups_per_slice):
    """The overlap tensor made a slice of groups at a time keeps what the
    reference keeps: one group per slice, and three (the boxes' three groups
    and the padding's: the last slice is short)."""
    from keras_nextvit.detection.compiled import bucket

    boxes, scores, groups = hard_boxes()
    size = bucket(np.bincount(groups).max())  # the packed length of a group
    monkeypatch.setattr(nms_lib, "_OVERLAP_ENTRIES", groups_per_slice * size * size)
    got = ops.convert_to_numpy(nms_lib.batched_nms(boxes, scores, groups, 0.5))
    _, expected = ref.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                  torch.from_numpy(groups.astype(np.int64)), 0.5)
    np.testing.assert_array_equal(got, expected.numpy())


def hard_rois(height, width, stride, seed=0):
    rng = np.random.default_rng(seed)
    size = np.array([width, height, width, height], np.float32) * stride
    xy = rng.uniform(-0.2, 1.1, (60, 2)) * size[:2]
    wh = rng.uniform(0, 0.6, (60, 2)) * size[:2]
    boxes = np.concatenate([xy, xy + wh], axis=1)
    special = np.array([
        [0, 0, size[0], size[1]],                    # the whole map
        [size[0] - 1, size[1] - 1, size[0], size[1]],  # the last pixel
        [3.3, 4.7, 3.3, 9.1],                        # zero width
        [5.0, 5.0, 5.0, 5.0],                        # a point
        [-50, -50, -10, -10],                        # wholly outside
        [2.5, 1.25, size[0] * 0.9, 3.75],            # elongated: many samples per bin
    ], np.float32)
    boxes = np.concatenate([boxes, special]).astype(np.float32)
    batch = rng.integers(0, 2, (len(boxes), 1)).astype(np.float32)
    return np.concatenate([batch, boxes], axis=1)


@pytest.mark.parametrize("out", [7, 14])
def test_roi_align_equals_the_reference(out):
    stride = 8
    feature = np.random.default_rng(1).normal(size=(2, 13, 17, 6)).astype(np.float32)
    rois = hard_rois(13, 17, stride)
    got = ops.convert_to_numpy(roi_lib.roi_align(feature, rois, out, 1.0 / stride))
    expected = ref.roi_align(torch.from_numpy(feature.transpose(0, 3, 1, 2)), torch.from_numpy(rois), out,
                             1.0 / stride).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert not got[-2].any()  # wholly outside: zeros


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="XLA through tf.function")
def test_compiled_with_xla_on_tensorflow():
    import tensorflow as tf

    boxes, scores, groups = hard_boxes(200)
    real = np.ones(200, bool)
    eager = nms_lib._batched_keep(boxes, scores, groups, real, 0.5, 3, 128)
    xla = tf.function(lambda b, s, g, r: nms_lib._batched_keep(b, s, g, r, 0.5, 3, 128), jit_compile=True)
    compiled = xla(boxes, scores, groups, real)
    assert int(compiled[1]) == int(eager[1])
    count = int(eager[1])
    np.testing.assert_array_equal(compiled[0].numpy()[:count], eager[0].numpy()[:count])

    feature = np.random.default_rng(2).normal(size=(2, 13, 17, 6)).astype(np.float32)
    rois = hard_rois(13, 17, 8)
    expected = roi_lib.roi_align(feature, rois, 7, 0.125)
    xla = tf.function(lambda f, r: roi_lib._roi_align(f, r, 7, 0.125, 8, 16, 17), jit_compile=True)
    np.testing.assert_allclose(xla(feature, rois).numpy(), ops.convert_to_numpy(expected), atol=1e-5)
