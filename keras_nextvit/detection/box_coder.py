"""mmdet 2.x's ``DeltaXYWHBBoxCoder``: decoding (``delta2bbox``) and, for
training targets, encoding (``bbox2delta``), in ``keras.ops``.

A box ``(x1, y1, x2, y2)`` has centre ``p = (x1 + x2) * 0.5`` and size
``s = x2 - x1`` (no +1), likewise in y. Deltas ``(dx, dy, dw, dh)`` are first
de-normalised, ``d * stds + means``; ``dw, dh`` are clamped to
``[-m, m]`` with ``m = |log(wh_ratio_clip)|`` (4.1351666 for 16/1000; dx, dy
are not clamped); the decoded box has centre ``p + s * d_xy`` and size
``s * exp(d_wh)``, i.e. corners ``centre -+ size * 0.5``. With ``max_shape``
``(height, width)`` (the image's ``img_shape``: the resized image, not its
padding) x is clipped to ``[0, width]`` and y to ``[0, height]``. Float32,
operation for operation as mmdet computes it.

Encoding is the inverse, unclamped: ``d_xy = (g_xy - p_xy) / s``,
``d_wh = log(g_wh / s)``, then ``(d - means) / stds``.

The RPN decodes with means 0 and stds 1; the box head with stds
``(0.1, 0.1, 0.2, 0.2)`` (:data:`BBOX_HEAD_STDS`).
"""

import math

from keras import ops

WH_RATIO_CLIP = 16 / 1000
RPN_STDS = (1.0, 1.0, 1.0, 1.0)
BBOX_HEAD_STDS = (0.1, 0.1, 0.2, 0.2)


def decode(boxes, deltas, stds=RPN_STDS, means=(0.0, 0.0, 0.0, 0.0), max_shape=None,
           wh_ratio_clip=WH_RATIO_CLIP):
    """Boxes ``(..., 4)`` moved by ``deltas`` ``(..., 4)`` (same leading shape).

    ``max_shape``: ``(height, width)`` to clip to (numbers or scalar tensors),
    or ``None``.
    """
    boxes = ops.convert_to_tensor(boxes, "float32")
    deltas = ops.convert_to_tensor(deltas, "float32")
    stds = ops.convert_to_tensor(stds, "float32")
    means = ops.convert_to_tensor(means, "float32")
    denorm = deltas * stds + means
    dxy, dwh = denorm[..., :2], denorm[..., 2:]
    pxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    pwh = boxes[..., 2:] - boxes[..., :2]
    limit = abs(math.log(wh_ratio_clip))
    dwh = ops.clip(dwh, -limit, limit)
    gxy = pxy + pwh * dxy
    gwh = pwh * ops.exp(dwh)
    x1y1 = gxy - gwh * 0.5
    x2y2 = gxy + gwh * 0.5
    if max_shape is not None:
        height, width = max_shape
        high = ops.stack([ops.cast(width, "float32"), ops.cast(height, "float32")])
        x1y1 = ops.minimum(ops.maximum(x1y1, 0.0), high)
        x2y2 = ops.minimum(ops.maximum(x2y2, 0.0), high)
    return ops.concatenate([x1y1, x2y2], axis=-1)


def encode(boxes, targets, stds=RPN_STDS, means=(0.0, 0.0, 0.0, 0.0)):
    """Deltas ``(..., 4)`` that move ``boxes`` onto ``targets`` (both
    ``(..., 4)``, same shape): the regression targets."""
    boxes = ops.convert_to_tensor(boxes, "float32")
    targets = ops.convert_to_tensor(targets, "float32")
    pxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    pwh = boxes[..., 2:] - boxes[..., :2]
    gxy = (targets[..., :2] + targets[..., 2:]) * 0.5
    gwh = targets[..., 2:] - targets[..., :2]
    deltas = ops.concatenate([(gxy - pxy) / pwh, ops.log(gwh / pwh)], axis=-1)
    return (deltas - ops.convert_to_tensor(means, "float32")) / ops.convert_to_tensor(stds, "float32")


__all__ = ["BBOX_HEAD_STDS", "RPN_STDS", "WH_RATIO_CLIP", "decode", "encode"]
