"""mmcv 1.x's ``RoIAlign`` (``aligned=True``, ``sampling_ratio=0``, average)
and mmdet's ``SingleRoIExtractor`` level mapping, in ``keras.ops``.

Per RoI ``(batch_index, x1, y1, x2, y2)`` (input-image coordinates) on a map
of stride ``s`` (``scale = 1 / s``), float32 as the CPU kernel computes it::

    start = x1 * scale - 0.5          end = x2 * scale - 0.5     (likewise y)
    roi_w = end - start               bin = roi_w / out
    grid  = ceil(roi_w / out)         # samples per bin and axis: depends on the RoI's size
    x     = start + p * bin + (i + 0.5) * bin / grid          # bin p, sample i

A sample outside ``[-1, W] x [-1, H]`` adds 0; otherwise a coordinate
``<= 0`` becomes 0, ``low = int(x)``, and at the last row/column
(``low >= W - 1``) both neighbours are the last one; bilinear weights
``(1 - l, l)``. A bin is the sum of its ``grid_h * grid_w`` samples divided by
``max(grid_h * grid_w, 1)`` (an empty RoI gives 0).

How it is computed: bilinear interpolation is separable, so a bin's average
is ``sum_{r, c} A_y[p, r] * F[r, c] * A_x[q, c]`` where ``A_y[p, r]`` sums the
y-weights that bin row ``p``'s samples put on feature row ``r`` (likewise
``A_x``). Each RoI reads only a window of the map (its rows and columns,
plus one), so the RoI feature is two small products on a gathered crop:
``(out x S_h) . (S_h x S_w x C) . (S_w x out)``. The sums run in another order
than the kernel's sample loop, so results agree to float32 rounding (about
1e-7 relative), not bit for bit.

**Level mapping** (``finest_scale=56``, P2..P5 only): ``scale =
sqrt(w * h)``, ``level = floor(log2(scale / 56 + 1e-6))`` clamped to [0, 3].
"""

import keras
import numpy as np
from keras import ops

from .compiled import bucket, compiled

FINEST_SCALE = 56
ROI_STRIDES = (4, 8, 16, 32)
# Crops are gathered in chunks of at most this many float32 values.
_CHUNK_VALUES = 1 << 24
_ROI_STEP = 32
# Above this many float32 values of crops in one call, RoIs are pooled in
# groups of similar windows.
_GROUP_VALUES = 1 << 26


def map_roi_levels(rois, num_levels=len(ROI_STRIDES), finest_scale=FINEST_SCALE):
    """The pyramid level (0 = P2) of every RoI ``(R, 5)``, int32 ``(R,)``."""
    rois = ops.convert_to_tensor(rois, "float32")
    scale = ops.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    level = ops.floor(ops.log2(scale / float(finest_scale) + 1e-6))
    return ops.cast(ops.clip(level, 0, num_levels - 1), "int32")


def _axis(rois, lo, hi, scale, out):
    """Per RoI along one axis: start, bin size and samples per bin."""
    start = rois[:, lo] * scale - 0.5
    end = rois[:, hi] * scale - 0.5
    size = end - start
    bin_size = size / float(out)
    grid = ops.cast(ops.ceil(bin_size), "int32")
    return start, end, bin_size, grid


def _axis_weights(start, bin_size, grid, length, out, origin, window, max_grid):
    """``(R, out, window)``: the bilinear weight that each output bin's
    samples (summed, not yet averaged) put on rows ``origin + k``."""
    positions = ops.arange(window, dtype="int32")
    bins = ops.cast(ops.arange(out), "float32")
    divisor = ops.cast(ops.maximum(grid, 1), "float32")
    weights = ops.zeros((ops.shape(start)[0], out, window), "float32")
    base = start[:, None] + bins[None, :] * bin_size[:, None]  # (R, out)
    for i in range(max_grid):
        step = ((i + 0.5) * bin_size) / divisor
        coord = base + step[:, None]
        valid = (coord >= -1.0) & (coord <= float(length)) & (i < grid)[:, None]
        coord = ops.maximum(coord, 0.0)
        low = ops.cast(ops.floor(coord), "int32")
        at_end = low >= length - 1
        low = ops.where(at_end, length - 1, low)
        high = ops.where(at_end, length - 1, low + 1)
        coord = ops.where(at_end, ops.cast(low, "float32"), coord)
        frac = coord - ops.cast(low, "float32")
        w_low = ops.where(valid, 1.0 - frac, 0.0)
        w_high = ops.where(valid, frac, 0.0)
        rel_low = (low - origin[:, None])[..., None]
        rel_high = (high - origin[:, None])[..., None]
        weights = weights + (
            w_low[..., None] * ops.cast(positions == rel_low, "float32")
            + w_high[..., None] * ops.cast(positions == rel_high, "float32")
        )
    return weights


