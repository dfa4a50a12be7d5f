"""Mask R-CNN's RPN anchors and box decoding against the reference
(tests/data/detection/README.md) and its golden files."""

import keras
import numpy as np
import pytest
from conftest import golden

from keras_nextvit.detection import anchors, box_coder

CASES = ["detection/det_maskrcnn_small_128x192", "detection/det_maskrcnn_small_128x128_rescale"]


def level_shapes(case_data):
    return [case_data[f"fpn{i}"].shape[2:] for i in range(1, 6)]


@pytest.mark.parametrize("case", CASES)
def test_anchors_are_the_reference_anchors(case):
    data = golden(case)
    ours = anchors.level_anchors(level_shapes(data))
    for level, got in enumerate(ours, start=1):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, data[f"anchors{level}"], err_msg=f"level {level}")


def test_base_anchors_as_the_readme_gives_them():
    stride4 = anchors.base_anchors(4)
    expected = np.array(
        [[-22.627417, -11.313708, 22.627417, 11.313708],  # ratio 0.5: the wide one
         [-16, -16, 16, 16],
         [-11.313708, -22.627417, 11.313708, 22.627417]], np.float32,
    )
    np.testing.assert_allclose(stride4, expected, rtol=1e-7)
    for stride in anchors.STRIDES:  # the other strides scale them exactly
        np.testing.assert_array_equal(anchors.base_anchors(stride), stride4 * np.float32(stride / 4))
    with pytest.raises(ValueError, match=r"level_shapes has 4 levels; expected 5"):
        anchors.level_anchors([(8, 8)] * 4)


def torch_delta2bbox(rois, deltas, stds, max_shape):
    """mmdet 2.23's delta2bbox (means 0, wh_ratio_clip 16/1000), transcribed
    from the reference README in PyTorch."""
    import torch

    rois, deltas = torch.from_numpy(rois), torch.from_numpy(deltas)
    denorm = deltas * torch.tensor(stds, dtype=torch.float32) + torch.zeros(4)
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    limit = float(np.abs(np.log(16 / 1000)))
    dwh = dwh.clamp(min=-limit, max=limit)
    gxy = pxy + pwh * dxy
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_shape is not None:
        boxes[:, 0::2].clamp_(min=0, max=max_shape[1])
        boxes[:, 1::2].clamp_(min=0, max=max_shape[0])
    return boxes.numpy()


@pytest.mark.parametrize("stds", [box_coder.RPN_STDS, box_coder.BBOX_HEAD_STDS])
@pytest.mark.parametrize("max_shape", [None, (120, 128)])
def test_decode_is_delta2bbox(stds, max_shape):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    xy = rng.uniform(-20, 150, (500, 2)).astype(np.float32)
    wh = rng.uniform(0, 90, (500, 2)).astype(np.float32)
    rois = np.concatenate([xy, xy + wh], axis=1)
    # large size deltas reach the clamp at +-4.135
    deltas = np.concatenate([rng.normal(0, 1, (500, 2)), rng.normal(0, 4, (500, 2))], axis=1).astype(np.float32)
    got = keras.ops.convert_to_numpy(box_coder.decode(rois, deltas, stds=stds, max_shape=max_shape))
    expected = torch_delta2bbox(rois, deltas, stds, max_shape)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    if max_shape is not None:
        assert got[:, 0::2].max() <= max_shape[1] and got[:, 1::2].max() <= max_shape[0] and got.min() >= 0


@pytest.mark.parametrize("case", CASES)
def test_every_proposal_is_a_decoded_anchor(case):
    """The reference's proposals are anchors moved by the RPN's deltas and
    clipped to img_shape (before NMS picks among them): each is one of ours,
    with its anchor's sigmoid score."""
    data = golden(case)
    height, width = (int(v) for v in data["img_shapes"][0][:2])
    boxes, scores = [], []
    for level, level_anchors in enumerate(anchors.level_anchors(level_shapes(data)), start=1):
        reg = data[f"rpn_reg{level}"][0].transpose(1, 2, 0).reshape(-1, 4)  # (y, x, anchor) order
        cls = data[f"rpn_cls{level}"][0].transpose(1, 2, 0).reshape(-1)
        boxes.append(keras.ops.convert_to_numpy(box_coder.decode(level_anchors, reg, max_shape=(height, width))))
        scores.append(1 / (1 + np.exp(-cls.astype(np.float64))))
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    proposals = data["proposals"]
    assert len(proposals) > 500
    tolerance = 1e-5 * np.abs(proposals[:, :4]).max()
    for proposal in proposals:
        # several anchors can be clipped to the same box (the whole image)
        same_box = np.abs(boxes - proposal[:4]).max(axis=1) <= tolerance
        assert same_box.any(), proposal
        assert np.abs(scores[same_box] - proposal[4]).min() <= 1e-6, (proposal, scores[same_box])
