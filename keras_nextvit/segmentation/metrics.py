"""Semantic segmentation metrics: confusion matrix, IoU and accuracy, mean IoU.

Conventions (those of mmsegmentation's ADE20K evaluation, which the published
Next-ViT numbers use):

- the confusion matrix counts pixels, rows = ground truth, columns = prediction;
  pixels whose label is ``ignore_index`` are not counted;
- ``reduce_zero_label``: the annotation's 0 ("other") becomes ``ignore_index``,
  255 stays 255 and every other label moves down by one (ADE20K's PNGs hold
  0..150; the 150 classes are 1..150); ``ignore_index`` applies after this;
- per class, IoU = intersection / union and Acc = intersection / ground-truth
  pixels; a class with an empty union (absent from labels and predictions) has
  IoU NaN, a class absent from the labels has Acc NaN, and mIoU / mAcc are the
  means over the other classes; aAcc is the fraction of counted pixels predicted
  right. Scores are fractions (0..1), not percentages.

Everything is accumulated over the whole dataset (one confusion matrix), not
averaged per image.
"""

import pathlib

import keras
import numpy as np

__all__ = [
    "confusion_matrix",
    "segmentation_scores",
    "MeanIoU",
    "evaluate_folder",
]


def _check_num_classes(num_classes, where):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"{where}: num_classes must be an integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"{where}: num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_ignore_index(ignore_index, where):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"{where}: ignore_index must be an integer, got {ignore_index!r}")
    return int(ignore_index)


def _list_values(values, limit=10):
    values = [int(v) for v in values]
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > limit else "")


def _reduce_zero_label(label, ignore_index):
    """ADE20K's rule on an int64 array: 0 -> ignore_index, 255 stays, others - 1."""
    shifted = np.where(label == 0, ignore_index, label - 1)
    return np.where(label == 255, 255, shifted)


