"""Classifying images, and validating on a labelled folder, with the Keras
model or an exported file.

What ``keras-nextvit classify`` and ``keras-nextvit validate`` (and
``tools/validate.py``) run:

* :class:`Transform`: a checkpoint's evaluation transform (resize the
  shorter side to ``size / crop_pct``, center-crop ``size``, normalise), from
  its preset or given;
* :func:`image_files` and :func:`labelled_folder`: the images of files and
  folders, and an ImageNet-layout folder (``<wnid>/*.JPEG``, or one folder
  per class of another class set) with its labels;
* :func:`keras_classifier` and :func:`artifact_classifier`: the Keras model
  or a ``.tflite`` / ``.onnx`` / OpenVINO ``.xml`` file behind one call,
  ``(N, H, W, 3)`` normalised images -> ``(N, classes)`` logits;
* :func:`classify` (top-k per image) and :func:`validate` (top-1, top-5,
  loss, agreement with the first classifier and ms per image, for several
  classifiers over the same images in one pass).

    from keras_nextvit import classify
    from keras_nextvit.preprocessing import imagenet_classes

    model = classify.keras_classifier("nextvit_small.bd_in1k")
    transform = classify.Transform.of("nextvit_small.bd_in1k")
    rows = classify.classify(["cat.jpg"], model, transform, imagenet_classes(), top=5)
    files, labels, _ = classify.labelled_folder("imagenet/val")
    table = classify.validate(files, labels, {"keras": model}, transform)
"""

import dataclasses
import os
import pathlib
import time

import numpy as np

from . import presets

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
ARTIFACT_SUFFIXES = {".tflite": "TFLite", ".onnx": "ONNX", ".xml": "OpenVINO IR"}
DATA_DIR = pathlib.Path(__file__).parent / "data"


def imagenet_wnids():
    """The 1000 ImageNet-1K WordNet ids in the checkpoints' class order
    (sorted, as the ILSVRC-2012 folders sort)."""
    return (DATA_DIR / "imagenet_wnids.txt").read_text().split()


@dataclasses.dataclass(frozen=True)
class Transform:
    """An evaluation transform: shorter side to ``int(size / crop_pct)``
    (``interpolation``), center crop ``size``, then ``(x / 255 - mean) / std``."""

    size: int = 224
    crop_pct: float = 0.95
    interpolation: str = "bicubic"
    mean: tuple = presets.IMAGENET_MEAN
    std: tuple = presets.IMAGENET_STD

    def __post_init__(self):
        if int(self.size) < 32:
            raise ValueError(f"The input size must be at least 32 pixels, got {self.size}.")
        if not 0 < float(self.crop_pct) <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}.")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}.")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name} takes three values (R, G, B), got {tuple(value)}.")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(self.std)}.")

    @classmethod
    def of(cls, preset=None, **overrides):
        """The preset's transform (timm's defaults for ``None``), with any
        of ``size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``
        that is not ``None`` in ``overrides`` replacing its own."""
        base = cls()
        if preset is not None:
            config = presets.PRESETS[preset]
            base = cls(config["input_size"], config["crop_pct"], config["interpolation"],
                       tuple(config["mean"]), tuple(config["std"]))
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def load(self, path):
        """One image file as a normalised ``(size, size, 3)`` float32 array."""
        from PIL import Image, UnidentifiedImageError

        from .preprocessing import load_image, preprocess_input

        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path} is not an image that can be read ({error}).") from None
        crop = load_image(image, preset={"input_size": int(self.size), "crop_pct": float(self.crop_pct),
                                         "interpolation": self.interpolation})
        return preprocess_input(crop, self.mean, self.std)

    def batch(self, paths):
        return np.stack([self.load(p) for p in paths])


def image_files(paths):
    """Image files from files and folders (a folder: its images, searched
    recursively, sorted). A missing path or a folder without images raises
    ``FileNotFoundError`` / ``ValueError``; a named file is taken as it is
    (reading it says whether it is an image)."""
    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder.")
    if not files:
        raise ValueError("No images given.")
    return files


