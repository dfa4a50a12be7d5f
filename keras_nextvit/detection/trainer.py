"""Mask R-CNN training on the training core (:mod:`keras_nextvit.trainer`).

:class:`DetectionTask` plugs a detector into :func:`keras_nextvit.trainer.run`
like the classification and segmentation tasks: COCO-format data
(:func:`.dataset.read_coco`) through mmdet's training pipeline
(:mod:`.pipeline`), the upstream recipe (:data:`.training.RECIPES`), the
losses of :func:`.training.detector_losses`, with the core's checkpoints,
exact resume, logs and saving.

The losses' RoI steps read their sizes from the data (eager), so the
training step runs eagerly, on TensorFlow (a ``GradientTape``). ``fit``
feeds the step ``(epoch, index)`` pairs; the step builds that batch itself:
image order and flips derive from (seed, epoch) and the samplers'
draws from a seed generator the checkpoint keeps, which is what makes a
resumed run continue exactly.
"""

import dataclasses
import math
import os
import pathlib

import keras
import numpy as np

from .. import trainer
from . import dataset, pipeline, training
from .model import FC_CHANNELS, FPN_CHANNELS, NextViTMaskRCNN


LOSSES = ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")


class DetectorTrainer(keras.Model):
    """``fit``'s model: the detector and the samplers' seed generator; its
    training step reads ``(epoch, index)`` and trains on that batch."""

    def __init__(self, detector, batch_of, seed=0, rcnn_sample_num=None, **kwargs):
        super().__init__(name=f"{detector.name}_trainer", **kwargs)
        self.detector = detector
        self.batch_of = batch_of
        self.rcnn_sample_num = rcnn_sample_num
        self.sampler_seed = keras.random.SeedGenerator(seed, name="samplers")
        # each loss's mean over the epoch so far, as Keras logs a compiled loss
        self.trackers = [keras.metrics.Mean(name=name) for name in LOSSES]
        self.built = True  # the detector is; fit need not call this model on its (epoch, index) data

    @property
    def metrics(self):
        return list(self.trackers)

    def _update(self, optimizer, variables):
        """The optimizer's update of ``variables`` as one traced graph (per
        optimizer and variable list): eagerly, AdamW's few operations per
        variable took ~0.75 s of a tiny detector's 3-4 s step."""
        import tensorflow as tf

        key = (id(optimizer), tuple(id(v) for v in variables))
        if getattr(self, "_update_key", None) != key:
            self._update_fn = tf.function(lambda grads: optimizer.apply(grads, variables))
            self._update_key = key
        return self._update_fn

    def call(self, images, training=False):
        return self.detector(images, training=training)

    def train_step(self, data):
        import tensorflow as tf

        epoch, index = (int(v) for v in np.asarray(data).reshape(-1)[:2])
        batch = self.batch_of(epoch, index)
        with tf.GradientTape() as tape:
            losses = training.detector_losses(self.detector, batch, self.sampler_seed, training=True,
                                              rcnn_sample_num=self.rcnn_sample_num)
        variables = self.trainable_variables
        self._update(self.optimizer, variables)(tape.gradient(losses["loss"], variables))
        for tracker in self.trackers:
            tracker.update_state(losses[tracker.name])
        return {tracker.name: tracker.result() for tracker in self.trackers}


def checkpoint_classes(source, name=None):
    """The number of object classes a detection checkpoint (mmdet names; a
    path or a mapping) was trained on: its ``fc_cls`` rows less background.
    ``name``: what an error calls it (default: the path)."""
    from collections.abc import Mapping

    from ..weights import CheckpointError, read_checkpoint

    state = read_checkpoint(source)
    key = "roi_head.bbox_head.fc_cls.weight"
    if key not in state:
        what = name or ("The checkpoint" if isinstance(source, Mapping) else str(source))
        raise CheckpointError(f"{what} holds no {key}: it is not a Mask R-CNN checkpoint.")
    return int(np.shape(state[key])[0]) - 1


