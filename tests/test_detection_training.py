"""Mask R-CNN's training losses of a batch end to end
(keras_nextvit.detection.training): every weight gets a gradient, and a
tiny detector's total loss falls on generated shapes."""

import math
import os

import keras
import numpy as np
import pytest
from conftest import assert_close
from PIL import Image
from pycocotools import mask as mask_utils

import keras_nextvit
from keras_nextvit.detection import dataset, pipeline, training
from keras_nextvit.trainer import StepDecay

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
    # at their own 64x96 (scale (112, 64)): a small step, for the suite's time
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


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a GradientTape step")
def test_a_batch_without_instances_is_all_background(tmp_path):
    """Crops that missed every box (the 3x recipe allows them): the RPN and
    box head learn background only, the box and mask losses are zero, and
    every gradient is finite."""
    import tensorflow as tf

    record = shapes_dataset(tmp_path, count=1)[0]
    empty = dataset.Instances(record.path, 1, 64, 96, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), [],
                              np.zeros((0, 4), np.float32))
    batch = pipeline.collate([pipeline.training_example(empty, scale=(112, 64))] * 2)
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3)
    with tf.GradientTape() as tape:
        out = training.detector_losses(detector, batch, keras.random.SeedGenerator(0))
    assert float(out["loss_rpn_cls"]) > 0 and float(out["loss_cls"]) > 0
    assert float(out["loss_rpn_bbox"]) == float(out["loss_bbox"]) == float(out["loss_mask"]) == 0.0
    grads = tape.gradient(out["loss"], detector.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)


