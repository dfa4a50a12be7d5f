"""Mask R-CNN's training losses of a batch, end to end, as mmdet 2.23's
``TwoStageDetector.forward_train`` computes them. The backbone, FPN and
RPN head run as a traced graph on TensorFlow; the RoI steps between them
and the heads run eagerly and read their sizes from the data (proposal
counts, RoIAlign's windows), as mmdet's do.

1. The backbone, FPN and RPN head on the batch (on TensorFlow a traced
   graph per detector and batch shape, :func:`dense_outputs`).
2. RPN targets over every anchor (:func:`.targets.rpn_batch_targets`) and
   the RPN's losses.
3. Proposals from the RPN's outputs with training's settings
   (:data:`RPN_TRAIN_PROPOSALS`: the best 2000 per level, NMS at 0.7, 1000
   kept), without gradient.
4. Per image, box-head targets over the proposals and the ground truth
   (:func:`.targets.roi_targets`); the box head on the sampled RoIs (7x7
   RoIAlign on P2..P5) and its losses.
5. The mask head on the positive RoIs (14x14 RoIAlign) against their masks
   cropped to 28x28 (:func:`.targets.mask_targets`).

Steps 2 to 5 can run as one traced graph of fixed shapes instead
(:func:`detector_losses`' ``traced``): the proposals padded to
``max_per_img`` (:func:`.rpn_head.rpn_proposals_static`), the sampled RoIs
to the sampler's ``num`` per image and the mask head's to its most
positives, RoIAlign as whole-map products
(:func:`.roi_align.multilevel_roi_align_whole_map`). That pays on small
images and narrow heads (:data:`TRACED_MACS`): a 64-channel tiny detector's
step on four 96x128 images took 0.85 s against 1.9 s eagerly (2-core Xeon),
while at the published widths or sizes the eager RoI steps are cheaper.

The recipe (:class:`DetectionRecipe`, ``RECIPES["1x"]`` and ``["3x"]``: the
six upstream configs ``mask_rcnn_nextvit_{small,base,large}_{1x,3x}.py``),
its optimizer (:func:`build_optimizer`) and the backbone's ``frozen_stages``
and ``norm_eval`` (:func:`freeze_for_training`) are here too.
"""

import dataclasses
import weakref

import keras
import numpy as np
from keras import ops

from .. import trainer
from . import assigner, losses, pipeline, targets
from .anchors import level_anchors
from .compiled import bucket, call_layer
from .inference import BOX_ROI_SIZE, MASK_ROI_SIZE, _rois
from .roi_align import multilevel_roi_align, multilevel_roi_align_whole_map
from .rpn_head import rpn_proposals, rpn_proposals_static

RPN_TRAIN_PROPOSALS = {"nms_pre": 2000, "max_per_img": 1000, "iou_threshold": 0.7, "min_bbox_size": 0}
# ``traced="auto"`` traces the losses while the work that their fixed shapes
# add costs at most this many multiply-adds: RoIAlign over whole maps, and
# the mask head on as many rows as the sampler may make positive (eagerly,
# on the actual positives only). Four 96x128 images, 128 RoIs each, a
# 64-channel detector: ~4e9; the published 256 channels at 512 RoIs: ~1e11
# even on small images, and two 800x1216 images add ~1.5e11 of RoIAlign.
TRACED_MACS = 8e9
# the traced graphs, per detector, seed generator and static configuration
_TRACED = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class DetectionRecipe:
    """Hyper-parameters of a Mask R-CNN run; the defaults are upstream's 1x.

    The six upstream configs: AdamW, learning rate 1e-4 for batch 16 (8 GPUs
    x 2; not rescaled for another batch, as mmdet does not), betas (0.9,
    0.999), weight decay 0.05 except on the normalisation layers
    (``custom_keys={"norm": decay_mult 0}``), no gradient clipping; mmcv's
    ``step`` policy with ``linear`` warm-up over 500 iterations from 1e-6 of
    the rate, decays by 10 at epochs 8 and 11 of 12 (1x) or 27 and 33 of 36
    (3x); the backbone's stem and stage 1 frozen and every BatchNorm of the
    backbone in inference mode (``frozen_stages=1, norm_eval=True``);
    images resized to fit (1333, 800) keeping the ratio (1x) or to one of
    several scales (3x's multi-scale training).
    """

    epochs: int = 12
    milestones: tuple = (8, 11)  # epochs after which the rate is multiplied by gamma
    gamma: float = 0.1
    batch_size: int = 16
    optimizer: trainer.AdamWSettings = trainer.AdamWSettings(learning_rate=1e-4, weight_decay=0.05)
    warmup_iterations: int = 500
    warmup_ratio: float = 1e-6
    frozen_stages: int = 1
    norm_eval: bool = True
    img_scale: tuple = (1333, 800)
    # 3x: each image flipped, then resized to one of ``multiscale_scales``,
    # or resized to one of ``crop_resize_scales``, cropped (sides drawn in
    # ``crop_size_range``) and resized to one of ``multiscale_scales``
    # (AutoAugment's two policies; :func:`.pipeline.multiscale_example`)
    multiscale: bool = False
    multiscale_scales: tuple = pipeline.MULTISCALE_SCALES
    crop_resize_scales: tuple = pipeline.CROP_RESIZE_SCALES
    crop_size_range: tuple = pipeline.CROP_SIZE_RANGE
    # RoIs per image the box head trains on (``train_cfg.rcnn.sampler.num``;
    # a quarter positive at most): fewer make a step cheaper on small images
    rcnn_sample_num: int = assigner.RCNN_SAMPLER["num"]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