def start_from_checkpoint(detector, source, variant):
    """Load a detection checkpoint into ``detector``. With another number of
    classes, every weight but the class-dependent layers (the box head's
    ``fc_cls`` and ``fc_reg``, the mask head's ``conv_logits``, which keep
    their fresh initialisation) comes from it: fine-tuning a published
    detector on your own classes. Returns ``detector``."""
    from collections.abc import Mapping

    from ..weights import load_torch_weights, read_checkpoint

    state = read_checkpoint(source)  # once: a published checkpoint is hundreds of MB
    classes = checkpoint_classes(state, name=None if isinstance(source, Mapping) else str(source))
    if classes == detector.num_classes:
        load_torch_weights(detector, state)
        return detector
    donor = NextViTMaskRCNN(variant, classes, weights=state)
    fresh = {id(v) for layer in (detector.bbox_head.fc_cls, detector.bbox_head.fc_reg,
                                 detector.mask_head.conv_logits) for v in layer.weights}
    for mine, theirs in zip(detector.weights, donor.weights):
        if id(mine) not in fresh:
            mine.assign(theirs)
    return detector


def coco_split(root, split):
    """``(annotation file, image folder)`` of a COCO-layout root:
    ``annotations/instances_{split}.json`` and ``{split}/``."""
    root = pathlib.Path(root)
    annotations = root / "annotations" / f"instances_{split}.json"
    images = root / split
    if not annotations.is_file():
        raise FileNotFoundError(f"{root} has no annotations/instances_{split}.json (COCO's layout).")
    if not images.is_dir():
        raise FileNotFoundError(f"{root} has no {split}/ image folder (COCO's layout).")
    return str(annotations), str(images)


class COCOValidation(keras.callbacks.Callback):
    """After every epoch, the detector being trained detects every image of
    a COCO-layout split (mmdet's test pipeline at ``scale``) and COCOeval
    scores it, as mmdet's ``evaluation = dict(metric=["bbox", "segm"])``:
    ``val_bbox_mAP``, ``val_bbox_mAP_50``, ``val_segm_mAP`` and
    ``val_segm_mAP_50`` go into the epoch's logs (``log.csv``, the history,
    TensorBoard), quietly: pycocotools' own tables are not printed."""

    def __init__(self, root, split, scale, limit=None):
        super().__init__()
        self.root, self.split, self.scale, self.limit = root, split, scale, limit
        self.last = None

    def on_epoch_end(self, epoch, logs=None):
        from .evaluation import evaluate_coco
        from .inference import detect

        detector = self.model.detector
        scores = evaluate_coco(lambda image: detect(detector, image, scale=self.scale), self.root, self.split,
                               limit=self.limit, progress=False, quiet=True)
        self.last = {f"{kind}_{metric}": scores[kind][metric]
                     for kind in ("bbox", "segm") for metric in ("mAP", "mAP_50")}
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in self.last.items()})