@pytest.mark.slow
def test_the_box_head_trains_on_the_recipes_number_of_rois(tmp_path, monkeypatch):
    """``rcnn_sample_num`` (mmdet's ``train_cfg.rcnn.sampler.num``, 512
    upstream) bounds the RoIs each image gives the box head; the recipe
    carries it to the trainer."""
    assert training.RECIPES["1x"].rcnn_sample_num == 512 == training.assigner.RCNN_SAMPLER["num"]
    batch = pipeline.collate([pipeline.training_example(r, scale=(112, 64)) for r in shapes_dataset(tmp_path)])
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3, channels=16, fc_channels=32)
    counts = []
    pooled = training.multilevel_roi_align

    def counting(features, rois, size, *args, **kwargs):
        counts.append((int(size), int(np.shape(rois)[0])))
        return pooled(features, rois, size, *args, **kwargs)

    whole_map = training.multilevel_roi_align_whole_map

    def counting_per_image(features, boxes, size, *args, **kwargs):  # the traced graph's: (images, rows, 4)
        counts.append((int(size), int(boxes.shape[0]) * int(boxes.shape[1])))
        return whole_map(features, boxes, size, *args, **kwargs)

    monkeypatch.setattr(training, "multilevel_roi_align", counting)
    monkeypatch.setattr(training, "multilevel_roi_align_whole_map", counting_per_image)
    for traced in (False, True):  # the eager RoI steps and the traced graph (rows beyond the sample weigh 0)
        sampled = {}
        for num in (None, 16):
            counts.clear()
            training.detector_losses(detector, batch, keras.random.SeedGenerator(0), rcnn_sample_num=num,
                                     traced=traced)
            sampled[num] = [n for size, n in counts if size == 7]  # the box head's 7x7 RoIAlign
        assert sampled[16] == [2 * 16]  # two images
        assert len(sampled[None]) == 1 and sampled[None][0] > 2 * 16
    with pytest.raises(ValueError, match="rcnn_sample_num must be at least 1"):
        training.detector_losses(detector, batch, rcnn_sample_num=0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a GradientTape step")
def test_roi_align_gradient_without_the_crops_equals_autodiff(monkeypatch):
    """RoIAlign's hand-written gradient (the transpose of its pooling, chunk
    by chunk, which keeps no crop for the backward pass) equals TensorFlow's
    own gradient of the same pooling: RoIs inside, across the border and
    outside the map, elongated, empty; several chunks."""
    import importlib

    import tensorflow as tf

    roi_align_lib = importlib.import_module("keras_nextvit.detection.roi_align")  # the module, not the function

    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(2, 20, 24, 8)).astype("float32"))
    rois = np.array([[0, 4, 4, 30, 28], [1, -6, 10, 20, 50], [0, 0, 0, 47, 39], [1, 10, 2, 44, 8],
                     [0, 12, 12, 12, 12], [1, 30, 30, 60, 70], [0, 1.5, 2.25, 9.75, 33.5]], "float32")
    upstream = tf.constant(rng.normal(size=(len(rois), 7, 7, 8)).astype("float32"))

    def gradient():
        with tf.GradientTape() as tape:
            tape.watch(features)
            pooled = roi_align_lib.roi_align(features, rois, 7, 0.5)
            total = tf.reduce_sum(pooled * upstream)
        return pooled.numpy(), tape.gradient(total, features).numpy()

    monkeypatch.setattr(roi_align_lib, "_CHUNK_VALUES", 3 * 8 * 50)  # a few RoIs per chunk
    pooled, ours = gradient()
    assert np.abs(ours).max() > 0
    monkeypatch.setattr(roi_align_lib, "_windows_pooled", roi_align_lib._pool_windows)
    pooled_autodiff, autodiff = gradient()
    np.testing.assert_array_equal(pooled, pooled_autodiff)
    np.testing.assert_allclose(ours, autodiff, rtol=1e-5, atol=1e-6)
    # pooled in groups of similar windows (as a training batch with a few long
    # thin proposals is): the same RoI features and gradient, in RoI order
    monkeypatch.undo()
    monkeypatch.setattr(roi_align_lib, "_GROUP_VALUES", 0)
    assert len(roi_align_lib._window_groups(np.array([3, 3, 20]), np.array([3, 40, 3]), 8)) == 3
    pooled_grouped, grouped = gradient()
    np.testing.assert_allclose(pooled_grouped, pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grouped, ours, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a GradientTape step")
def test_traced_dense_part_equals_the_eager_call():
    """The training step's backbone, FPN and RPN head as one traced graph
    give the eager call's outputs and gradients; drop path draws anew at
    every call of the graph; the graph does not keep its detector alive."""
    import gc
    import weakref

    import tensorflow as tf

    images = tf.constant(np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype("float32"))

    def run(call, variables):
        with tf.GradientTape() as tape:
            out = tf.nest.flatten(call(images))
            total = sum(tf.reduce_sum(t * (i + 1)) for i, t in enumerate(out))
        return [t.numpy() for t in out], tape.gradient(total, variables)

    def check(detector):
        variables = detector.trainable_variables
        traced, traced_grads = run(lambda x: training.dense_outputs(detector, x, training=True), variables)
        eager, eager_grads = run(lambda x: detector(x, training=True), variables)
        for a, b in zip(traced, eager):  # errors relative to each tensor's largest value
            assert_close(a, b, rel=1e-5)
        # the same variables get gradients (all but the RoI heads'), and the same gradients
        assert [v.path for v, g in zip(variables, traced_grads) if g is None] == [
            v.path for v, g in zip(variables, eager_grads) if g is None]
        assert sum(g is not None for g in traced_grads) > 100
        # a gradient's error relative to its largest value, plus rounding of
        # the model's largest gradient (E-MHSA's key biases have a true
        # gradient of zero: a softmax ignores what all its logits share)
        floor = 1e-7 * max(float(np.abs(b).max()) for b in eager_grads if b is not None)
        for v, a, b in zip(variables, traced_grads, eager_grads):
            if b is not None:
                error = float(np.abs(np.asarray(a) - np.asarray(b)).max())
                assert error <= 1e-4 * float(np.abs(b).max()) + floor, (v.path, error)
        return weakref.ref(detector)

    keras.utils.set_random_seed(0)
    alive = check(keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3, drop_path_rate=0.0))
    gc.collect()
    assert alive() is None

    dropping = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3, drop_path_rate=0.5)
    first, second = (training.dense_outputs(dropping, images, training=True)["fpn"][0] for _ in range(2))
    assert not np.allclose(first.numpy(), second.numpy())


