"""Segmentation data: folder layouts, mmseg's ADE20K training transform as stateless
TF ops, batches that depend on (seed, epoch) only, labels and the synthetic scenes."""

import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_nextvit.segmentation import data as seg_data

SMALL = seg_data.Augmentation(img_scale=(128, 64), crop_size=(64, 64))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return seg_data.write_synthetic_scenes(root, count=6, size=(48, 64), num_classes=4)


def seed(*values):
    return tf.constant(values, tf.int64)


def batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


# --------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------


def test_folder_layouts(tmp_path):
    ade = tmp_path / "ade"
    written = seg_data.write_synthetic_scenes(ade, count=3, size=(16, 16))
    seg_data.write_synthetic_scenes(ade, count=2, size=(16, 16), seed=1, split="validation")
    pairs = seg_data.segmentation_folder(ade)  # split defaults to "training"
    assert pairs == written == seg_data.segmentation_folder(ade, split="training")
    assert [pathlib.Path(p).name for p in pairs[0]] == ["scene_00000.jpg", "scene_00000.png"]
    assert "annotations/training" in pairs[0][1].replace("\\", "/")
    assert len(seg_data.segmentation_folder(ade, split="validation")) == 2

    plain = tmp_path / "plain"
    written = seg_data.write_synthetic_scenes(plain, count=3, size=(16, 16), layout="plain")
    assert seg_data.segmentation_folder(plain) == written
    assert "/masks/" in written[0][1].replace("\\", "/")
    (plain / "masks").rename(plain / "annotations")  # the other name for the mask folder
    assert [p[0] for p in seg_data.segmentation_folder(plain)] == [p[0] for p in written]
    assert seg_data.steps_per_epoch(written, 2) == 1
    with pytest.raises(ValueError, match="fewer than one batch of 4"):
        seg_data.steps_per_epoch(written, 4)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        seg_data.segmentation_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no 'images' folder"):
        seg_data.segmentation_folder(tmp_path)
    root = tmp_path / "data"
    seg_data.write_synthetic_scenes(root, count=2, size=(16, 16))
    with pytest.raises(FileNotFoundError, match="validation"):
        seg_data.segmentation_folder(root, split="validation")
    (root / "annotations" / "training" / "scene_00001.png").unlink()
    with pytest.raises(ValueError, match=r"scene_00001\.jpg.* has no mask"):
        seg_data.segmentation_folder(root)

    plain = tmp_path / "plain"
    (plain / "images" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no 'masks' or 'annotations'"):
        seg_data.segmentation_folder(plain)
    (plain / "masks").mkdir()
    with pytest.raises(ValueError, match="no images.*split"):
        seg_data.segmentation_folder(plain)


# --------------------------------------------------------------------------
# The transform, step by step
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, ratio, expected",
    [
        ((60, 100), 1.0, (512, 853)),  # short edge binds: 512/60; 100 * 8.533 + 0.5 -> 853
        ((100, 60), 1.0, (853, 512)),
        ((60, 100), 0.5, (256, 427)),  # scale (1024, 256): 256/60 = 4.267
        ((10, 500), 1.0, (41, 2048)),  # long edge binds: 2048/500 = 4.096
    ],
)
def test_rescale_rule(shape, ratio, expected):
    image = tf.zeros(shape + (3,), tf.uint8)
    mask = tf.zeros(shape, tf.uint8)
    out_image, out_mask = seg_data.random_rescale(
        image, mask, seed(1, 2), img_scale=(2048, 512), ratio_range=(ratio, ratio)
    )
    assert tuple(out_image.shape) == expected + (3,)
    assert tuple(out_mask.shape) == expected and out_mask.dtype == tf.uint8


def test_random_rescale_range_and_nearest_mask():
    image = tf.zeros((64, 64, 3), tf.uint8)
    sides = {
        seg_data.random_rescale(image, None, seed(s, 0))[0].shape[0] for s in range(6)
    }
    assert len(sides) > 1 and all(256 <= side <= 1024 for side in sides)  # 512 * U(0.5, 2)
    # Nearest (OpenCV's rule) doubles each label exactly; no new values appear.
    mask = np.arange(24, dtype=np.uint8).reshape(4, 6)
    pixels = np.repeat(mask[..., None], 3, axis=-1)
    out_image, out_mask = seg_data.rescale(pixels, tf.constant(mask), (12, 8))
    np.testing.assert_array_equal(out_mask, mask.repeat(2, 0).repeat(2, 1))
    assert out_image.shape == (8, 12, 3)