def _window(start, end, length):
    """First row of each RoI's window, and the rows after it that any of its
    samples can touch (the window is the largest of these)."""
    origin = ops.cast(ops.clip(ops.floor(start), 0, length - 1), "int32")
    last = ops.cast(ops.clip(ops.floor(end) + 2, 0, length - 1), "int32")
    return origin, last - origin + 1


def _pool_windows(flat, index, weights_y, weights_x, chunk):
    """``(R, out, out, C)``: each RoI's window of ``flat`` (``(N H W, C)``,
    rows ``index`` ``(R, S_h, S_w)``) between its axis weights, ``chunk``
    RoIs' crops at a time."""
    pieces = []
    for first in range(0, int(index.shape[0]), chunk):
        part = slice(first, first + chunk)
        crop = ops.take(flat, index[part], axis=0)  # (r, S_h, S_w, C)
        rows_done = ops.einsum("rps,rstc->rptc", weights_y[part], crop)
        pieces.append(ops.einsum("rptc,rqt->rpqc", rows_done, weights_x[part]))
    return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=0)


def _windows_pooled(flat, index, weights_y, weights_x, chunk):
    """:func:`_pool_windows`, differentiable with respect to ``flat``
    without keeping the crops: the pooling is linear in the map, so its
    gradient is the transpose applied to the upstream gradient, chunk by
    chunk, summed back into the map's rows (``segment_sum``). Autodiff
    would keep every crop until the backward pass (gigabytes for a training
    batch's 1024 RoIs). On TensorFlow, the backend that trains detectors;
    JAX and PyTorch run the pooling as it is."""
    if keras.backend.backend() != "tensorflow":
        return _pool_windows(flat, index, weights_y, weights_x, chunk)

    @ops.custom_gradient
    def pooled(flat):
        def grad(upstream):
            rows = int(flat.shape[0])
            total = None
            for first in range(0, int(index.shape[0]), chunk):
                part = slice(first, first + chunk)
                cols_done = ops.einsum("rpqc,rqt->rptc", upstream[part], weights_x[part])
                crop = ops.einsum("rps,rptc->rstc", weights_y[part], cols_done)
                summed = ops.segment_sum(ops.reshape(crop, (-1, crop.shape[-1])),
                                         ops.reshape(index[part], (-1,)), num_segments=rows)
                total = summed if total is None else total + summed
            return total

        # on a stopped copy: the tape would otherwise record the crops too
        return _pool_windows(ops.stop_gradient(flat), index, weights_y, weights_x, chunk), grad

    return pooled(flat)