RECIPES = {
    "1x": DetectionRecipe(),
    "3x": DetectionRecipe(epochs=36, milestones=(27, 33), multiscale=True),
}


def get_recipe(recipe):
    """A :class:`DetectionRecipe`, or ``"1x"`` / ``"3x"``."""
    return trainer.get_recipe(recipe, RECIPES, DetectionRecipe, "detection recipe")


def build_optimizer(recipe, model, iterations_per_epoch):
    """AdamW with the recipe's step schedule (milestones in optimizer updates:
    ``epoch * iterations_per_epoch``) and no weight decay on the norms."""
    recipe = get_recipe(recipe)
    schedule = trainer.StepDecay(
        recipe.optimizer.learning_rate,
        [m * int(iterations_per_epoch) for m in recipe.milestones],
        gamma=recipe.gamma,
        warmup_iters=recipe.warmup_iterations,
        warmup_ratio=recipe.warmup_ratio,
    )
    return recipe.optimizer.build(model, schedule)


class _InferenceModeBatchNorm(keras.layers.BatchNormalization):
    """A BatchNorm that normalises with its moving statistics and never
    updates them, in training too, while its scale and offset still train:
    a PyTorch BatchNorm in ``eval()`` mode (mmdet's ``norm_eval``)."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


def freeze_for_training(detector, frozen_stages=1, norm_eval=True):
    """mmdet's ``frozen_stages`` and ``norm_eval`` on ``detector``'s backbone.

    ``frozen_stages=k``: the stem and the first ``k`` stages are not trained
    (their BatchNorms then use their moving statistics, as Keras does for a
    frozen BatchNorm). ``norm_eval``: every BatchNorm of the backbone
    normalises with its moving statistics and keeps them, while the scales
    and offsets of the stages that are not frozen still train. Undo with
    :func:`release_for_inference` before saving. Returns ``detector``;
    recompile after it.
    """
    from ..finetune import freeze_stages

    freeze_stages(detector.backbone, frozen_stages)
    if norm_eval:
        for layer in detector.backbone._flatten_layers(include_self=False):
            if type(layer) is keras.layers.BatchNormalization:
                layer.__class__ = _InferenceModeBatchNorm
    return detector


def release_for_inference(detector):
    """Every layer of ``detector`` trainable and every BatchNorm a plain one
    again (what :func:`freeze_for_training` changed). Returns ``detector``."""
    for layer in detector._flatten_layers(include_self=False):
        if type(layer) is _InferenceModeBatchNorm:
            layer.__class__ = keras.layers.BatchNormalization
    for layer in detector.backbone.layers:
        layer.trainable = True
    return detector


def _flat(maps, per_anchor):
    """RPN maps ``[(B, h, w, A * per_anchor), ...]`` as ``(B, anchors, per_anchor)``
    in the anchors' order."""
    batch = ops.shape(maps[0])[0]
    return ops.concatenate([ops.reshape(m, (batch, -1, per_anchor)) for m in maps], axis=1)


