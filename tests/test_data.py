"""The image-folder pipelines: layout checks, the evaluation transform, and
training batches that depend on (seed, epoch) only."""

import numpy as np
import pytest
import tensorflow as tf

import keras_nextvit
from keras_nextvit import data as data_lib


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    data_lib.write_synthetic_image_folder(root, classes=3, images_per_class=5)
    return data_lib.image_folder(root)


def test_image_folder_layout(folder, tmp_path):
    assert folder.class_names == ("class_00", "class_01", "class_02")
    assert len(folder) == 15 and folder.labels.count(2) == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data_lib.image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class sub-folders"):
        data_lib.image_folder(tmp_path / "flat")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        data_lib.image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="classes the training folder does not"):
        data_lib.image_folder(folder.root, class_names=("class_00",))
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        data_lib.steps_per_epoch(folder, 64)


def test_evaluation_transform_matches_the_presets():
    """tf.data's resize + center crop is the PIL transform of load_image."""
    image = keras_nextvit.load_image(size=300, crop_pct=1.0)  # any photo, 300x300
    photo = np.asarray(image)[:, 20:260]  # not square
    ours = data_lib.center_crop_resize(tf.constant(photo), 96, crop_pct=0.875).numpy()
    reference = keras_nextvit.load_image(photo, size=96, crop_pct=0.875).astype("float32")
    assert ours.shape == reference.shape == (96, 96, 3)
    assert np.mean(np.abs(ours - reference)) < 2.0  # grey levels; PIL and TF resample alike
    np.testing.assert_allclose(
        data_lib.normalize(tf.constant(reference)).numpy(),
        keras_nextvit.preprocess_input(reference),
        atol=1e-5,
    )


def batches(dataset, count):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


@pytest.mark.slow
def test_training_batches_depend_on_seed_and_epoch_only(folder):
    kwargs = dict(batch_size=4, image_size=32, epochs=3)
    from_start = batches(data_lib.training_dataset(folder, seed=7, **kwargs), 9)
    assert len(from_start) == 9  # 3 epochs x 3 full batches of 4 (15 images)
    resumed = batches(data_lib.training_dataset(folder, seed=7, start_epoch=2, **kwargs), 3)
    for (x1, y1), (x2, y2) in zip(from_start[6:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    other_seed = batches(data_lib.training_dataset(folder, seed=8, **kwargs), 1)
    assert not np.array_equal(other_seed[0][0], from_start[0][0])
    assert not np.array_equal(from_start[0][0], from_start[3][0])  # epochs differ
    x, y = from_start[0]
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (4, 3)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    assert y.min() > 0  # label smoothing (and mixing) leave no exact zero


def test_training_batches_without_augmentation_are_one_hot(folder):
    ds = data_lib.training_dataset(
        folder, batch_size=5, image_size=32, augmentation=data_lib.Augmentation.none()
    )
    labels = np.concatenate([y for _, y in batches(ds, 3)])
    assert set(np.unique(labels)) == {0.0, 1.0}
    assert sorted(labels.argmax(1).tolist()) == sorted(folder.labels)  # each image once


def test_evaluation_dataset_is_in_order(folder):
    ds = data_lib.evaluation_dataset(folder, batch_size=4, image_size=32, crop_pct=1.0)
    labels = np.concatenate([y for _, y in batches(ds, 10)])
    assert labels.shape == (15, 3)
    assert labels.argmax(1).tolist() == list(folder.labels)