def test_cat_max_ratio_rejects_dominated_crops():
    # 16x32 mask, crop 16x16: left half class 1, right half classes 2 (top) and 3 (bottom).
    # A crop at column offset w holds (16 - w) / 16 of class 1: accepted only for w >= 5.
    mask = np.ones((16, 32), np.uint8)
    mask[:8, 16:] = 2
    mask[8:, 16:] = 3
    image = np.zeros((16, 32, 3), np.uint8)

    def offsets(cat_max_ratio):
        found = []
        for s in range(20):
            _, crop = seg_data.random_crop(
                image, mask, seed(s, 3), crop_size=(16, 16), cat_max_ratio=cat_max_ratio
            )
            crop = crop.numpy()
            assert crop.shape == (16, 16)
            found.append(16 - int(np.sum(crop == 1)) // 16)
        return found

    assert min(offsets(0.75)) >= 5
    assert min(offsets(1.0)) < 5  # without the check, dominated crops occur

    # Pixels equal to ignore_index don't count: class 1 + ignore is a single class.
    ignored = np.full((16, 32), 255, np.uint8)
    ignored[:, :4] = 1
    _, crop = seg_data.random_crop(image, ignored, seed(0, 0), crop_size=(16, 16))
    assert crop.shape == (16, 16)

    # An image smaller than the crop is kept whole.
    out_image, out_mask = seg_data.random_crop(image, mask, seed(0, 1), crop_size=(64, 20))
    assert out_image.shape == (16, 20, 3) and out_mask.shape == (16, 20)


def test_flip_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (8, 12)).astype(np.uint8)
    image = np.stack([mask * 40, mask * 10, mask], axis=-1).astype(np.uint8)
    flipped = 0
    for s in range(12):
        out_image, out_mask = seg_data.random_flip(image, mask, seed(s, 5))
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        np.testing.assert_array_equal(out_image[..., 0], out_mask * 40)  # still paired
        if not np.array_equal(out_mask, mask):
            np.testing.assert_array_equal(out_mask, mask[:, ::-1])
            flipped += 1
    assert 0 < flipped < 12
    out_image, _ = seg_data.random_flip(image, mask, seed(0, 0), prob=0.0)
    np.testing.assert_array_equal(out_image, image)


def test_photometric_distortion_stays_in_range():
    image = np.random.default_rng(1).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    changed = 0
    for s in range(8):
        out = seg_data.photometric_distortion(image, seed(s, 7)).numpy()
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
        np.testing.assert_array_equal(out, np.round(out))  # uint8 values, as mmseg
        changed += not np.array_equal(out, image)
    assert changed >= 6  # each of four steps applies with probability 1/2


def test_photometric_distortion_leaves_the_mask_alone(scenes):
    image, mask = seg_data._load_pair(*scenes[0], False, 255)
    with_photo = seg_data.training_transform(image, mask, seed(3, 4), SMALL)
    without = seg_data.training_transform(
        image, mask, seed(3, 4), dataclasses.replace(SMALL, photometric=False)
    )
    np.testing.assert_array_equal(with_photo[1], without[1])
    assert not np.array_equal(with_photo[0], without[0])


def test_padding_uses_zero_and_ignore_index():
    image = tf.fill((20, 30, 3), tf.constant(200, tf.uint8))
    mask = tf.ones((20, 30), tf.uint8)
    # scale (32, 16): factor min(32/30, 16/20) = 0.8 -> 16x24, padded to 64x64.
    aug = seg_data.Augmentation(
        img_scale=(32, 16), ratio_range=None, crop_size=(64, 64), photometric=False
    )
    out_image, out_mask = seg_data.training_transform(image, mask, seed(0, 0), aug)
    out_image, out_mask = out_image.numpy(), out_mask.numpy()
    assert out_image.shape == (64, 64, 3) and out_mask.dtype == np.int32
    assert np.all(out_mask[:16, :24] == 1)
    assert np.all(out_mask[16:] == 255) and np.all(out_mask[:, 24:] == 255)
    assert np.all(out_image[16:] == 0) and np.all(out_image[:, 24:] == 0)
    assert np.all(out_image[:16, :24] > 1)  # normalised 200


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------


def test_default_recipe_batches(scenes):
    ds = seg_data.training_dataset(scenes, batch_size=2, epoch=0)
    images, masks = next(iter(ds))
    assert images.shape == (2, 512, 512, 3) and images.dtype == tf.float32
    assert masks.shape == (2, 512, 512) and masks.dtype == tf.int32
    assert set(np.unique(masks)) <= {0, 1, 2, 3, 255}


@pytest.mark.slow
def test_batches_depend_on_seed_and_epoch_only(scenes):
    kwargs = dict(batch_size=2, aug=SMALL)
    first = batches(seg_data.training_dataset(scenes, epoch=1, seed=5, **kwargs))
    again = batches(seg_data.training_dataset(scenes, epoch=1, seed=5, **kwargs))
    assert len(first) == 3
    assert first[0][0].shape == (2, 64, 64, 3) and first[0][1].shape == (2, 64, 64)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    other_epoch = batches(seg_data.training_dataset(scenes, epoch=2, seed=5, **kwargs))
    other_seed = batches(seg_data.training_dataset(scenes, epoch=1, seed=6, **kwargs))
    assert not np.array_equal(first[0][0], other_epoch[0][0])
    assert not np.array_equal(first[0][0], other_seed[0][0])
    # Chained epochs give each epoch exactly what a run resumed there gets.
    chained = batches(
        seg_data.training_dataset(scenes, epoch=0, seed=5, num_epochs=2, **kwargs)
    )
    assert len(chained) == 6
    for (x1, y1), (x2, y2) in zip(chained[3:], first):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_unshuffled_no_augmentation_is_the_rescaled_data(scenes):
    aug = seg_data.Augmentation.none(img_scale=(64, 48), crop_size=(48, 64))
    ds = seg_data.training_dataset(scenes[:2], batch_size=2, epoch=3, aug=aug, shuffle=False)
    (images, masks), = batches(ds)
    expected = [mask for _, mask in seg_data.iterate_pairs(scenes[:2])]
    np.testing.assert_array_equal(masks, np.stack(expected))  # 48x64 at scale (64, 48)
    assert images.shape == (2, 48, 64, 3)