def dense_outputs(detector, images, training=False):
    """``detector(images, training=training)``: the backbone, FPN and RPN
    head, whose forward and backward passes are most of a training step; on
    TensorFlow a traced graph (:func:`.compiled.call_layer`). Next-ViT-S at
    800x1216, batch 2, forward and backward: 36-40 s eagerly, 25 s traced
    (a first call traces for about 20 s)."""
    return call_layer(detector, images, graph=True, training=training)


def detector_losses(detector, batch, seed=None, training=False, rcnn_sample_num=None, traced="auto"):
    """A dict of mmdet's five losses (``loss_rpn_cls``, ``loss_rpn_bbox``,
    ``loss_cls``, ``loss_bbox``, ``loss_mask``) and their sum (``loss``) for
    a batch from :func:`.pipeline.collate`; differentiable with respect to
    the detector's weights. ``training``: the backbone's and heads' training
    mode (BatchNorm statistics, drop path). ``rcnn_sample_num``: RoIs the
    box head trains on per image (mmdet's ``train_cfg.rcnn.sampler.num``,
    upstream's 512 by default). ``traced``: compute the targets and the RoI
    losses as traced fixed-shape graphs (TensorFlow only; the same losses,
    the samplers drawing over padded candidates); ``"auto"``: where that is
    cheap (:data:`TRACED_MACS`)."""
    seed = assigner.seed_generator(seed)
    sampler = dict(assigner.RCNN_SAMPLER)
    if rcnn_sample_num is not None:
        if int(rcnn_sample_num) < 1:
            raise ValueError(f"rcnn_sample_num must be at least 1, got {rcnn_sample_num}.")
        sampler["num"] = int(rcnn_sample_num)
    if traced not in ("auto", True, False):
        raise ValueError(f"traced must be True, False or 'auto', got {traced!r}.")
    if traced is True and keras.backend.backend() != "tensorflow":
        raise ValueError(f"traced=True needs the TensorFlow backend (Keras runs on {keras.backend.backend()}).")
    dense = dense_outputs(detector, ops.convert_to_tensor(batch["images"], "float32"), training)
    pyramid, cls_maps, reg_maps = dense["fpn"], dense["rpn_cls"], dense["rpn_reg"]
    if traced is True or (traced == "auto" and _traced_fits(pyramid, batch, sampler)):
        return _traced_losses(detector, batch, dense, seed, sampler, training)
    level_shapes = [tuple(int(d) for d in m.shape[1:3]) for m in cls_maps]

    positive, negative, deltas = targets.rpn_batch_targets(level_shapes, batch, seed)
    loss_rpn_cls, loss_rpn_bbox = losses.rpn_losses(_flat(cls_maps, 1)[..., 0], _flat(reg_maps, 4), deltas,
                                                    positive, negative)

    anchors = level_anchors(level_shapes)
    sampled_rois, sampled_labels, sampled_pos, sampled_neg, sampled_deltas = [], [], [], [], []
    mask_rois, mask_labels, mask_targets = [], [], []
    for b in range(len(batch["pad_shapes"])):
        proposals = rpn_proposals([ops.stop_gradient(c[b]) for c in cls_maps],
                                  [ops.stop_gradient(r[b]) for r in reg_maps],
                                  anchors, batch["img_shapes"][b], RPN_TRAIN_PROPOSALS)
        proposals = ops.convert_to_numpy(proposals)[:, :4]
        rois, labels, pos, neg, roi_deltas, gt_inds = (
            ops.convert_to_numpy(t) for t in targets.roi_targets(
                proposals, np.ones(len(proposals), bool), batch["gt_boxes"][b], batch["gt_labels"][b],
                batch["gt_valid"][b], seed, sample_cfg=sampler)
        )
        keep = pos | neg
        sampled_rois.append(rois[keep])
        sampled_labels.append(labels[keep])
        sampled_pos.append(pos[keep])
        sampled_neg.append(neg[keep])
        sampled_deltas.append(roi_deltas[keep])
        mask_rois.append(rois[pos])
        mask_labels.append(labels[pos])
        mask_targets.append(targets.mask_targets(batch["masks"][b], rois[pos], gt_inds[pos] - 1))

    feats = multilevel_roi_align(pyramid[:4], _rois(sampled_rois), BOX_ROI_SIZE)
    cls_score, bbox_pred = detector.bbox_head(feats, training=training)
    loss_cls, loss_bbox = losses.rcnn_losses(
        cls_score, bbox_pred, np.concatenate(sampled_labels), np.concatenate(sampled_deltas),
        np.concatenate(sampled_pos), np.concatenate(sampled_neg))

    if sum(len(r) for r in mask_rois):
        mask_feats = multilevel_roi_align(pyramid[:4], _rois(mask_rois), MASK_ROI_SIZE)
        mask_logits = detector.mask_head(mask_feats, training=training)
        loss_mask = losses.mask_loss(mask_logits, np.concatenate(mask_targets), np.concatenate(mask_labels))
    else:  # mmdet: the sum of no predictions
        loss_mask = ops.convert_to_tensor(0.0)

    out = {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox, "loss_cls": loss_cls,
           "loss_bbox": loss_bbox, "loss_mask": loss_mask}
    out["loss"] = sum(out.values())
    return out