@compiled(static=("out", "spatial_scale", "max_grid", "window_h", "window_w"))
def _roi_align(features, rois, out, spatial_scale, max_grid, window_h, window_w):
    _, height, width, channels = features.shape
    start_x, end_x, bin_w, grid_w = _axis(rois, 1, 3, spatial_scale, out)
    start_y, end_y, bin_h, grid_h = _axis(rois, 2, 4, spatial_scale, out)
    origin_x, _ = _window(start_x, end_x, width)
    origin_y, _ = _window(start_y, end_y, height)
    weights_x = _axis_weights(start_x, bin_w, grid_w, width, out, origin_x, window_w, max_grid)
    weights_y = _axis_weights(start_y, bin_h, grid_h, height, out, origin_y, window_h, max_grid)
    samples = ops.cast(ops.maximum(grid_w * grid_h, 1), "float32")

    flat = ops.reshape(features, (-1, channels))
    batch = ops.cast(rois[:, 0], "int32")
    rows = ops.minimum(origin_y[:, None] + ops.arange(window_h, dtype="int32")[None], height - 1)
    cols = ops.minimum(origin_x[:, None] + ops.arange(window_w, dtype="int32")[None], width - 1)
    index = (batch[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
    chunk = max(1, _CHUNK_VALUES // (window_h * window_w * channels))
    pooled = _windows_pooled(flat, index, weights_y, weights_x, chunk)
    return pooled / samples[:, None, None, None]


def roi_align(features, rois, output_size, spatial_scale):
    """RoIAlign of ``rois`` ``(R, 5)`` on one NHWC map: ``(R, out, out, C)``.

    The sample counts and window sizes are read from the RoIs (eagerly);
    the arithmetic is one compiled function of them on JAX. A RoI with a
    negative width or height is an error, as in mmcv's kernel.
    """
    features = ops.convert_to_tensor(features, "float32")
    rois = ops.convert_to_tensor(rois, "float32")
    _, height, width, channels = (int(d) for d in ops.shape(features))
    out = int(output_size)
    if int(ops.shape(rois)[0]) == 0:
        return ops.zeros((0, out, out, channels), "float32")
    start_x, end_x, bin_w, grid_w = _axis(rois, 1, 3, spatial_scale, out)
    start_y, end_y, bin_h, grid_h = _axis(rois, 2, 4, spatial_scale, out)
    if bool(ops.convert_to_numpy(ops.any((bin_w < 0) | (bin_h < 0)))):
        raise ValueError("RoIAlign: every RoI needs x2 >= x1 and y2 >= y1 (mmcv's kernel rejects others).")
    grids = ops.convert_to_numpy(ops.maximum(grid_w, grid_h))
    windows_w = ops.convert_to_numpy(_window(start_x, end_x, width)[1])
    windows_h = ops.convert_to_numpy(_window(start_y, end_y, height)[1])

    def pooled(index=None):
        """The RoIs at ``index`` (NumPy; default: all), pooled in one call."""
        chosen = rois if index is None else ops.take(rois, ops.convert_to_tensor(index), axis=0)
        pick = slice(None) if index is None else index
        return _roi_align(
            features, chosen, out, float(spatial_scale), int(grids[pick].max()),
            min(bucket(windows_h[pick].max(), 4), height), min(bucket(windows_w[pick].max(), 4), width),
        )

    groups = _window_groups(windows_h, windows_w, channels)
    if len(groups) == 1:
        return pooled()
    order = np.concatenate(groups)
    # each group padded with copies of its first RoI to a bucketed count: few compiled shapes on JAX
    padded = [np.concatenate([index, np.repeat(index[:1], bucket(index.size, _ROI_STEP) - index.size)])
              for index in groups]
    parts = ops.concatenate([pooled(index)[: len(group)]
                             for index, group in zip(padded, groups)], axis=0)
    return ops.take(parts, ops.convert_to_tensor(np.argsort(order).astype("int32")), axis=0)


def _window_groups(windows_h, windows_w, channels):
    """The RoIs (indices) pooled together. One group, unless a few large
    windows would make every RoI's crop as large as theirs: a training
    batch's proposals include long thin boxes whose window spans the map,
    while most windows are a few cells wide (the level mapping sees to
    that). Then RoIs go by their windows' sides rounded up to powers of
    two, so that no crop is more than four times its RoI's own window."""
    count = len(windows_h)
    if count * int(windows_h.max()) * int(windows_w.max()) * channels <= _GROUP_VALUES:
        return [np.arange(count, dtype="int32")]
    side = lambda w: np.left_shift(1, np.ceil(np.log2(np.maximum(w, 1))).astype(int))  # noqa: E731
    keys = side(windows_h) * (1 << 16) + side(windows_w)
    return [np.flatnonzero(keys == key).astype("int32") for key in np.unique(keys)]


def whole_map_weights(boxes, output_size, spatial_scale, height, width):
    """RoIAlign's separable weights over whole axes, for boxes that lie on
    a ``height x width`` map: ``(weights_y (R, out, height), weights_x (R,
    out, width), samples (R,))`` for ``boxes`` ``(R, 4)`` ``(x1, y1, x2, y2)``
    in input pixels. A bin is ``weights_y[p] . map . weights_x[q] /
    samples``. Every size is static (the windows are the axes, the sample
    loop runs to the largest grid a box inside the map can have), so this
    traces into a fixed-shape graph."""
    boxes = ops.convert_to_tensor(boxes, "float32")
    rois = ops.concatenate([ops.zeros_like(boxes[:, :1]), boxes], axis=1)
    out = int(output_size)
    start_x, _, bin_w, grid_w = _axis(rois, 1, 3, spatial_scale, out)
    start_y, _, bin_h, grid_h = _axis(rois, 2, 4, spatial_scale, out)
    # a box inside the map spans at most the map: bins of at most length / out cells
    max_grid = -(-max(int(height), int(width)) // out) + 1
    origin = ops.zeros_like(grid_w)
    weights_x = _axis_weights(start_x, bin_w, grid_w, int(width), out, origin, int(width), max_grid)
    weights_y = _axis_weights(start_y, bin_h, grid_h, int(height), out, origin, int(height), max_grid)
    return weights_y, weights_x, ops.cast(ops.maximum(grid_w * grid_h, 1), "float32")


def multilevel_roi_align_whole_map(features, boxes, output_size, strides=ROI_STRIDES):
    """:func:`multilevel_roi_align` for a fixed number of boxes per image,
    as whole-map products: ``features`` NHWC P2..P5 of ``N`` images,
    ``boxes`` ``(N, K, 4)`` (each inside its image) -> ``(N, K, out, out,
    C)``. Each level pools every box with weights that are zero unless the
    box maps to it, so every shape is static: a training step traces it
    once. It costs ``N K out sum(H W) C`` multiply-adds per product (every
    box against whole rows), cheap on the small maps of small images and
    ruinous on large ones, where :func:`multilevel_roi_align` reads windows."""
    boxes = ops.convert_to_tensor(boxes, "float32")
    n, k = int(boxes.shape[0]), int(boxes.shape[1])
    flat = ops.reshape(boxes, (n * k, 4))
    levels = map_roi_levels(ops.concatenate([ops.zeros_like(flat[:, :1]), flat], axis=1), len(strides))
    out = int(output_size)
    pooled = 0.0
    for level, (feature, stride) in enumerate(zip(features, strides)):
        _, height, width, _ = (int(d) for d in feature.shape)
        weights_y, weights_x, samples = whole_map_weights(flat, out, 1.0 / stride, height, width)
        # the box's own level only, and the average over its samples, folded into the row weights
        scale = ops.cast(ops.equal(levels, level), "float32") / samples
        weights_y = ops.reshape(weights_y * scale[:, None, None], (n, k, out, height))
        weights_x = ops.reshape(weights_x, (n, k, out, width))
        feature = ops.convert_to_tensor(feature, "float32")

        def pool(weights_y=weights_y, weights_x=weights_x, feature=feature):
            rows = ops.einsum("nkph,nhwc->nkpwc", weights_y, feature)
            return ops.einsum("nkpwc,nkqw->nkpqc", rows, weights_x)

        # a level no box maps to is skipped (small images map every box to P2)
        shape = (n, k, out, out, int(feature.shape[-1]))
        pooled = pooled + ops.cond(ops.any(ops.equal(levels, level)), pool, lambda: ops.zeros(shape, "float32"))
    return pooled


def multilevel_roi_align(features, rois, output_size, strides=ROI_STRIDES, levels=None):
    """mmdet's ``SingleRoIExtractor``: each RoI pooled from its level of
    ``features`` (NHWC P2..P5), ``(R, out, out, C)`` in RoI order."""
    rois = ops.convert_to_tensor(rois, "float32")
    if levels is None:
        levels = map_roi_levels(rois, len(strides))
    levels = ops.convert_to_numpy(levels)
    channels = int(ops.shape(features[0])[-1])
    count = int(ops.shape(rois)[0])
    out = int(output_size)
    pooled = ops.zeros((count, out, out, channels), "float32")
    for level, (feature, stride) in enumerate(zip(features, strides)):
        index = np.flatnonzero(levels == level).astype("int32")
        if index.size == 0:
            continue
        # Padded with empty RoIs (pooled to 0) to a bucketed count: one
        # compiled shape for many counts.
        chosen = ops.take(rois, index, axis=0)
        extra = bucket(index.size, _ROI_STEP) - index.size
        if extra:
            chosen = ops.concatenate([chosen, ops.zeros((extra, 5), "float32")], axis=0)
        part = roi_align(feature, chosen, out, 1.0 / stride)[: index.size]
        pooled = ops.scatter_update(pooled, ops.convert_to_tensor(index[:, None]), part)
    return pooled


__all__ = ["FINEST_SCALE", "ROI_STRIDES", "map_roi_levels", "multilevel_roi_align", "multilevel_roi_align_whole_map",
           "roi_align", "whole_map_weights"]