def confusion_matrix(pred, label, num_classes, ignore_index=255, reduce_zero_label=False):
    """Pixel confusion matrix of one prediction (or a batch) against its labels.

    Args:
        pred: integer array of predicted classes, any shape.
        label: integer array of ground-truth classes, the same shape as ``pred``.
        num_classes: number of classes ``C``.
        ignore_index: label value of pixels that are not counted.
        reduce_zero_label: apply ADE20K's rule to ``label`` first (0 becomes
            ``ignore_index``, 255 stays 255, every other label minus 1).

    Returns:
        ``int64`` array ``(C, C)``: entry ``[i, j]`` counts the pixels labelled
        ``i`` and predicted ``j``.

    Raises:
        ValueError: the shapes differ, an array is not integer, a label (after
            ``reduce_zero_label``) other than ``ignore_index`` lies outside
            ``0..C-1``, or a prediction at a counted pixel does; the message
            names the values, ``num_classes`` and ``ignore_index``.
    """
    num_classes = _check_num_classes(num_classes, "confusion_matrix")
    ignore_index = _check_ignore_index(ignore_index, "confusion_matrix")
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(
            f"confusion_matrix: pred has shape {pred.shape} but label has shape "
            f"{label.shape}; they must match"
        )
    for name, array in (("pred", pred), ("label", label)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(
                f"confusion_matrix: {name} must be an integer class map, got dtype {array.dtype}"
            )
    pred = pred.astype(np.int64).ravel()
    label = label.astype(np.int64).ravel()
    if reduce_zero_label:
        label = _reduce_zero_label(label, ignore_index)

    counted = label != ignore_index
    bad = counted & ((label < 0) | (label >= num_classes))
    if np.any(bad):
        raise ValueError(
            f"confusion_matrix: label holds value(s) {_list_values(np.unique(label[bad]))}"
            f"{' (after reduce_zero_label)' if reduce_zero_label else ''}, outside the "
            f"classes 0..{num_classes - 1} (num_classes={num_classes}) and not the "
            f"ignore_index {ignore_index}"
        )
    label = label[counted]
    pred = pred[counted]
    bad = (pred < 0) | (pred >= num_classes)
    if np.any(bad):
        raise ValueError(
            f"confusion_matrix: pred holds value(s) {_list_values(np.unique(pred[bad]))} "
            f"at counted pixels, outside the classes 0..{num_classes - 1} "
            f"(num_classes={num_classes}; ignore_index={ignore_index} applies to labels only)"
        )
    counts = np.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def segmentation_scores(confusion):
    """IoU and accuracy from a confusion matrix (rows = ground truth).

    Returns:
        dict with ``IoU`` and ``Acc`` (float64 arrays ``(C,)``, NaN where
        undefined: IoU where the class is neither labelled nor predicted, Acc
        where it is not labelled), ``mIoU`` and ``mAcc`` (their means over the
        defined entries; NaN if there are none) and ``aAcc`` (correct pixels /
        counted pixels; NaN if nothing was counted), as Python floats.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(
            f"segmentation_scores: the confusion matrix must be square (C, C), got shape "
            f"{confusion.shape}"
        )
    if confusion.shape[0] == 0:
        raise ValueError("segmentation_scores: the confusion matrix is empty (0 classes)")
    if np.any(confusion < 0):
        raise ValueError("segmentation_scores: the confusion matrix holds negative counts")
    confusion = confusion.astype(np.float64)
    intersection = np.diag(confusion)
    labelled = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = labelled + predicted - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        acc = np.where(labelled > 0, intersection / labelled, np.nan)
    total = labelled.sum()
    return {
        "aAcc": float(intersection.sum() / total) if total > 0 else float("nan"),
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "IoU": iou,
        "Acc": acc,
    }


def _nanmean(values):
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def _resize_bilinear(images, height, width):
    """Bilinear resize of ``(N, h, w, C)`` to ``(N, height, width, C)``.

    The sizes may be run-time tensors. Half-pixel centres, no antialiasing,
    edges clamped: the same values as ``keras.ops.image.resize(...,
    interpolation="bilinear")`` and PyTorch's ``align_corners=False``.
    """
    ops = keras.ops
    in_shape = ops.shape(images)
    for axis, size_out in ((1, height), (2, width)):
        size_in = in_shape[axis]
        scale = ops.cast(size_in, "float32") / ops.cast(size_out, "float32")
        source = (ops.cast(ops.arange(size_out), "float32") + 0.5) * scale - 0.5
        source = ops.maximum(source, 0.0)
        low = ops.floor(source)
        fraction = source - low
        low = ops.minimum(ops.cast(low, "int32"), size_in - 1)
        high = ops.minimum(low + 1, size_in - 1)
        broadcast = [1, 1, 1, 1]
        broadcast[axis] = -1
        fraction = ops.cast(ops.reshape(fraction, broadcast), images.dtype)
        below = ops.take(images, low, axis=axis)
        above = ops.take(images, high, axis=axis)
        images = below + (above - below) * fraction
    return images


# Counts of one scatter are exact below this many pixels on every backend
# (PyTorch's segment_sum adds in float32).
_CHUNK = 1 << 24


@keras.saving.register_keras_serializable(package="keras_nextvit")
class MeanIoU(keras.metrics.Metric):
    """Mean IoU of a segmenter, for ``model.compile(metrics=[...])``.

    Accumulates the pixel confusion matrix over every batch (the same one as
    :func:`confusion_matrix`, with the same ``ignore_index`` and
    ``reduce_zero_label`` rules) and reports the mean IoU over the classes that
    occur in the labels or the predictions seen so far (0 before any).

    Args:
        num_classes: number of classes ``C``.
        ignore_index: label value of pixels that are not counted.
        reduce_zero_label: apply ADE20K's label rule (0 becomes
            ``ignore_index``, 255 stays 255, others minus 1).
        from_logits: ``y_pred`` holds logits (or probabilities) ``(N, h, w, C)``,
            channels last, and the prediction is their argmax; logits smaller than
            the labels (a decode head's stride-4 output) are first resized
            bilinearly to the labels' size, as mmsegmentation does. With
            ``False``, ``y_pred`` holds class indices ``(N, H, W)`` (or
            ``(N, H, W, 1)``) of the labels' size.

    ``y_true`` holds class indices ``(N, H, W)`` or ``(N, H, W, 1)``.
    ``sample_weight``, if given (per image ``(N,)`` or per pixel), is a mask:
    pixels whose weight is 0 are not counted, others count once.

    Inside a compiled step the labels cannot raise errors, so labels outside
    ``0..C-1`` other than ``ignore_index`` (and, with ``from_logits=False``,
    such predictions) are left out of the counts; :func:`confusion_matrix`
    raises on them instead. Counts are int32 (exact up to 2**31 - 1 pixels per
    cell). ``scores()`` returns every number of :func:`segmentation_scores`.
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        reduce_zero_label=False,
        from_logits=True,
        name="mean_iou",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes, "MeanIoU")
        self.ignore_index = _check_ignore_index(ignore_index, "MeanIoU")
        self.reduce_zero_label = bool(reduce_zero_label)
        self.from_logits = bool(from_logits)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="int32",
            name="confusion_matrix",
        )

    # -- shapes ----------------------------------------------------------------

    def _class_map(self, tensor, what):
        """(N, H, W) or (N, H, W, 1) -> (N, H, W)."""
        shape = tuple(tensor.shape)
        if len(shape) == 4 and shape[-1] == 1:
            return keras.ops.squeeze(tensor, axis=-1)
        if len(shape) != 3:
            raise ValueError(
                f"MeanIoU: {what} must be a class map (N, H, W) or (N, H, W, 1), got shape {shape}"
            )
        return tensor

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        label = self._class_map(y_true, "y_true")
        size = tuple(label.shape[1:3])

        if self.from_logits:
            shape = tuple(y_pred.shape)
            if len(shape) != 4:
                raise ValueError(
                    f"MeanIoU: with from_logits=True y_pred must be logits (N, h, w, "
                    f"{self.num_classes}), got shape {shape}"
                )
            if shape[-1] is not None and shape[-1] != self.num_classes:
                raise ValueError(
                    f"MeanIoU: y_pred has {shape[-1]} channels (shape {shape}) but "
                    f"num_classes is {self.num_classes}"
                )
            if None in size or None in shape[1:3]:
                # Sizes known only when the step runs (a graph traced for any
                # size): resize with gathers, which take run-time sizes.
                label_shape = ops.shape(label)
                y_pred = _resize_bilinear(
                    ops.cast(y_pred, "float32"), label_shape[1], label_shape[2]
                )
            elif tuple(shape[1:3]) != size:
                y_pred = ops.image.resize(
                    ops.cast(y_pred, "float32"),
                    size,
                    interpolation="bilinear",
                    data_format="channels_last",
                )
            pred = ops.argmax(y_pred, axis=-1)
        else:
            pred = self._class_map(y_pred, "y_pred (from_logits=False)")
            if None not in size and None not in pred.shape[1:3] and tuple(pred.shape[1:3]) != size:
                raise ValueError(
                    f"MeanIoU: y_pred has shape {tuple(y_pred.shape)} but y_true has shape "
                    f"{tuple(y_true.shape)}; with from_logits=False they must be the same size"
                )
        pred = ops.cast(pred, "int32")
        label = ops.cast(label, "int32")

        n = self.num_classes
        ignore = self.ignore_index
        if self.reduce_zero_label:
            shifted = ops.where(ops.equal(label, 0), ignore, label - 1)
            label = ops.where(ops.equal(label, 255), 255, shifted)
        counted = ops.logical_and(
            ops.not_equal(label, ignore),
            ops.logical_and(ops.greater_equal(label, 0), ops.less(label, n)),
        )
        counted = ops.logical_and(
            counted, ops.logical_and(ops.greater_equal(pred, 0), ops.less(pred, n))
        )
        if sample_weight is not None:
            weight = ops.convert_to_tensor(sample_weight)
            if len(weight.shape) == 1:
                weight = ops.reshape(weight, (-1, 1, 1))
            elif len(weight.shape) == 4 and weight.shape[-1] == 1:
                weight = ops.squeeze(weight, axis=-1)
            weight = ops.broadcast_to(weight, ops.shape(label))
            counted = ops.logical_and(counted, ops.not_equal(weight, 0))

        # Cell n * n collects the pixels that are not counted.
        index = ops.where(counted, label * n + pred, n * n)
        index = ops.reshape(index, (-1,))
        total = index.shape[0]
        if total is None or total <= _CHUNK:
            pieces = [index]
        else:
            pieces = [index[start : start + _CHUNK] for start in range(0, total, _CHUNK)]
        counts = None
        for piece in pieces:
            part = ops.segment_sum(
                ops.ones_like(piece, dtype="int32"), piece, num_segments=n * n + 1
            )
            part = ops.cast(part, "int32")
            counts = part if counts is None else counts + part
        counts = ops.reshape(counts[: n * n], (n, n))
        self.confusion.assign(self.confusion + counts)

    def result(self):
        ops = keras.ops
        confusion = ops.cast(self.confusion, "float32")
        intersection = ops.diagonal(confusion)
        union = ops.sum(confusion, axis=0) + ops.sum(confusion, axis=1) - intersection
        present = ops.greater(union, 0)
        iou = intersection / ops.maximum(union, 1.0)
        count = ops.sum(ops.cast(present, "float32"))
        mean = ops.sum(ops.where(present, iou, 0.0)) / ops.maximum(count, 1.0)
        return ops.cast(mean, self.dtype)

    def confusion_matrix(self):
        """The accumulated confusion matrix as an int64 NumPy array."""
        return np.asarray(keras.ops.convert_to_numpy(self.confusion), dtype=np.int64)

    def scores(self):
        """:func:`segmentation_scores` of the accumulated confusion matrix."""
        return segmentation_scores(self.confusion_matrix())

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            reduce_zero_label=self.reduce_zero_label,
            from_logits=self.from_logits,
        )
        return config