def test_recipes_are_the_upstream_configs():
    """mask_rcnn_nextvit_*_{1x,3x}.py: AdamW 1e-4, weight decay 0.05 except
    on the norms, mmcv's step policy with linear warm-up from 1e-6 of the
    rate over 500 iterations, decays at epochs 8 and 11 (27 and 33 of 36)."""
    from test_trainer import mmcv_step_lr

    one, three = training.RECIPES["1x"], training.RECIPES["3x"]
    assert (one.epochs, one.milestones, three.epochs, three.milestones) == (12, (8, 11), 36, (27, 33))
    assert (one.optimizer.learning_rate, one.optimizer.weight_decay, one.batch_size) == (1e-4, 0.05, 16)
    assert (one.optimizer.betas, one.optimizer.clip_norm, one.optimizer.no_decay) == ((0.9, 0.999), None, "norms")
    assert (one.warmup_iterations, one.warmup_ratio, one.gamma) == (500, 1e-6, 0.1)
    assert (one.frozen_stages, one.norm_eval, one.multiscale, three.multiscale) == (1, True, False, True)
    assert three.multiscale_scales == tuple((1333, short) for short in range(480, 801, 32))
    assert (three.crop_resize_scales, three.crop_size_range) == (((1333, 400), (1333, 500), (1333, 600)), (384, 600))
    with pytest.raises(ValueError, match="Unknown detection recipe '2x'"):
        training.get_recipe("2x")
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3)
    optimizer = training.build_optimizer("1x", detector, iterations_per_epoch=100)
    steps = [0, 1, 250, 499, 500, 799, 800, 1099, 1100, 1199]
    schedule = optimizer._learning_rate  # Keras keeps the schedule object there
    assert isinstance(schedule, StepDecay)
    got = [float(schedule(s)) for s in steps]
    want = [mmcv_step_lr(s, 1e-4, [800, 1100], 0.1, 500, 1e-6) for s in steps]
    np.testing.assert_allclose(got, want, rtol=2e-6)
    optimizer.build(detector.trainable_variables)
    spared = {v.path for v in detector.trainable_variables if not optimizer._use_weight_decay(v)}
    norms = {v.path for v in detector.trainable_variables if v.path.endswith(("/gamma", "/beta"))}
    assert spared == norms and norms


def test_upstream_drop_path_per_variant(monkeypatch):
    from keras_nextvit.detection import model as model_lib

    built = {}
    monkeypatch.setattr(model_lib, "MaskRCNN", lambda *a, **k: built.setdefault(a[0], k["drop_path_rate"]))
    for variant in ("small", "base", "large", (1, 1, 5, 1)):
        model_lib.NextViTMaskRCNN(variant)
    # upstream's nextvit_small / _base / _large path_dropout; custom depths as base
    assert built == {(3, 4, 10, 3): 0.1, (3, 4, 20, 3): 0.2, (3, 4, 30, 3): 0.2, (1, 1, 5, 1): 0.2}


def test_frozen_stages_and_norm_eval():
    """frozen_stages=1: the stem and stage 1 do not train; norm_eval: the
    backbone's BatchNorms normalise with their moving statistics and keep
    them in training, while the scales of the other stages still train."""
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3, drop_path_rate=0.0)
    rng = np.random.default_rng(0)
    for layer in detector.backbone._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape))
    x = rng.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    inference = [np.asarray(f) for f in detector.backbone(x, training=False)]
    first_bn = detector.backbone.get_layer("stages_2_blocks_0").norm
    before = np.asarray(first_bn.moving_mean).copy()

    training.freeze_for_training(detector, frozen_stages=1, norm_eval=True)
    paths = [v.path for v in detector.trainable_variables]
    assert not [p for p in paths if p.startswith(("stem_", "stages_0_"))]
    assert first_bn.gamma.path in paths and any(p.startswith("stages_1_") for p in paths)
    trained = [np.asarray(f) for f in detector.backbone(x, training=True)]
    for a, b in zip(trained, inference):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(first_bn.moving_mean), before)

    training.release_for_inference(detector)
    assert len(detector.trainable_variables) > len(paths)
    detector.backbone(x, training=True)  # a plain BatchNorm again: batch statistics, updated
    assert not np.array_equal(np.asarray(first_bn.moving_mean), before)
    assert type(first_bn) is keras.layers.BatchNormalization