class DetectionTask(trainer.TrainingTask):
    """COCO-format instances, a Next-ViT Mask R-CNN with the backbone's
    ``frozen_stages`` / ``norm_eval``, mmdet's five losses."""

    def __init__(self, recipe, train_dir, split, variant, num_classes, weights, backbone_weights, seed,
                 epochs=None, max_steps_per_epoch=None, scale=None, val_dir=None, val_split="val2017",
                 val_limit=None, channels=FPN_CHANNELS, fc_channels=FC_CHANNELS, drop_path_rate=None):
        self.recipe, self.train_dir, self.split = recipe, train_dir, split
        self.channels, self.fc_channels, self.drop_path_rate = channels, fc_channels, drop_path_rate
        self.val_dir, self.val_split, self.val_limit = val_dir, val_split, val_limit
        self.validation = None
        self.variant, self.num_classes = variant, num_classes
        self.weights, self.backbone_weights, self.seed = weights, backbone_weights, seed
        self.epochs = recipe.epochs if epochs is None else int(epochs)
        self.max_steps_per_epoch = max_steps_per_epoch
        if recipe.multiscale and scale is not None:
            shorts = sorted(min(s) for s in recipe.multiscale_scales)
            raise ValueError(
                f"scale={tuple(scale)} sets the single scale of a recipe without multi-scale training; this "
                f"recipe draws each image's scale (short side {shorts[0]} to {shorts[-1]}, or a crop)."
            )
        self.scale = tuple(recipe.img_scale if scale is None else scale)

    def prepare(self):
        self.class_names, self.records = dataset.read_coco(*coco_split(self.train_dir, self.split))
        if self.val_dir is not None:
            val_names, _ = dataset.read_coco(*coco_split(self.val_dir, self.val_split))
            if val_names != self.class_names:
                raise ValueError(
                    f"{self.val_dir}: the {self.val_split} categories {val_names} are not the training "
                    f"data's {self.class_names} (same names, same order)."
                )
        if not self.records:
            raise ValueError(f"{self.train_dir}: no {self.split} image has an instance to learn from.")
        if self.num_classes is None:
            self.num_classes = len(self.class_names)
        elif self.num_classes != len(self.class_names):
            raise ValueError(
                f"num_classes={self.num_classes}, but the annotations have {len(self.class_names)} "
                "categories."
            )
        steps = math.ceil(len(self.records) / self.recipe.batch_size)
        if self.max_steps_per_epoch:
            steps = min(steps, int(self.max_steps_per_epoch))
        self.steps_per_epoch = steps

    def batch_of(self, epoch, index):
        """Batch ``index`` of epoch ``epoch``: the epoch's order and each
        image's flip (mmdet's RandomFlip, 0.5) from (seed, epoch); with the
        3x recipe each image's flip, scales and crop from (seed, epoch,
        image), so that a resumed run draws what the whole one drew."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.records))
        flips = rng.random(len(self.records)) < 0.5
        size = self.recipe.batch_size
        chosen = order[index * size:(index + 1) * size]
        if self.recipe.multiscale:
            return pipeline.collate([
                pipeline.multiscale_example(
                    self.records[i], np.random.default_rng([self.seed, epoch, int(i)]),
                    self.recipe.multiscale_scales, self.recipe.crop_resize_scales, self.recipe.crop_size_range,
                )
                for i in chosen
            ])
        return pipeline.collate([
            pipeline.training_example(self.records[i], flip=bool(flips[i]), scale=self.scale) for i in chosen
        ])

    def build_model(self):
        keras_file = str(self.weights).endswith(".weights.h5")  # Keras weights: same classes
        detector = NextViTMaskRCNN(self.variant, self.num_classes, backbone_weights=self.backbone_weights,
                                   weights=self.weights if keras_file else None, channels=self.channels,
                                   fc_channels=self.fc_channels, drop_path_rate=self.drop_path_rate)
        if self.weights is not None and not keras_file:
            start_from_checkpoint(detector, self.weights, self.variant)
        training.freeze_for_training(detector, self.recipe.frozen_stages, self.recipe.norm_eval)
        return DetectorTrainer(detector, self.batch_of, seed=self.seed, rcnn_sample_num=self.recipe.rcnn_sample_num)

    def compile(self, model):
        model.compile(optimizer=training.build_optimizer(self.recipe, model, self.steps_per_epoch),
                      run_eagerly=True)

    def callbacks(self):
        if self.val_dir is None:
            return []
        self.validation = COCOValidation(self.val_dir, self.val_split, self.scale, self.val_limit)
        return [self.validation]

    def metrics(self, final, model, history, val_ds):
        """The last validation's COCO mAPs (none without ``val_dir``; a run
        that had no epoch left to train scores its final detector)."""
        if self.validation is None:
            return {}
        if self.validation.last is None:
            self.validation.set_model(model)
            self.validation.on_epoch_end(None)
        return dict(self.validation.last)

    def datasets(self, initial_epoch):
        import tensorflow as tf

        pairs = np.array([(e, i) for e in range(initial_epoch, self.epochs) for i in range(self.steps_per_epoch)],
                         np.int64).reshape(-1, 2)
        return tf.data.Dataset.from_tensor_slices(pairs).batch(1), None

    def final_model(self, model, history):
        return training.release_for_inference(model.detector)

    def save(self, model, directory):
        model.save_weights(directory / "detector.weights.h5")
        (directory / "classes.txt").write_text("\n".join(self.class_names) + "\n")


def train(train_dir, output_dir="runs/detection", variant="small", num_classes=None, weights=None,
          backbone_weights=None, recipe="1x", split="train2017", epochs=None, batch_size=None,
          learning_rate=None, scale=None, max_steps_per_epoch=None, seed=0, resume=True,
          tensorboard=True, verbose="auto", callbacks=(), val_dir=None, val_split="val2017", val_limit=None,
          rcnn_sample_num=None, channels=FPN_CHANNELS, fc_channels=FC_CHANNELS, drop_path_rate=None):
    """Train or fine-tune a Next-ViT Mask R-CNN on a COCO-layout folder.

    Args:
        train_dir: ``annotations/instances_{split}.json`` and ``{split}/``.
        output_dir: ``checkpoints/``, ``log.csv``, ``tensorboard/``,
            ``detector.weights.h5`` (loads into ``NextViTMaskRCNN(weights=...)``)
            and ``classes.txt``.
        variant: ``small``, ``base``, ``large`` or four stage depths.
        num_classes: default: the annotations' categories.
        weights: a detection checkpoint to start from; with another number
            of classes than ``num_classes`` all but the class layers load
            (:func:`start_from_checkpoint`).
        backbone_weights: an ImageNet preset or checkpoint for the backbone.
        recipe: ``"1x"``, ``"3x"`` (36 epochs, multi-scale training:
            :func:`.pipeline.multiscale_example`) or a
            :class:`.training.DetectionRecipe`.
        epochs, batch_size, learning_rate, scale: override the recipe's
            (``scale``: the ``(long, short)`` size images are fitted into;
            not with a multi-scale recipe).
        max_steps_per_epoch: cap an epoch (smoke runs).
        seed: seeds weights, data order, flips and the samplers.
        resume: continue from ``output_dir/checkpoints`` when it has one.
        val_dir: a COCO-layout folder (``annotations/instances_{val_split}.json``
            and ``{val_split}/``) scored after every epoch: COCO box and
            mask mAP (and at IoU 0.5) in the logs and ``metrics``, the
            images detected at the training ``scale`` (mmdet's test pipeline
            at (1333, 800) by default). ``val_limit``: its first images only.
        rcnn_sample_num: override the recipe's RoIs per image for the box
            head (upstream 512; fewer make small images' steps cheaper).
        channels, fc_channels: the detector's neck and head widths
            (:func:`NextViTMaskRCNN`; narrower ones for quick experiments,
            the published 256 and 1024 by default).
        drop_path_rate: the backbone's stochastic depth (default:
            upstream's, :func:`NextViTMaskRCNN`; a tiny backbone trained
            from scratch learns faster without it).

    Returns:
        :class:`keras_nextvit.trainer.TrainingResult` (``model``: the detector).
    """
    recipe = training.get_recipe(recipe)
    if batch_size is not None:
        recipe = recipe.replace(batch_size=int(batch_size))
    if rcnn_sample_num is not None:
        recipe = recipe.replace(rcnn_sample_num=int(rcnn_sample_num))
    if learning_rate is not None:
        recipe = recipe.replace(optimizer=dataclasses.replace(recipe.optimizer, learning_rate=float(learning_rate)))
    if not os.path.isdir(train_dir):
        raise FileNotFoundError(f"{train_dir} is not a directory.")
    if val_dir is not None and not os.path.isdir(val_dir):
        raise FileNotFoundError(f"{val_dir} is not a directory.")
    task = DetectionTask(recipe, train_dir, split, variant, num_classes, weights, backbone_weights, seed,
                         epochs=epochs, max_steps_per_epoch=max_steps_per_epoch, scale=scale, val_dir=val_dir,
                         val_split=val_split, val_limit=val_limit, channels=channels, fc_channels=fc_channels,
                         drop_path_rate=drop_path_rate)
    return trainer.run(task, output_dir, seed=seed, resume=resume, tensorboard=tensorboard, verbose=verbose,
                       callbacks=callbacks)


__all__ = ["COCOValidation", "DetectionTask", "DetectorTrainer", "LOSSES", "checkpoint_classes", "coco_split",
           "start_from_checkpoint", "train"]