def _traced_fits(pyramid, batch, sampler):
    """Whether the traced losses suit this batch: TensorFlow, the work their
    padding adds within :data:`TRACED_MACS`, every box inside the images."""
    if keras.backend.backend() != "tensorflow":
        return False
    cells = sum(int(p.shape[1]) * int(p.shape[2]) for p in pyramid[:4])
    channels = int(pyramid[0].shape[-1])
    images = len(batch["pad_shapes"])
    boxes, positives = images * sampler["num"], images * int(sampler["num"] * sampler["pos_fraction"])
    roi_align = (boxes * BOX_ROI_SIZE + positives * MASK_ROI_SIZE) * cells * channels
    mask_head = positives * MASK_ROI_SIZE**2 * channels**2 * 9 * 4  # FCNMaskHead's four 3x3 convolutions
    if roi_align + mask_head > TRACED_MACS:
        return False
    height, width = batch["images"].shape[1:3]
    gt = np.asarray(batch["gt_boxes"])[np.asarray(batch["gt_valid"], bool)]
    return bool(np.all(gt >= 0) and np.all(gt[:, [0, 2]] <= width) and np.all(gt[:, [1, 3]] <= height)
                and np.all(gt[:, 2:] >= gt[:, :2]))


def _padded_truth(batch):
    """The batch's ground truth padded to a multiple of 8 boxes (few traced
    shapes), its instance masks as one ``(B, G, H, W)`` array (H x W: the
    images'): ``(boxes, labels, valid, masks)``."""
    boxes = np.asarray(batch["gt_boxes"], np.float32)
    count = bucket(boxes.shape[1], 8)
    grow = ((0, 0), (0, count - boxes.shape[1]))
    height, width = batch["images"].shape[1:3]
    masks = np.zeros((len(batch["masks"]), count, height, width), np.float32)
    for b, own in enumerate(batch["masks"]):
        own = np.asarray(own)
        masks[b, : own.shape[0], : own.shape[1], : own.shape[2]] = own
    return (np.pad(boxes, grow + ((0, 0),)), np.pad(np.asarray(batch["gt_labels"], np.int32), grow),
            np.pad(np.asarray(batch["gt_valid"], bool), grow), masks)


def _first_rows(mask, count):
    """Indices of ``count`` rows, those where ``mask`` holds first (in
    order), then the others: a fixed number of rows to gather."""
    rows = int(mask.shape[0])
    order = ops.cast(ops.arange(rows), "float32")
    key = ops.where(mask, 2.0 * rows - order, -order)
    return ops.top_k(key, min(int(count), rows))[1]