def labelled_folder(root, num_classes=1000, limit=None):
    """The images of an ImageNet-layout folder and their labels:
    ``(files, labels, class_names)``.

    ``root`` holds one folder per class. Folders named by ImageNet-1K's
    WordNet ids (all 1000 or some) take those classes' indices; any other
    class set takes the sorted folder names as its classes ``0..n-1``, as
    Keras' and torchvision's folder datasets do, and must have
    ``num_classes`` folders. ``limit``: the first images of a fixed shuffle
    (every class represented alike), so that a limited run is a sample.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder.")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root} has no class folders (expected {root}/<class>/<image>, e.g. ImageNet's "
                         f"val/n01440764/*.JPEG).")
    names = [f.name for f in folders]
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    if num_classes == len(wnids) and all(n in index for n in names):
        labels_of, class_names = {n: index[n] for n in names}, wnids
    elif len(names) == num_classes:
        labels_of, class_names = {n: i for i, n in enumerate(names)}, names
    else:
        raise ValueError(
            f"{root} has {len(names)} class folders ({_summary(names)}), but the model has {num_classes} "
            "classes: give one folder per class, or ImageNet's WordNet ids for a 1000-class model."
        )
    files, labels = [], []
    for folder in folders:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        files.extend(found)
        labels.extend([labels_of[folder.name]] * len(found))
    if not files:
        raise ValueError(f"{root}: its class folders hold no image files ({', '.join(IMAGE_SUFFIXES)}).")
    labels = np.asarray(labels, np.int64)
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"limit must be at least 1, got {limit}.")
        order = np.sort(np.random.default_rng(0).permutation(len(files))[: int(limit)])
        files, labels = [files[i] for i in order], labels[order]
    return files, labels, class_names


def _summary(names, limit=4):
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def parse_variant(variant):
    """``small`` / ``base`` / ``large``, or four stage depths (``"1,1,5,1"``
    or a sequence) -> depths."""
    if isinstance(variant, str) and variant in presets.VARIANTS:
        return tuple(presets.VARIANTS[variant]["depths"])
    try:
        depths = tuple(int(d) for d in (variant.split(",") if isinstance(variant, str) else variant))
    except (TypeError, ValueError):
        depths = ()
    if len(depths) != 4:
        raise ValueError(f"variant must be small, base, large or four stage depths like 1,1,5,1; got {variant!r}.")
    return depths


def keras_classifier(weights=None, variant="small", num_classes=1000, size=None, batch_size=32,
                     mixed_precision=False):
    """The Keras model as ``images -> logits``: built for ``variant`` (the
    preset's own when ``weights`` is a preset), loaded from ``weights`` (a
    preset, a checkpoint file, or ``None``: random weights)."""
    import keras

    from .model import NextViT
    from .weights import is_preset

    if mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    if is_preset(weights):
        config = presets.PRESETS[weights]
        variant, num_classes = config["variant"], config["num_classes"]
        size = size or config["input_size"]
    elif weights is not None and not os.path.exists(weights):
        raise FileNotFoundError(
            f"{weights}: neither a file nor a preset (presets: {', '.join(list(presets.PRESETS)[:3])}, ...; "
            "`keras-nextvit info` lists them)."
        )
    model = NextViT(depths=parse_variant(variant), weights=weights, classes=int(num_classes),
                    input_shape=(None, None, 3), name="nextvit")
    return KerasClassifier(model, batch_size)


class KerasClassifier:
    """A Keras classifier as ``images -> logits`` (float32 NumPy), run in
    batches of ``batch_size``."""

    def __init__(self, model, batch_size=32):
        self.model = model
        self.batch_size = int(batch_size)
        self.num_classes = int(model.output_shape[-1])
        self.input_size = None  # any size

    def __call__(self, images):
        from keras import ops

        outputs = []
        for i in range(0, len(images), self.batch_size):
            logits = self.model(images[i : i + self.batch_size], training=False)
            outputs.append(np.asarray(ops.convert_to_numpy(logits), np.float32))
        return np.concatenate(outputs)


class ArtifactClassifier:
    """An exported classifier (``.tflite``, ``.onnx``, OpenVINO ``.xml``)
    as ``images -> logits`` with its own runtime."""

    def __init__(self, path):
        path = pathlib.Path(path)
        kind = ARTIFACT_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"{path}: unknown artifact type {path.suffix or '(no suffix)'!r}; classify and validate run "
                ".tflite (TFLite), .onnx (ONNX Runtime) and .xml (OpenVINO IR) files."
            )
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file.")
        self.path, self.kind = path, kind
        if kind == "TFLite":
            from .exporters.tflite import TFLiteRunner

            probe = TFLiteRunner(path, names=[])
            names = list(probe.output_details)
            if len(names) != 1:
                raise ValueError(f"{path} has {len(names)} outputs ({names}); a classifier has one (logits).")
            self.runner = TFLiteRunner(path, names)
            shape = probe.input_detail["shape_signature"]
            output_width = probe.output_details[names[0]]["shape"][-1]
        elif kind == "ONNX":
            from .exporters.onnx import ONNXRunner

            self.runner = ONNXRunner(path)
            shape = self.runner.session.get_inputs()[0].shape
            outputs = self.runner.session.get_outputs()
            if len(outputs) != 1:
                raise ValueError(f"{path} has {len(outputs)} outputs; a classifier has one (logits).")
            output_width = outputs[0].shape[-1]
        else:
            from .exporters.openvino import OpenVINORunner

            self.runner = OpenVINORunner(path)
            if len(self.runner.names) != 1:
                raise ValueError(f"{path} has {len(self.runner.names)} outputs; a classifier has one (logits).")
            shape = [d.get_length() if d.is_static else None for d in self.runner.compiled.inputs[0].partial_shape]
            output_width = self.runner.compiled.outputs[0].partial_shape[-1].get_length()
        self.num_classes = output_width
        if len(shape) != 4:
            raise ValueError(f"{path} takes input of rank {len(shape)}; a classifier takes (N, H, W, 3) images.")
        height, width, channels = (int(d) if isinstance(d, (int, np.integer)) and d > 0 else None
                                   for d in shape[1:])
        if channels != 3:
            raise ValueError(f"{path} takes inputs of shape {list(shape)}; classify runs channels-last "
                             "(N, H, W, 3) exports, as keras_nextvit.export writes them.")
        if height is not None and height != width:
            raise ValueError(f"{path} takes {height}x{width} images; classify crops squares.")
        self.input_size = height

    def __call__(self, images):
        (logits,) = self.runner(np.ascontiguousarray(images, np.float32))
        return np.asarray(logits, np.float32)


def artifact_classifier(path):
    return ArtifactClassifier(path)


def check_sizes(classifiers, transform, requested=None):
    """The transform with the size every fixed-size artifact takes. They
    must agree with each other and with ``requested`` (a size the user
    asked for), else a ``ValueError`` says which takes what."""
    fixed = {name: c.input_size for name, c in classifiers.items() if c.input_size is not None}
    sizes = set(fixed.values())
    if len(sizes) > 1:
        raise ValueError(f"The artifacts take different input sizes: {fixed}; compare files of one size.")
    if sizes and requested is not None and sizes != {int(requested)}:
        raise ValueError(f"--size {requested} was asked for, but the artifacts take {fixed}.")
    if sizes and sizes != {transform.size}:
        return dataclasses.replace(transform, size=sizes.pop())
    return transform


def _batches(files, batch_size):
    for i in range(0, len(files), batch_size):
        yield files[i : i + batch_size]


def _progress(total, progress, stateful=()):
    if not progress:
        return None
    import keras

    return keras.utils.Progbar(total, unit_name="image", stateful_metrics=list(stateful))


def classify(files, classifier, transform, class_names, top=5, batch_size=32, progress=False):
    """Top-``top`` classes of each image: a list of ``{"file", "top":
    [(index, name, probability), ...]}``."""
    if int(top) < 1:
        raise ValueError(f"top must be at least 1, got {top}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}.")
    from .preprocessing import decode_predictions

    rows = []
    bar = _progress(len(files), progress)
    for chunk in _batches(list(files), int(batch_size)):
        logits = classifier(transform.batch(chunk))
        if logits.shape[-1] != len(class_names):
            raise ValueError(f"The classifier gives {logits.shape[-1]} classes; {len(class_names)} names were "
                             "given (pass --num-classes with a checkpoint of another class count).")
        for path, best in zip(chunk, decode_predictions(logits, int(top), class_names)):
            rows.append({"file": str(path), "top": best})
        if bar is not None:
            bar.add(len(chunk))
    return rows


@dataclasses.dataclass
class ValidationRow:
    """One classifier's scores over a folder."""

    name: str
    images: int
    top1: float
    top5: float
    loss: float
    agreement: float  # top-1 equal to the first classifier's, per image
    ms_per_image: float

    def to_dict(self):
        return dataclasses.asdict(self)