def write_coco(root, records, class_names=("red", "green", "blue")):
    """``records`` (their images already in ``root/train2017``) as COCO's
    ``annotations/instances_train2017.json``."""
    import json

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for record in records:
        images.append(dict(id=record.image_id + 1, file_name=os.path.basename(record.path),
                           height=record.height, width=record.width))
        for box, label, segmentation in zip(record.boxes, record.labels, record.segmentations):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(dict(id=len(annotations) + 1, image_id=record.image_id + 1,
                                    category_id=int(label) + 1, bbox=[x1, y1, x2 - x1, y2 - y1],
                                    area=(x2 - x1) * (y2 - y1), iscrowd=0, segmentation=segmentation))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(class_names)]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps(dict(images=images, annotations=annotations, categories=categories)))


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a GradientTape step")
def test_training_on_the_core_resumes_exactly(tmp_path, capsys):
    """detection.trainer.train on a COCO-layout folder: the core's run with
    mmdet's losses. Interrupted by a real KeyboardInterrupt in its second
    epoch and run again, it continues from the first epoch's checkpoint
    with the same losses and ends with the same weights as a run that was
    not interrupted; the saved detector loads and computes what training
    returned."""
    from keras_nextvit.detection import trainer as detection_trainer

    (tmp_path / "data" / "train2017").mkdir(parents=True)
    write_coco(tmp_path / "data", shapes_dataset(tmp_path / "data" / "train2017"))
    recipe = training.RECIPES["1x"].replace(batch_size=2, warmup_iterations=0)
    # scored after every epoch (on its own training images here: the plumbing, not the numbers)
    options = dict(variant=(1, 1, 5, 1), recipe=recipe, epochs=2, scale=(112, 64), tensorboard=False,
                   verbose=0, val_dir=str(tmp_path / "data"), val_split="train2017")
    full = detection_trainer.train(str(tmp_path / "data"), output_dir=str(tmp_path / "full"), **options)
    assert "Average Precision" not in capsys.readouterr().out  # the scores go to the logs, not COCOeval's tables
    assert full.model.num_classes == 3 and len(full.history["step_loss"]) == 2
    names = ("val_bbox_mAP", "val_bbox_mAP_50", "val_segm_mAP", "val_segm_mAP_50")
    assert all(len(full.history[n]) == 2 and all(0 <= v <= 1 for v in full.history[n]) for n in names)
    assert full.metrics == {n[4:]: full.history[n][-1] for n in names}
    header = (tmp_path / "full" / "log.csv").read_text().splitlines()[0].split(",")
    assert set(names) <= set(header)

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 1:  # epoch 1 done and checkpointed
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        detection_trainer.train(str(tmp_path / "data"), output_dir=str(tmp_path / "cut"),
                                callbacks=[Interrupt()], **options)
    resumed = detection_trainer.train(str(tmp_path / "data"), output_dir=str(tmp_path / "cut"), **options)
    assert resumed.initial_epoch == 1
    np.testing.assert_allclose(resumed.history["step_loss"], full.history["step_loss"][1:], rtol=1e-5)
    np.testing.assert_allclose(resumed.history["val_segm_mAP"], full.history["val_segm_mAP"][1:], atol=1e-6)
    for a, b in zip(resumed.model.get_weights(), full.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert (tmp_path / "cut" / "classes.txt").read_text().split() == ["red", "green", "blue"]
    (tmp_path / "other" / "train2017").mkdir(parents=True)
    write_coco(tmp_path / "other", shapes_dataset(tmp_path / "other" / "train2017"), ("red", "blue", "green"))
    with pytest.raises(ValueError, match=r"categories \['red', 'blue', 'green'\] are not the training data's"):
        detection_trainer.train(str(tmp_path / "data"), output_dir=str(tmp_path / "bad"),
                                **dict(options, val_dir=str(tmp_path / "other")))
    loaded = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3,
                                           weights=str(tmp_path / "cut" / "detector.weights.h5"))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 96, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)["rpn_cls"][0]), np.asarray(resumed.model(x)["rpn_cls"][0]),
                               rtol=1e-5, atol=1e-6)