# -- evaluation over an ADE20K-layout folder --------------------------------------

_IMAGE_SUFFIXES = (".jpg", ".jpeg")


def _folder_pairs(folder, split):
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    images_dir = root / "images" / split
    annotations_dir = root / "annotations" / split
    for path in (images_dir, annotations_dir):
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} does not exist; expected the ADE20K layout "
                f"images/{split}/*.jpg and annotations/{split}/*.png under {root}"
            )
    images = sorted(
        p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )
    if not images:
        raise FileNotFoundError(f"no .jpg images in {images_dir}")
    pairs = []
    for image in images:
        annotation = annotations_dir / f"{image.stem}.png"
        if not annotation.is_file():
            raise FileNotFoundError(
                f"image {image.name} has no annotation: {annotation} does not exist"
            )
        pairs.append((image, annotation))
    return pairs


def evaluate_folder(
    predict,
    folder,
    num_classes=150,
    reduce_zero_label=True,
    ignore_index=255,
    split="validation",
    limit=None,
    progress=True,
):
    """Evaluate a predictor over an ADE20K-layout dataset folder.

    The folder holds ``images/{split}/NAME.jpg`` and
    ``annotations/{split}/NAME.png`` (one label per pixel, 8- or 16-bit). Images
    are read as RGB without applying EXIF orientation, so that they stay aligned
    with their annotations.

    Args:
        predict: callable ``predict(image) -> class_map``; ``image`` is a
            ``uint8`` RGB array ``(H, W, 3)``, ``class_map`` an integer array
            ``(H, W)`` at the image's size.
        folder: the dataset root (e.g. ``data/ade/ADEChallengeData2016``).
        num_classes, reduce_zero_label, ignore_index: as in
            :func:`confusion_matrix` (the defaults are ADE20K's).
        split: the subfolder name under ``images/`` and ``annotations/``.
        limit: evaluate only the first ``limit`` images (sorted by name).
        progress: show a progress bar.

    Returns:
        :func:`segmentation_scores`'s dict, plus ``confusion`` (the int64
        confusion matrix) and ``num_images``.

    Raises:
        FileNotFoundError: the folder or its subfolders are missing, there are no
            images, or an image has no annotation (named).
        ValueError: a prediction has the wrong shape (the file and both shapes
            are named), or labels / predictions hold values outside the classes.
    """
    from PIL import Image

    num_classes = _check_num_classes(num_classes, "evaluate_folder")
    ignore_index = _check_ignore_index(ignore_index, "evaluate_folder")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"evaluate_folder: limit must be a positive integer, got {limit!r}")
    pairs = _folder_pairs(folder, split)
    if limit is not None:
        pairs = pairs[: int(limit)]

    confusion = np.zeros((num_classes, num_classes), np.int64)
    bar = keras.utils.Progbar(len(pairs), unit_name="image") if progress else None
    for step, (image_path, annotation_path) in enumerate(pairs, 1):
        with Image.open(image_path) as handle:
            image = np.asarray(handle.convert("RGB"))
        with Image.open(annotation_path) as handle:
            label = np.asarray(handle)
        if label.ndim != 2:
            raise ValueError(
                f"annotation {annotation_path.name} must be a single-channel label image, "
                f"got an array of shape {label.shape} (mode {handle.mode})"
            )
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"annotation {annotation_path.name} has size {label.shape} (H, W) but its image "
                f"{image_path.name} has {image.shape[:2]}"
            )
        prediction = predict(image)
        if not isinstance(prediction, np.ndarray):
            prediction = keras.ops.convert_to_numpy(prediction)
        prediction = np.asarray(prediction)
        if prediction.shape != label.shape:
            raise ValueError(
                f"{image_path.name}: the prediction has shape {prediction.shape} but the "
                f"annotation has shape {label.shape}; predict must return an (H, W) class map "
                f"at the image's size"
            )
        try:
            confusion += confusion_matrix(
                prediction,
                label,
                num_classes,
                ignore_index=ignore_index,
                reduce_zero_label=reduce_zero_label,
            )
        except ValueError as error:
            raise ValueError(f"{image_path.name}: {error}") from None
        if bar is not None:
            bar.update(step)

    scores = segmentation_scores(confusion)
    scores["confusion"] = confusion
    scores["num_images"] = len(pairs)
    return scores