def _losses_graph(detector, seed, sampler, training, pad_shapes):
    """The traced graph of :func:`_traced_losses` (made once per detector,
    seed generator, sampler, mode and padded image sizes)."""
    import tensorflow as tf

    per_seed = _TRACED.setdefault(detector, weakref.WeakKeyDictionary()).setdefault(seed, {})
    key = (training, tuple(sorted(sampler.items())), pad_shapes)
    if key in per_seed:
        return per_seed[key]
    owner = weakref.ref(detector)

    def graph(pyramid, cls_maps, reg_maps, img_shapes, gt_boxes, gt_labels, gt_valid, gt_masks):
        detector = owner()
        level_shapes = [tuple(int(d) for d in m.shape[1:3]) for m in cls_maps]
        gt = {"gt_boxes": gt_boxes, "gt_valid": gt_valid, "pad_shapes": pad_shapes}
        positive, negative, deltas = targets.rpn_batch_targets(level_shapes, gt, seed)
        loss_rpn_cls, loss_rpn_bbox = losses.rpn_losses(_flat(cls_maps, 1)[..., 0], _flat(reg_maps, 4), deltas,
                                                        positive, negative)
        anchors = level_anchors(level_shapes)
        num, most_positive = sampler["num"], int(sampler["num"] * sampler["pos_fraction"])
        boxes, masks = [], []
        for b in range(len(pad_shapes)):
            proposals, proposal_valid = rpn_proposals_static(
                [ops.stop_gradient(c[b]) for c in cls_maps], [ops.stop_gradient(r[b]) for r in reg_maps],
                anchors, img_shapes[b], RPN_TRAIN_PROPOSALS)
            rois, labels, pos, neg, deltas, gt_inds = targets.roi_targets(
                proposals, proposal_valid, gt_boxes[b], gt_labels[b], gt_valid[b], seed, sample_cfg=sampler)
            # the sampled rows first, up to the sampler's num; the rest weigh nothing
            take = _first_rows(ops.logical_or(pos, neg), num)
            boxes.append([ops.take(t, take, axis=0) for t in (rois, labels, pos, neg, deltas)])
            take = _first_rows(pos, most_positive)
            valid = ops.take(pos, take)
            own = ops.where(valid, ops.take(gt_inds, take) - 1, 0)
            rows = ops.take(rois, take, axis=0)
            masks.append((rows, ops.where(valid, ops.take(labels, take), 0), valid,
                          targets.mask_targets_whole_map(gt_masks[b], rows, own)))
        rois, labels, pos, neg, deltas = (ops.concatenate(list(t), axis=0) for t in zip(*boxes))
        feats = multilevel_roi_align_whole_map(pyramid[:4], ops.stack([r[0] for r in boxes]), BOX_ROI_SIZE)
        cls_score, bbox_pred = detector.bbox_head(ops.reshape(feats, (-1,) + tuple(feats.shape[2:])),
                                                  training=training)
        loss_cls, loss_bbox = losses.rcnn_losses(cls_score, bbox_pred, labels, deltas, pos, neg)
        mask_rois, mask_labels, mask_valid, mask_targets = (list(t) for t in zip(*masks))
        feats = multilevel_roi_align_whole_map(pyramid[:4], ops.stack(mask_rois), MASK_ROI_SIZE)
        mask_logits = detector.mask_head(ops.reshape(feats, (-1,) + tuple(feats.shape[2:])), training=training)
        loss_mask = losses.mask_loss(mask_logits, ops.stop_gradient(ops.concatenate(mask_targets, axis=0)),
                                     ops.concatenate(mask_labels, axis=0), valid=ops.concatenate(mask_valid, axis=0))
        return {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox, "loss_cls": loss_cls,
                "loss_bbox": loss_bbox, "loss_mask": loss_mask}

    per_seed[key] = tf.function(graph)
    return per_seed[key]


def _traced_losses(detector, batch, dense, seed, sampler, training):
    """:func:`detector_losses`' steps 2-5 as one traced graph (see the
    module's docstring): the same losses, the RoI sampler drawing over
    proposals padded to ``max_per_img``."""
    pad_shapes = tuple(tuple(int(d) for d in shape) for shape in batch["pad_shapes"])
    graph = _losses_graph(detector, seed, sampler, training, pad_shapes)
    truth = (ops.convert_to_tensor(t) for t in _padded_truth(batch))
    out = graph(list(dense["fpn"]), list(dense["rpn_cls"]), list(dense["rpn_reg"]),
                ops.convert_to_tensor(np.asarray(batch["img_shapes"], np.float32)), *truth)
    out["loss"] = sum(out.values())
    return out


__all__ = [
    "DetectionRecipe", "RECIPES", "RPN_TRAIN_PROPOSALS", "TRACED_MACS", "build_optimizer", "dense_outputs",
    "detector_losses", "freeze_for_training", "get_recipe", "release_for_inference",
]