def test_a_published_detector_on_other_classes():
    """Fine-tuning a checkpoint of 5 classes on 3: every weight but the
    class layers (fc_cls, fc_reg, conv_logits) comes from the checkpoint."""
    from keras_nextvit import synthetic, weights
    from keras_nextvit.detection import trainer as detection_trainer

    donor = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=5)
    checkpoint = synthetic.synthetic_state_dict(weights.torch_state_dict_spec(donor))
    assert detection_trainer.checkpoint_classes(checkpoint) == 5
    weights.load_torch_weights(donor, checkpoint)
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3)
    before = {v.path: np.asarray(v).copy() for v in detector.weights}
    detection_trainer.start_from_checkpoint(detector, checkpoint, (1, 1, 5, 1))
    class_layers = ("fc_cls", "fc_reg", "conv_logits")
    for mine, theirs in zip(detector.weights, donor.weights):
        if any(f"/{name}/" in mine.path for name in class_layers):
            np.testing.assert_array_equal(np.asarray(mine), before[mine.path])  # fresh
            assert mine.shape != theirs.shape or "bias" in mine.path
        else:
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert sum(any(f"/{n}/" in v.path for n in class_layers) for v in detector.weights) == 6
    with pytest.raises(weights.CheckpointError, match="not a Mask R-CNN checkpoint"):
        detection_trainer.checkpoint_classes({"backbone.stem.0.conv.weight": np.zeros((64, 3, 3, 3))})


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a GradientTape step")
def test_the_3x_recipe_trains_on_multiscale_draws(tmp_path):
    """recipe="3x": each image's flip, scales and crop are drawn from (seed,
    epoch, image), so the same batch is the same arrays again (a resumed run
    draws what the whole one drew) and another epoch draws anew; a step
    trains on them. A fixed scale is refused."""
    from keras_nextvit.detection import trainer as detection_trainer

    (tmp_path / "data" / "train2017").mkdir(parents=True)
    write_coco(tmp_path / "data", shapes_dataset(tmp_path / "data" / "train2017"))
    # the 3x pipeline at this test's sizes: short sides 96 or 128, or 64 or
    # 80 cropped to 48..64 pixels a side (the configs': 480..800, 400..600, 384..600)
    recipe = training.RECIPES["3x"].replace(
        batch_size=2, warmup_iterations=0, multiscale_scales=((160, 96), (160, 128)),
        crop_resize_scales=((160, 64), (160, 80)), crop_size_range=(48, 64),
    )
    with pytest.raises(ValueError, match=r"scale=\(112, 64\) sets the single scale.*short side 96 to 128"):
        detection_trainer.train(str(tmp_path / "data"), output_dir=str(tmp_path / "run"), recipe=recipe,
                                scale=(112, 64))
    task = detection_trainer.DetectionTask(recipe, str(tmp_path / "data"), "train2017", (1, 1, 5, 1), None,
                                           None, None, seed=0)
    task.prepare()
    first, again, later = task.batch_of(0, 0), task.batch_of(0, 0), task.batch_of(1, 0)
    for key in ("images", "gt_boxes", "gt_labels", "img_shapes"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["img_shapes"], later["img_shapes"])
    shorts = {96, 128}
    assert all(min(shape) in shorts for shape in np.concatenate([first["img_shapes"], later["img_shapes"]]))
    # the training step's losses and gradients on such a batch (the loop around it is the 1x one's)
    import tensorflow as tf

    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3)
    with tf.GradientTape() as tape:
        out = training.detector_losses(detector, first, keras.random.SeedGenerator(0), training=True)
    assert math.isfinite(float(out["loss"])) and float(out["loss_mask"]) > 0
    grads = tape.gradient(out["loss"], detector.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)


