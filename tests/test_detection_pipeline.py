"""mmdet's training pipeline for one annotated image
(keras_nextvit.detection.pipeline) and the anchors' valid flags, against
hand-computed values and the test pipeline."""

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from keras_nextvit.detection import anchors, dataset, inference, pipeline
from keras_nextvit.preprocessing import preprocess_input
from keras_nextvit.segmentation import data as seg_data


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded["counts"] = encoded["counts"].decode()
    return encoded


@pytest.fixture
def record(tmp_path):
    rng = np.random.default_rng(0)
    height, width = 150, 230
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    first = np.zeros((height, width), bool)
    first[20:90, 30:120] = True
    second = np.zeros((height, width), bool)
    second[100:150, 200:230] = True  # reaches the bottom-right corner
    return dataset.Instances(
        path=str(tmp_path / "photo.png"), image_id=1, height=height, width=width,
        boxes=np.array([[30, 20, 120, 90], [200, 100, 240, 160]], np.float32),  # the second beyond the image
        labels=np.array([3, 1]), segmentations=[rle(first), rle(second)], ignored_boxes=np.zeros((0, 4), np.float32),
    )


def test_resize_normalise_pad(record):
    example = pipeline.training_example(record)
    # 150 x 230 -> factor min(1333 / 230, 800 / 150) = 5.333: 800 x int(230 * 5.333 + 0.5) = 1227
    assert example.img_shape == (800, 1227) and example.pad_shape == (800, 1248)
    np.testing.assert_array_equal(example.scale_factor, np.float32([1227 / 230, 800 / 150] * 2))
    # the image is exactly what the test pipeline feeds the detector
    batch, img_shapes, scale_factors, _ = inference.prepare([record.path])
    np.testing.assert_array_equal(example.image, batch[0])
    np.testing.assert_array_equal(example.scale_factor, scale_factors[0])
    w_scale, h_scale = example.scale_factor[:2]
    np.testing.assert_allclose(example.boxes, [[30 * w_scale, 20 * h_scale, 120 * w_scale, 90 * h_scale],
                                               [200 * w_scale, 100 * h_scale, 1227, 800]], rtol=1e-6)
    np.testing.assert_array_equal(example.labels, [3, 1])
    assert example.masks.shape == (2, 800, 1248) and example.masks.dtype == np.uint8
    assert not example.masks[:, :, 1227:].any()  # padding
    resized = seg_data._resize_nearest(record.masks().transpose(1, 2, 0), 800, 1227).numpy().transpose(2, 0, 1)
    np.testing.assert_array_equal(example.masks[:, :, :1227], resized)  # OpenCV's nearest, as segmentation has it


def test_flip_mirrors_image_boxes_and_masks(record):
    plain = pipeline.training_example(record)
    flipped = pipeline.training_example(record, flip=True)
    assert flipped.flipped and flipped.img_shape == plain.img_shape
    width = plain.img_shape[1]
    np.testing.assert_array_equal(flipped.image[:, :width], plain.image[:, :width][:, ::-1])
    np.testing.assert_array_equal(flipped.masks[:, :, :width], plain.masks[:, :, :width][:, :, ::-1])
    np.testing.assert_allclose(flipped.boxes[:, [0, 2]], width - plain.boxes[:, [2, 0]])
    np.testing.assert_array_equal(flipped.boxes[:, [1, 3]], plain.boxes[:, [1, 3]])
    assert flipped.boxes[1, 0] == 0  # the box at the right edge now starts at the left one


def test_an_image_unlike_its_annotations_is_named(record):
    record.height = 151
    with pytest.raises(ValueError, match=r"photo.png is 150x230 pixels; its annotations say 151x230"):
        pipeline.training_example(record)


def test_resize_nearest_reads_the_floor_of_the_scaled_index():
    row = np.arange(5)[None, :]
    np.testing.assert_array_equal(pipeline.resize_nearest(row, (1, 12)), [[0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]])
    np.testing.assert_array_equal(pipeline.resize_nearest(row, (1, 2)), [[0, 2]])


def test_valid_flags_cover_the_images_own_positions():
    # stride 8 and 16 levels of a batch padded to 64 x 96, for an image padded to 40 x 56
    flags = anchors.valid_flags([(8, 12), (4, 6)], (40, 56), strides=(8, 16))
    assert flags.shape == ((8 * 12 + 4 * 6) * 3,)
    first = flags[: 8 * 12 * 3].reshape(8, 12, 3)
    assert first[:5, :7].all() and not first[5:].any() and not first[:, 7:].any()  # ceil(40/8), ceil(56/8)
    second = flags[8 * 12 * 3:].reshape(4, 6, 3)
    assert second[:3, :4].all() and second.sum() == 3 * 4 * 3  # ceil(40/16), ceil(56/16)
    assert anchors.valid_flags([(8, 12)], (64, 96), strides=(8,)).all()