def test_reduce_zero_label(tmp_path):
    values = np.array([[0, 1, 2, 150, 254, 255]], np.uint8)
    np.testing.assert_array_equal(
        seg_data.apply_reduce_zero_label(values), [[255, 0, 1, 149, 253, 255]]
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((1, 6, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(values, "L").save(tmp_path / "masks" / "a.png")
    pairs = seg_data.segmentation_folder(tmp_path)
    (_, mask), = seg_data.iterate_pairs(pairs, reduce_zero_label=True)
    np.testing.assert_array_equal(mask, [[255, 0, 1, 149, 253, 255]])
    (_, mask), = [(x.numpy(), y.numpy()) for x, y in seg_data.evaluation_dataset(pairs, None, True)]
    np.testing.assert_array_equal(mask, [[255, 0, 1, 149, 253, 255]])
    assert mask.dtype == np.int32


def test_num_classes_check(scenes, tmp_path):
    with_three = next(m for _, m in scenes if 3 in np.asarray(Image.open(m)))
    with pytest.raises(ValueError, match=r"scene_\d+\.png.*values \[3\].*num_classes=3") as error:
        seg_data.training_dataset(scenes, batch_size=2, epoch=0, aug=SMALL, num_classes=3)
    assert with_three in str(error.value)  # the first mask holding a 3
    seg_data.check_masks(scenes, num_classes=4)
    seg_data.check_masks(scenes, num_classes=3, reduce_zero_label=True)  # 1..3 -> 0..2, 0 -> 255
    palette = tmp_path / "p.png"
    image = Image.fromarray(np.zeros((4, 4), np.uint8), "L").convert("P")
    image.save(palette)
    with pytest.raises(ValueError, match="mode 'P'"):
        seg_data.check_masks([("x.jpg", str(palette))], num_classes=4)


def test_evaluation_dataset_matches_the_files(tmp_path):
    pairs = seg_data.write_synthetic_scenes(tmp_path, count=2, size=(30, 40), layout="plain")
    read = list(seg_data.iterate_pairs(pairs))
    raw = [(x.numpy(), y.numpy()) for x, y in seg_data.evaluation_dataset(pairs)]
    scaled = [x.numpy() for x, _ in seg_data.evaluation_dataset(pairs, img_scale=(2048, 512))]
    for (image, mask), (tf_image, tf_mask), big in zip(read, raw, scaled):
        np.testing.assert_array_equal(tf_image, image)  # PNG: lossless
        np.testing.assert_array_equal(tf_mask, mask)
        assert big.shape == (512, 683, 3) and big.dtype == np.uint8  # 40 * 512/30 + 0.5


# --------------------------------------------------------------------------
# Synthetic scenes
# --------------------------------------------------------------------------


def test_synthetic_scenes_are_deterministic(tmp_path):
    kwargs = dict(count=4, size=(24, 32), num_classes=5)
    a = seg_data.write_synthetic_scenes(tmp_path / "a", **kwargs)
    b = seg_data.write_synthetic_scenes(tmp_path / "b", **kwargs)
    c = seg_data.write_synthetic_scenes(tmp_path / "c", seed=1, **kwargs)
    for pa, pb, pc in zip(a, b, c):
        for fa, fb in zip(pa, pb):
            assert pathlib.Path(fa).read_bytes() == pathlib.Path(fb).read_bytes()
    assert pathlib.Path(a[0][1]).read_bytes() != pathlib.Path(c[0][1]).read_bytes()
    with pytest.raises(ValueError, match="num_classes must be 2..7"):
        seg_data.write_synthetic_scenes(tmp_path / "d", num_classes=8)


def test_synthetic_scenes_class_range(scenes, tmp_path):
    found = set()
    for image, mask in seg_data.iterate_pairs(scenes):
        assert image.shape == (48, 64, 3) and mask.shape == (48, 64)
        assert mask.min() >= 0 and mask.max() < 4
        assert np.mean(mask == 0) < 1.0  # every scene has an object
        found |= set(np.unique(mask).tolist())
    assert found == {0, 1, 2, 3}
    # Every class looks different: the mean colour of each class is far from the others'.
    pairs = seg_data.write_synthetic_scenes(tmp_path, count=8, size=(48, 48), num_classes=4)
    colours = {k: [] for k in range(4)}
    for image, mask in seg_data.iterate_pairs(pairs):
        for k in np.unique(mask):
            colours[int(k)].append(image[mask == k].mean(axis=0))
    means = np.array([np.mean(colours[k], axis=0) for k in range(4)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(4, dtype=bool)].min() > 40