def _module(name):
    import importlib

    return importlib.import_module(f"keras_nextvit.detection.{name}")  # the module, not a same-named function


def test_whole_map_roi_align_equals_the_windowed_one():
    """The traced step's RoIAlign (fixed boxes per image, whole-map
    products) pools what the windowed one does: every level, a box over
    the whole image, an empty one, thin ones, boxes on the edges."""
    roi_align_lib = _module("roi_align")
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(2, 480 // s, 512 // s, 4)).astype("float32") for s in (4, 8, 16, 32)]
    x1, y1 = rng.uniform(0, 500, (2, 14)), rng.uniform(0, 470, (2, 14))
    boxes = np.stack([x1, y1, np.minimum(x1 + rng.uniform(0, 500, (2, 14)), 512),
                      np.minimum(y1 + rng.uniform(0, 480, (2, 14)), 480)], -1).astype("float32")
    boxes[0, :4] = [[0, 0, 512, 480], [30, 30, 30, 30], [0, 100, 512, 104], [508, 0, 512, 480]]
    boxes[1, :2] = [[0, 0, 200, 200], [300, 250, 512, 480]]
    rois = np.concatenate([np.repeat([0.0, 1.0], 14)[:, None], boxes.reshape(-1, 4)], 1).astype("float32")
    levels = keras.ops.convert_to_numpy(roi_align_lib.map_roi_levels(rois))
    assert set(levels) == {0, 1, 2, 3}
    for size in (7, 14):
        whole = roi_align_lib.multilevel_roi_align_whole_map(features, boxes, size)
        windowed = roi_align_lib.multilevel_roi_align(features, rois, size)
        assert_close(np.reshape(whole, (28, size, size, 4)), windowed, rel=1e-6)


def test_static_mask_targets_and_proposals_equal_the_eager_ones():
    """The traced step's mask targets and RPN proposals (static shapes)
    equal :func:`targets.mask_targets` and :func:`rpn_proposals`: the same
    proposals in the same order, then padding, boxes too small for
    ``min_bbox_size`` left out."""
    import tensorflow as tf

    targets_lib, rpn_head = _module("targets"), _module("rpn_head")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:40, 0:56]
    masks = np.stack([(xx - cx) ** 2 / 90 + (yy - cy) ** 2 / 40 < 1 for cx, cy in ((10, 12), (30, 25), (45, 8))])
    boxes = np.array([[2, 5, 20, 20], [18, 15, 44, 36], [35, -3, 60, 14], [0, 0, 56, 40], [20, 20, 21, 20.5]],
                     np.float32)
    index = np.array([0, 1, 2, 1, 0])
    eager = targets_lib.mask_targets(masks, boxes, index)
    static = keras.ops.convert_to_numpy(targets_lib.mask_targets_whole_map(masks.astype("float32"), boxes, index))
    assert eager.sum() > 500 and np.array_equal(static, eager)

    level_shapes = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    anchors = keras_nextvit.detection.level_anchors(level_shapes)
    cls_maps = [rng.normal(size=(h, w, 3)).astype("float32") for h, w in level_shapes]
    reg_maps = [rng.normal(0, 0.5, size=(h, w, 12)).astype("float32") for h, w in level_shapes]
    counts = []
    for changes in ({}, {"max_per_img": 3000}, {"min_bbox_size": 6, "nms_pre": 500, "max_per_img": 2000}):
        cfg = dict(training.RPN_TRAIN_PROPOSALS, **changes)
        found = keras.ops.convert_to_numpy(rpn_head.rpn_proposals(cls_maps, reg_maps, anchors, (90, 120), cfg))
        padded, valid = tf.function(rpn_head.rpn_proposals_static)(cls_maps, reg_maps, anchors,
                                                                   tf.constant([90.0, 120.0]), cfg)
        counts.append((len(found), cfg["max_per_img"]))
        assert padded.shape == (cfg["max_per_img"], 4)
        assert np.array_equal(valid.numpy(), np.arange(cfg["max_per_img"]) < len(found))
        np.testing.assert_array_equal(padded.numpy()[: len(found)], found[:, :4])
    # cut at max_per_img, then padded (fewer boxes left after NMS), then fewer still (small ones dropped)
    assert counts[0] == (1000, 1000) and 1000 < counts[1][0] < 3000 and 100 < counts[2][0] < counts[1][0]


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a GradientTape step")
def test_traced_losses_equal_the_eager_ones(tmp_path):
    """On small images the targets and RoI losses run as one traced graph
    (``traced="auto"``): with more RoIs asked than there are candidates
    (no random choice among them), its losses and gradients are the eager
    path's. ``auto`` keeps the eager path on 800x1216 images and for the
    published 256-channel heads."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    batch = pipeline.collate([pipeline.training_example(r, scale=(112, 64)) for r in shapes_dataset(tmp_path)])
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3, channels=16, fc_channels=32)
    dense = detector(batch["images"])
    sampler = dict(training.assigner.RCNN_SAMPLER, num=1100)
    assert training._traced_fits(dense["fpn"], batch, sampler)
    maps = lambda height, width, channels: [  # noqa: E731 (stand-ins: only their shapes are read)
        type("Map", (), {"shape": (2, height // 2**k, width // 2**k, channels)})() for k in range(5)]
    large = dict(batch, images=np.zeros((2, 800, 1216, 3), "float32"))
    assert not training._traced_fits(maps(200, 304, 16), large, sampler)  # whole-map RoIAlign on large maps
    assert not training._traced_fits(maps(16, 24, 256), batch, dict(sampler, num=512))  # 256-channel mask head
    results = []
    for traced in (False, True):
        with tf.GradientTape() as tape:
            out = training.detector_losses(detector, batch, 3, rcnn_sample_num=1100, traced=traced)
        results.append((out, tape.gradient(out["loss"], detector.trainable_variables)))
    (eager, eager_grads), (graph, graph_grads) = results
    for name in eager:
        assert float(eager[name]) > 0 and abs(float(graph[name]) - float(eager[name])) <= 1e-5 * float(eager[name])
    largest = max(float(np.abs(g).max()) for g in eager_grads)
    for variable, a, b in zip(detector.trainable_variables, graph_grads, eager_grads):
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-4 * largest, variable.path


def test_narrow_detectors():
    """``channels`` / ``fc_channels`` set the neck's and heads' widths, and
    survive the config; bad values are refused."""
    detector = keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3, channels=16, fc_channels=32)
    assert detector.bbox_head.shared_fcs_1.kernel.shape == (32, 32)
    assert detector.mask_head.conv_logits.kernel.shape[-2:] == (16, 3)
    out = detector(np.zeros((1, 64, 64, 3), "float32"))
    assert [tuple(p.shape)[-1] for p in out["fpn"]] == [16] * 5
    again = keras_nextvit.detection.MaskRCNN.from_config(detector.get_config())
    assert [w.shape for w in again.weights] == [w.shape for w in detector.weights]
    for bad in ({"channels": 0}, {"fc_channels": 2.5}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            keras_nextvit.NextViTMaskRCNN((1, 1, 5, 1), num_classes=3, **bad)
    # the training task builds what train(channels=, fc_channels=, drop_path_rate=) asks for
    from keras_nextvit.detection import trainer as detection_trainer

    task = detection_trainer.DetectionTask(training.RECIPES["1x"], "unused", "train2017", (1, 1, 5, 1), 3, None, None,
                                           0, channels=16, fc_channels=32, drop_path_rate=0.0)
    built = task.build_model().detector
    assert (built.channels, built.fc_channels, built.drop_path_rate) == (16, 32, 0.0)
