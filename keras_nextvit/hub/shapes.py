"""Generated detection and segmentation data: coloured rectangles on a grey
background, for the tutorial and the tests of the keras-hub tasks."""

import numpy as np

# class index -> RGB colour (class 0 is the background of the masks)
COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230))


def coloured_shapes(count, size=64, max_shapes=2, seed=0):
    """``count`` images with 1-``max_shapes`` coloured rectangles each.

    Returns a dict: ``images`` float32 ``(count, size, size, 3)`` in [0, 255];
    ``boxes`` float32 ``(count, max_shapes, 4)`` in pixels, ``yxyx``, padded
    with -1; ``labels`` int32 ``(count, max_shapes)``, the colour index
    0-2, padded with -1; ``masks`` int32 ``(count, size, size)``, 0 for the
    background and ``label + 1`` for a shape (later shapes on top).
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}.")
    rng = np.random.default_rng(seed)
    images = np.full((count, size, size, 3), 128, "float32")
    images += rng.normal(0, 8, images.shape).astype("float32")
    boxes = np.full((count, max_shapes, 4), -1, "float32")
    labels = np.full((count, max_shapes), -1, "int32")
    masks = np.zeros((count, size, size), "int32")
    for i in range(count):
        for j in range(rng.integers(1, max_shapes + 1)):
            h, w = rng.integers(size // 4, size // 2, 2)
            top, left = rng.integers(0, size - h), rng.integers(0, size - w)
            label = int(rng.integers(len(COLOURS)))
            images[i, top : top + h, left : left + w] = COLOURS[label]
            boxes[i, j] = (top, left, top + h, left + w)
            labels[i, j] = label
            masks[i, top : top + h, left : left + w] = label + 1
    return {"images": np.clip(images, 0, 255), "boxes": boxes, "labels": labels, "masks": masks}