def validate(files, labels, classifiers, transform, batch_size=32, progress=False):
    """Score each of ``classifiers`` (a dict name -> ``images -> logits``)
    over the same images, read once: a list of :class:`ValidationRow` in
    the dict's order. ``agreement`` compares each top-1 with the first
    classifier's (1.0 for the first itself). The progress bar shows the
    first classifier's running top-1."""
    if not classifiers:
        raise ValueError("No classifier to validate.")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}.")
    labels = np.asarray(labels, np.int64)
    names = list(classifiers)
    first = names[0]
    totals = {n: dict(top1=0, top5=0, loss=0.0, agree=0, seconds=0.0) for n in names}
    bar = _progress(len(files), progress, stateful=["top-1"])
    done = 0
    for chunk in _batches(list(files), int(batch_size)):
        images = transform.batch(chunk)
        truth = labels[done : done + len(chunk)]
        reference = None
        for name in names:
            start = time.perf_counter()
            logits = np.asarray(classifiers[name](images), np.float64)
            totals[name]["seconds"] += time.perf_counter() - start
            if logits.ndim != 2 or logits.shape[0] != len(chunk):
                raise ValueError(f"{name} returned logits of shape {logits.shape} for {len(chunk)} images.")
            if int(truth.max()) >= logits.shape[-1]:
                raise ValueError(f"{name} gives {logits.shape[-1]} classes; the folder's labels reach "
                                 f"{int(truth.max())}.")
            predicted = np.argmax(logits, -1)
            order = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
            shifted = logits - logits.max(axis=-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            t = totals[name]
            t["top1"] += int(np.sum(predicted == truth))
            t["top5"] += int(np.sum(np.any(order == truth[:, None], axis=-1)))
            t["loss"] += float(-np.sum(log_probs[np.arange(len(chunk)), truth]))
            if reference is None:
                reference = predicted
            t["agree"] += int(np.sum(predicted == reference))
        done += len(chunk)
        if bar is not None:
            bar.update(done, values=[("top-1", totals[first]["top1"] / done)])
    return [ValidationRow(n, done, t["top1"] / done, t["top5"] / done, t["loss"] / done, t["agree"] / done,
                          1000.0 * t["seconds"] / done)
            for n, t in totals.items()]


def format_table(rows):
    """The rows as a text table (percentages, ms per image)."""
    width = max(12, *(len(r.name) for r in rows))
    lines = [f"{'model':<{width}}  {'images':>6}  {'top-1':>7}  {'top-5':>7}  {'loss':>7}  "
             f"{'agree':>7}  {'ms/image':>8}"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.images:>6}  {r.top1:>7.2%}  {r.top5:>7.2%}  {r.loss:>7.4f}  "
                     f"{r.agreement:>7.2%}  {r.ms_per_image:>8.2f}")
    return "\n".join(lines)


__all__ = [
    "ArtifactClassifier", "KerasClassifier", "Transform", "ValidationRow", "artifact_classifier", "check_sizes",
    "classify", "format_table", "image_files", "imagenet_wnids", "keras_classifier", "labelled_folder",
    "parse_variant", "validate",
]
