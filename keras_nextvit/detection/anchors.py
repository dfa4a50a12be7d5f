"""mmdet 2.x's ``AnchorGenerator`` as Mask R-CNN's RPN uses it.

Per level of stride ``s`` (4, 8, 16, 32, 64 for P2..P6) there are three base
anchors, one per aspect ratio (0.5, 1, 2 in that order), all of scale 8:
``h_ratio = sqrt(r)``, ``w_ratio = 1 / h_ratio`` (float32),
``w = s * w_ratio * 8``, ``h = s * h_ratio * 8``, centred on the origin:
``(-w/2, -h/2, w/2, h/2)``. Ratio 0.5 is the wide one. The anchor of
position (y, x) is the base anchor shifted by ``(x*s, y*s, x*s, y*s)``:
centres on ``(x*s, y*s)`` (``center_offset=0``), not on the cell centres.
Anchor ``a`` of position (y, x) of a level of width W has index
``(y * W + x) * 3 + a``, the order of the RPN's outputs.
"""

import numpy as np

STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)
SCALES = (8.0,)


def base_anchors(stride, ratios=RATIOS, scales=SCALES):
    """The level's base anchors, ``(len(ratios) * len(scales), 4)`` float32,
    ratio-major as mmdet orders them."""
    ratios = np.asarray(ratios, np.float32)
    scales = np.asarray(scales, np.float32)
    size = np.float32(stride)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (size * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    half = np.float32(0.5)
    return np.stack([-half * ws, -half * hs, half * ws, half * hs], axis=-1).astype(np.float32)


def grid_anchors(stride, height, width, ratios=RATIOS, scales=SCALES):
    """Every anchor of a ``height`` x ``width`` level, ``(height * width * A, 4)``
    float32 in the RPN's index order (position-major, anchor-minor)."""
    base = base_anchors(stride, ratios, scales)
    shift_x = np.arange(width, dtype=np.float32) * np.float32(stride)
    shift_y = np.arange(height, dtype=np.float32) * np.float32(stride)
    xx, yy = np.meshgrid(shift_x, shift_y)  # (height, width), row-major
    shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


def level_anchors(level_shapes, strides=STRIDES):
    """The anchors of every level, ``[(h_i * w_i * 3, 4), ...]``, for the
    levels' ``(height, width)``."""
    if len(level_shapes) != len(strides):
        raise ValueError(
            f"level_shapes has {len(level_shapes)} levels; expected {len(strides)} (strides {strides})."
        )
    return [grid_anchors(s, h, w) for s, (h, w) in zip(strides, level_shapes)]


def valid_flags(level_shapes, pad_shape, strides=STRIDES, num_base_anchors=len(RATIOS) * len(SCALES)):
    """mmdet's ``valid_flags`` for training: ``(sum of h_i * w_i * A,)`` bool,
    True for the anchors of the positions over the image's own padded size
    ``pad_shape`` ``(height, width)`` (a batch is padded to its largest
    image: the positions beyond a smaller image's ``ceil(pad / stride)``
    are not its own)."""
    flags = []
    for stride, (height, width) in zip(strides, level_shapes):
        valid_h = min(int(np.ceil(pad_shape[0] / stride)), height)
        valid_w = min(int(np.ceil(pad_shape[1] / stride)), width)
        grid = np.zeros((height, width), bool)
        grid[:valid_h, :valid_w] = True
        flags.append(np.repeat(grid.reshape(-1), num_base_anchors))
    return np.concatenate(flags)


__all__ = ["RATIOS", "SCALES", "STRIDES", "base_anchors", "grid_anchors", "level_anchors", "valid_flags"]