def test_collate_pads_images_and_ground_truth(record):
    from keras import ops

    from keras_nextvit.detection import targets

    big = pipeline.training_example(record)
    record.boxes, record.labels = record.boxes[:1], record.labels[:1]
    record.segmentations = record.segmentations[:1]
    small = pipeline.training_example(record, scale=(400, 300))  # 150 x 230 -> 261 x 400
    batch = pipeline.collate([small, big])
    assert batch["images"].shape == (2, 800, 1248, 3)
    assert not batch["images"][0, 288:].any() and not batch["images"][0, :, 416:].any()
    np.testing.assert_array_equal(batch["images"][1], big.image)
    np.testing.assert_array_equal(batch["gt_valid"], [[True, False], [True, True]])
    np.testing.assert_array_equal(batch["gt_boxes"][1], big.boxes)
    np.testing.assert_array_equal(batch["gt_labels"], [[3, 0], [3, 1]])
    np.testing.assert_array_equal(batch["pad_shapes"], [[288, 416], [800, 1248]])
    assert [m.shape for m in batch["masks"]] == [(1, 288, 416), (2, 800, 1248)]
    with pytest.raises(ValueError, match="An image has 2 instances; max_instances is 1"):
        pipeline.collate([small, big], max_instances=1)
    # the RPN's targets of the batch: the small image's anchors over the padding take no part
    levels = [(800 // s, 1248 // s) for s in (4, 8, 16, 32)] + [(13, 20)]
    positive, negative, deltas = (ops.convert_to_numpy(t) for t in targets.rpn_batch_targets(levels, batch, seed=0))
    total = sum(h * w * 3 for h, w in levels)
    assert positive.shape == negative.shape == (2, total) and deltas.shape == (2, total, 4)
    own = anchors.valid_flags(levels, (288, 416))
    assert not (positive[0] | negative[0])[~own].any()
    assert positive.sum(1).min() > 0 and ((positive | negative).sum(1) == 256).all()


class Scripted:
    """A stand-in for a NumPy Generator that returns scripted draws, checking
    that each is asked for in mmdet's order and over mmdet's range."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self):
        kind, value = self.draws.pop(0)
        assert kind == "random"
        return value

    def integers(self, low, high=None):
        kind, value = self.draws.pop(0)
        low, high = (0, low) if high is None else (low, high)
        assert kind == (low, high), f"drew from [{low}, {high}), expected {kind}"
        return value


def test_multiscale_resize_policy_is_the_1x_pipeline_at_the_drawn_scale(record):
    """Policy 1 of the 3x AutoAugment: no flip, one of the 11 scales."""
    assert pipeline.MULTISCALE_SCALES == tuple((1333, s) for s in (480, 512, 544, 576, 608, 640, 672, 704,
                                                                    736, 768, 800))
    rng = Scripted(("random", 0.7), ((0, 2), 0), ((0, 11), 3))  # no flip; resize policy; short side 576
    example = pipeline.multiscale_example(record, rng)
    assert not rng.draws and not example.flipped
    expected = pipeline.training_example(record, scale=(1333, 576))
    assert example.img_shape == expected.img_shape == (576, int(230 * 576 / 150 + 0.5))
    for field in ("image", "boxes", "labels", "masks", "scale_factor"):
        np.testing.assert_array_equal(getattr(example, field), getattr(expected, field))


def test_multiscale_flips_the_original_image_first(record):
    """The 3x pipeline flips before it resizes (the 1x one after): the
    image resized is the mirrored original, the boxes mirrored at the
    original width."""
    rng = Scripted(("random", 0.2), ((0, 2), 0), ((0, 11), 10))  # flip; resize policy; short side 800
    example = pipeline.multiscale_example(record, rng)
    assert example.flipped
    mirrored, factor = pipeline.rescale_image(np.asarray(Image.open(record.path))[:, ::-1], (1333, 800))
    height, width = example.img_shape
    np.testing.assert_array_equal(example.image[:height, :width], preprocess_input(mirrored))
    boxes = np.stack([230 - record.boxes[:, 2], record.boxes[:, 1], 230 - record.boxes[:, 0], record.boxes[:, 3]], 1)
    boxes = boxes * factor
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    np.testing.assert_allclose(example.boxes, boxes, rtol=1e-6)
    masks = pipeline.resize_nearest(record.masks()[:, :, ::-1].transpose(1, 2, 0), (height, width))
    np.testing.assert_array_equal(example.masks[:, :height, :width], masks.transpose(2, 0, 1))


def test_multiscale_crop_policy_resizes_crops_and_resizes(record):
    """Policy 2: short side 400 (150x230 -> 400x613), a 384x500 crop at
    (10, 100), then short side 480. The second instance (x 533-613 after
    the first resize) keeps its part inside the crop; boxes are shifted and
    clipped to the crop, the masks cropped, and the crop resized."""
    rng = Scripted(("random", 0.9), ((0, 2), 1), ((0, 3), 0),  # no flip; crop policy; short side 400
                   ((384, 401), 384), ((384, 601), 500),  # crop height in 384..min(400, 600), width in 384..600
                   ((0, 17), 10), ((0, 114), 100),  # offsets: 400 - 384 + 1 and 613 - 500 + 1 choices
                   ((0, 11), 0))  # short side 480
    example = pipeline.multiscale_example(record, rng)
    assert not rng.draws
    first, factor = pipeline.rescale_image(np.asarray(Image.open(record.path)), (1333, 400))
    assert first.shape[:2] == (400, 613)
    crop = first[10:394, 100:600]
    second, final = pipeline.rescale_image(crop, (1333, 480))
    assert example.img_shape == second.shape[:2] == (480, 625)  # 384x500 -> 480 x int(500 * 1.25 + 0.5)
    np.testing.assert_array_equal(example.image[:480, :625], preprocess_input(second))
    np.testing.assert_array_equal(example.scale_factor, final)  # the last resize's, as mmdet leaves it
    boxes = record.boxes * factor - np.float32([100, 10, 100, 10])
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, 500)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, 384)
    boxes = boxes * final
    np.testing.assert_allclose(example.boxes, boxes, rtol=1e-6)
    np.testing.assert_array_equal(example.labels, [3, 1])
    masks = pipeline.resize_nearest(record.masks().transpose(1, 2, 0), (400, 613))[10:394, 100:600]
    masks = pipeline.resize_nearest(masks, (480, 625)).transpose(2, 0, 1)
    np.testing.assert_array_equal(example.masks[:, :480, :625], masks)


def test_a_crop_without_instances_is_kept_empty(record):
    """allow_negative_crop=True: a crop that misses every box leaves an image
    without instances (mmdet keeps it; its targets are all background), and
    an instance cut down to no area is dropped with its label and mask."""
    # short side 600 (600x920): instance 1 spans x 120-480, y 80-360; instance 2 x 800-920, y 400-600
    rng = Scripted(("random", 0.9), ((0, 2), 1), ((0, 3), 2), ((384, 601), 600), ((384, 601), 384),
                   ((0, 1), 0), ((0, 537), 480), ((0, 11), 0))  # x 480..864: instance 1 keeps no width
    kept = pipeline.multiscale_example(record, rng)
    np.testing.assert_array_equal(kept.labels, [1])
    assert kept.masks.shape[0] == 1 and kept.masks.any()
    rng = Scripted(("random", 0.9), ((0, 2), 1), ((0, 3), 2), ((384, 601), 384), ((384, 601), 384),
                   ((0, 217), 0), ((0, 537), 480), ((0, 11), 0))  # y 0..384 as well: instance 2 keeps no height
    empty = pipeline.multiscale_example(record, rng)
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,) and empty.masks.shape[0] == 0
    batch = pipeline.collate([empty, kept])
    assert batch["gt_boxes"].shape == (2, 1, 4) and batch["gt_valid"].tolist() == [[False], [True]]
    batch = pipeline.collate([empty, empty])  # still one (padded) box to assign against
    assert batch["gt_boxes"].shape == (2, 1, 4) and not batch["gt_valid"].any()


def test_multiscale_draws_cover_the_3x_configs_scales(record):
    """Drawn with a real Generator: both policies, flips, short sides among
    the 11 scales (the long side never passes 1333), crops within the range."""
    shorts, flips, crops = set(), 0, 0
    rng = np.random.default_rng(0)
    for _ in range(24):
        example = pipeline.multiscale_example(record, rng)
        height, width = example.img_shape
        shorts.add(min(height, width))
        flips += example.flipped
        crops += (height, width) != pipeline.training_example(record, scale=(1333, min(height, width))).img_shape
        assert max(height, width) <= 1333
    assert shorts <= {s for _, s in pipeline.MULTISCALE_SCALES} and len(shorts) >= 6
    assert 4 <= flips <= 20 and 3 <= crops <= 21
