"""Mask R-CNN's training losses of a batch end to end
(keras_nextvit.detection.training): every weight gets a gradient, and a
tiny detector's total loss falls on generated shapes."""

import math

import keras
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import keras_nextvit
from keras_nextvit.detection import dataset, pipeline, training

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def shapes_dataset(folder, count=2, seed=0):
    """Coloured rectangles (class = colour) on dark noise, with their masks."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        image = rng.uniform(0, 60, (64, 96, 3)).astype(np.uint8)
        boxes, labels, segmentations = [], [], []
        for _ in range(2):
            x0, y0 = int(rng.integers(0, 50)), int(rng.integers(0, 30))
            w, h = int(rng.integers(16, 40)), int(rng.integers(16, 30))
            label = int(rng.integers(0, 3))
            image[y0:y0 + h, x0:x0 + w] = COLOURS[label]
            mask = np.zeros((64, 96), np.uint8)
            mask[y0:y0 + h, x0:x0 + w] = 1
            encoded = mask_utils.encode(np.asfortranarray(mask))
            encoded["counts"] = encoded["counts"].decode()
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
            segmentations.append(encoded)
        Image.fromarray(image).save(folder / f"{i}.png")
        records.append(dataset.Instances(str(folder / f"{i}.png"), i, 64, 96, np.array(boxes, np.float32),
                                         np.array(labels), segmentations, np.zeros((0, 4), np.float32)))
    return records


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a GradientTape step")
def test_a_tiny_detectors_loss_falls(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    # at their own 64x96 (scale (112, 64)): the eager RoIAlign keeps every RoI's feature window
    # for the gradient, which grows with the maps
    batch = pipeline.collate([pipeline.training_example(r, scale=(112, 64)) for r in shapes_dataset(tmp_path)])
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3)
    optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.05)  # mmdet's recipe
    seed = keras.random.SeedGenerator(0)
    totals = []
    for step in range(6):
        with tf.GradientTape() as tape:
            out = training.detector_losses(detector, batch, seed)
        names = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")
        assert set(out) == {"loss", *names}
        np.testing.assert_allclose(float(out["loss"]), sum(float(out[n]) for n in names), rtol=1e-6)
        grads = tape.gradient(out["loss"], detector.trainable_variables)
        if step == 0:  # every part of the detector learns: backbone, FPN, RPN, box and mask heads
            missing = [v.path for v, g in zip(detector.trainable_variables, grads) if g is None]
            assert not missing, missing
            assert all(float(out[n]) > 0 for n in names)
        optimizer.apply_gradients(zip(grads, detector.trainable_variables))
        totals.append(float(out["loss"]))
    assert all(math.isfinite(t) for t in totals)
    assert min(totals[3:]) < 0.5 * totals[0], totals
