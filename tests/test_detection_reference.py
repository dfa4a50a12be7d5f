"""The Keras Mask R-CNN against the independent PyTorch reference
(tools/torch_reference_detection.py) at sizes the golden files do not have:
odd level sizes, a batch of two images of different shapes (and scales) in
one padded batch, and all three variants.

Compared as the detection README says once discontinuous steps are
involved: raw tensors within 1e-4 of their largest value; proposals and
detections as sets (each of ours matched to a reference box of the same
image, and class, with IoU > 0.999 and the same score within 1e-4 of the
largest), the same counts; masks of matched detections equal except at
pixels whose pasted reference probability is within 1e-5 of the threshold. The
lowered threshold (0) makes every (proposal, class) pair a candidate, so
multiclass NMS, the 100 cut, the mask head and pasting all run.
"""

import numpy as np
import pytest
from conftest import assert_close, load_tool, nhwc

torch = pytest.importorskip("torch")

import keras_nextvit  # noqa: E402
from keras_nextvit import synthetic  # noqa: E402
from keras_nextvit.detection import reference_outputs  # noqa: E402

ref = load_tool("torch_reference_detection", "nextvit_det_torch_reference")

# (variant, padded (H, W), per image (img_shape, ori_shape)). 96x160: P6 is
# 2x3 (odd levels below it); the batch holds a 96x160 image at scale 1 and a
# 70x100 image resized from 140x200 (scale 0.5).
CASES = [
    ("small", (96, 160), [((96, 160), (96, 160)), ((70, 100), (140, 200))]),
    ("base", (64, 96), [((64, 90), (128, 180))]),
    ("large", (64, 64), [((64, 64), (64, 64))]),
]


def _batch(padded, images, seed):
    n = len(images)
    x = synthetic.synthetic_input(seed, (n, 3) + tuple(padded))
    img_shapes, ori_shapes, scales = [], [], []
    for i, (img, ori) in enumerate(images):
        x[i, :, img[0]:, :] = 0
        x[i, :, :, img[1]:] = 0
        img_shapes.append((img[0], img[1], 3))
        ori_shapes.append((ori[0], ori[1], 3))
        w_scale, h_scale = np.float32(img[1] / ori[1]), np.float32(img[0] / ori[0])
        scales.append((w_scale, h_scale, w_scale, h_scale))
    return x, np.array(img_shapes), np.array(scales, np.float32), np.array(ori_shapes)


def _iou(a, b):
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _match(ours, theirs, labels=None, what="boxes"):
    """Index into ``theirs`` of each of ``ours`` (same label, IoU > 0.999,
    same score within 1e-4 of the largest score)."""
    assert len(ours) == len(theirs), f"{what}: {len(ours)} vs {len(theirs)}"
    if not len(ours):
        return np.zeros(0, int)
    iou = _iou(ours[:, :4], theirs[:, :4])
    if labels is not None:
        iou = np.where(labels[0][:, None] == labels[1][None, :], iou, 0)
    close = np.abs(ours[:, 4:5] - theirs[None, :, 4]) <= 1e-4 * np.abs(theirs[:, 4]).max()
    iou = np.where(close, iou, 0)
    index = iou.argmax(1)
    assert (iou[np.arange(len(ours)), index] > 0.999).all(), f"{what}: unmatched"
    assert len(set(index.tolist())) == len(ours), f"{what}: two matched to one"
    return index


@pytest.mark.parametrize("variant,padded,images", CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_matches_torch_reference(variant, padded, images):
    torch_model = ref.load_synthetic(ref.build_detector(variant), seed=0)
    detector = keras_nextvit.NextViTMaskRCNN(variant)
    keras_nextvit.load_torch_weights(detector, ref.synthetic_numpy_state(torch_model, seed=0))
    x, img_shapes, scales, ori_shapes = _batch(padded, images, seed=7)
    theirs = torch_model.forward_all(x, img_shapes, scales, ori_shapes, score_thr=0.0)
    ours = reference_outputs(detector, nhwc(x), img_shapes, scales, ori_shapes, score_thr=0.0)

    for key in [f"feature{i}" for i in range(1, 5)] + [
        f"{name}{i}" for name in ("fpn", "rpn_cls", "rpn_reg") for i in range(1, 6)
    ]:
        assert_close(ours[key], theirs[key], what=key)
    np.testing.assert_array_equal(ours["proposal_counts"], theirs["proposal_counts"])
    np.testing.assert_array_equal(ours["det_counts"], theirs["det_counts"])
    p_start = d_start = 0
    for i, (p_count, d_count) in enumerate(zip(ours["proposal_counts"], ours["det_counts"])):
        p = slice(p_start, p_start + p_count)
        d = slice(d_start, d_start + d_count)
        p_start, d_start = p_start + p_count, d_start + d_count
        _match(ours["proposals"][p], theirs["proposals"][p], what=f"image {i} proposals")
        labels = (ours["det_labels"][d], theirs["det_labels"][d])
        index = _match(ours["det_bboxes"][d], theirs["det_bboxes"][d], labels, f"image {i} detections")
        probs = theirs["mask_probs"][d][index]
        assert_close(ours["mask_probs"][d], probs, what=f"image {i} mask_probs")
        masks, expected = ours[f"masks_img{i}"], theirs[f"masks_img{i}"][index]
        assert masks.shape == expected.shape == (d_count,) + tuple(images[i][1])
        near = theirs[f"masks_ambiguous_img{i}"][index]
        assert not ((masks != expected) & ~near).any(), f"image {i}: masks differ"
    assert ours["det_counts"].sum() > 0  # the mask branch ran
