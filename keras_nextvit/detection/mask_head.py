"""mmdet 2.x's ``FCNMaskHead`` and the pasting of its masks into the image.

The head, on ``(D, 14, 14, 256)`` RoI features of the detections::

    x = relu(convs.i(x))  for i = 0..3      # 3x3, pad 1, bias
    x = relu(upsample(x))                   # ConvTranspose2d(256, 256, 2, stride 2): 28x28
    logits = conv_logits(x)                 # 1x1 -> num_classes

Each detection keeps its label's channel; ``sigmoid`` gives the 28x28
probability map.

**Pasting** (``_do_paste_mask`` on the CPU: one mask at a time,
``skip_empty``): the box ``(x1, y1, x2, y2)`` is in original-image
coordinates. Only columns ``[max(floor(x1) - 1, 0), min(ceil(x2) + 1, W))``
(rows likewise) are painted, the rest stay False. A pixel centre
``u = col + 0.5`` maps to ``g = (u - x1) / (x2 - x1) * 2 - 1`` (an infinite
value becomes 0), and the map is sampled as ``F.grid_sample(bilinear,
padding_mode="zeros", align_corners=False)`` does: source column
``((g + 1) * 28 - 1) / 2``, the two neighbouring columns weighted
``(1 - l, l)``, a neighbour outside the map adding 0. The mask is
``probability >= mask_thr_binary`` (0.5). Sampling is separable, so the image
of a mask is ``W_y . probs . W_x^T`` with one small weight matrix per axis.
"""

import keras
from keras import ops

from ..layers import _PACKAGE, _Composite, _pointwise
from .compiled import bucket, compiled

_CHUNK_VALUES = 1 << 24


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FCNMaskHead(_Composite):
    """``FCNMaskHead(num_convs=4, conv_out_channels=256)``; called on NHWC
    RoI features, returns NHWC mask logits ``(D, 2s, 2s, num_classes)``."""

    def __init__(self, num_classes=80, channels=256, num_convs=4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.convs = [
            keras.layers.Conv2D(channels, 3, padding="same", name=f"convs_{i}") for i in range(num_convs)
        ]
        self.upsample = keras.layers.Conv2DTranspose(channels, 2, strides=2, name="upsample")
        self.conv_logits = _pointwise(num_classes, True, "conv_logits")

    def torch_children(self):
        for i, conv in enumerate(self.convs):
            yield f"convs.{i}.conv", conv
        yield "upsample", self.upsample
        yield "conv_logits", self.conv_logits

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = shape[:-1] + (self.channels,)
        self.upsample.build(shape)
        self.conv_logits.build(shape[:-1] + (self.channels,))

    def call(self, roi_feats, training=None):
        x = roi_feats
        for conv in self.convs:
            x = ops.relu(conv(x))
        x = ops.relu(self.upsample(x))
        return self.conv_logits(x)

    def compute_output_shape(self, input_shape):
        size = None if input_shape[1] is None else 2 * input_shape[1]
        return (input_shape[0], size, size, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, channels=self.channels, num_convs=self.num_convs)
        return config


def _paste_weights(start, end, length, size):
    """``(D, length, size)``: how each image pixel along one axis samples the
    ``size`` mask cells, for boxes from ``start`` to ``end`` on that axis."""
    pixels = ops.cast(ops.arange(length), "float32")
    first = ops.maximum(ops.floor(start) - 1.0, 0.0)
    last = ops.minimum(ops.ceil(end) + 1.0, float(length))
    painted = (pixels[None] >= first[:, None]) & (pixels[None] < last[:, None])
    grid = ((pixels[None] + 0.5) - start[:, None]) / (end - start)[:, None] * 2.0 - 1.0
    grid = ops.where(ops.isinf(grid), 0.0, grid)
    source = ((grid + 1.0) * float(size) - 1.0) / 2.0
    left = ops.floor(source)
    frac = source - left
    cells = ops.cast(ops.arange(size), "float32")[None, None, :]
    weights = ops.where(cells == left[..., None], (1.0 - frac)[..., None], 0.0) + ops.where(
        cells == (left + 1.0)[..., None], frac[..., None], 0.0
    )
    return ops.where(painted[..., None], weights, 0.0)


@compiled(static=("height", "width", "threshold"))
def _paste(mask_probs, boxes, height, width, threshold):
    count, size = mask_probs.shape[0], mask_probs.shape[1]
    chunk = max(1, _CHUNK_VALUES // (height * width))
    pieces = []
    for first in range(0, count, chunk):
        part = slice(first, min(first + chunk, count))
        box = boxes[part]
        wy = _paste_weights(box[:, 1], box[:, 3], height, size)
        wx = _paste_weights(box[:, 0], box[:, 2], width, size)
        rows = ops.einsum("dhk,dkl->dhl", wy, mask_probs[part])
        image = ops.einsum("dhl,dwl->dhw", rows, wx)
        pieces.append(image >= threshold if threshold >= 0 else image)
    return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=0)


def paste_masks(mask_probs, boxes, ori_shape, threshold=0.5):
    """Boolean masks ``(D, H, W)`` at the original image size ``ori_shape``
    ``(H, W)`` from ``(D, s, s)`` probabilities and ``(D, 4)`` boxes in
    original-image coordinates (``threshold < 0``: the probabilities)."""
    mask_probs = ops.convert_to_tensor(mask_probs, "float32")
    boxes = ops.convert_to_tensor(boxes, "float32")
    height, width = (int(v) for v in ori_shape)
    count = int(ops.shape(mask_probs)[0])
    if count == 0:
        return ops.zeros((0, height, width), "bool" if threshold >= 0 else "float32")
    extra = bucket(count, 8) - count  # one compiled shape for many counts
    if extra:
        size = int(ops.shape(mask_probs)[1])
        mask_probs = ops.concatenate([mask_probs, ops.zeros((extra, size, size), "float32")], axis=0)
        boxes = ops.concatenate([boxes, ops.zeros((extra, 4), "float32")], axis=0)
    return _paste(mask_probs, boxes, height, width, float(threshold))[:count]


__all__ = ["FCNMaskHead", "paste_masks"]
