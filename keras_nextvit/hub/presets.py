"""keras-hub preset folders from the package's ImageNet presets and
checkpoint files."""

import os

from .. import presets as nextvit_presets
from .. import weights as weights_lib
from ..model import NextViT
from ..naming import model_depths
from .backbone import NextViTBackbone
from .classifier import NextViTImageClassifier
from .image_converter import NextViTImageConverter
from .preprocessor import NextViTImageClassifierPreprocessor


def backbone_from_model(model):
    """A :class:`NextViTBackbone` with the weights of ``model``, a
    ``keras_nextvit.NextViT`` classifier (or ``include_top=False`` model):
    the two share layer names, so weights move layer by layer."""
    depths = model_depths(model)
    backbone = NextViTBackbone(depths=depths, image_shape=(None, None, model.input_shape[-1]))
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return backbone


def _source_facts(source, variant):
    """(variant, num_classes, image_size, crop_pct, interpolation, weights) of
    a preset name or checkpoint path."""
    if weights_lib.is_preset(source):
        preset = weights_lib.get_preset(source)
        if variant is not None and variant != preset["variant"]:
            raise ValueError(f"Preset {source!r} is Next-ViT-{preset['variant']}, not {variant!r}.")
        return (preset["variant"], preset["num_classes"], preset["input_size"], preset["crop_pct"],
                preset["interpolation"], source)
    path = os.fspath(source)
    if not os.path.isfile(path):
        if os.sep not in path and not path.lower().endswith((".pth", ".pt", ".safetensors", ".npz", ".bin")):
            weights_lib.get_preset(path)  # not a file name: the unknown-preset error
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    state = weights_lib.read_checkpoint(path)
    found, num_classes = weights_lib.infer_variant(state)
    if variant is not None and variant != found:
        raise weights_lib.CheckpointError(
            f"{path} holds a Next-ViT-{found}, not the requested variant {variant!r}."
        )
    if num_classes is None:
        raise weights_lib.CheckpointError(
            f"{path} has no classifier head (head.fc / proj_head.0); a classifier preset needs one."
        )
    return found, num_classes, 224, 0.95, "bicubic", state


def save_preset(source, folder, variant=None, image_size=None, crop_pct=None, cache=None):
    """Write a keras-hub preset folder for a Next-ViT ImageNet classifier.

    Args:
        source: a preset name (``keras_nextvit.PRESETS``; downloaded once into
            the cache) or a checkpoint file (``.pth``/``.safetensors``/
            ``.npz``, either naming).
        folder: the preset folder to write (config, weights, task,
            preprocessor and metadata files).
        variant: ``"small"``/``"base"``/``"large"``; read from the checkpoint
            when not given (and checked against it when given).
        image_size, crop_pct: the preprocessor's crop and crop ratio; the
            preset's by default (224 and 0.95 for checkpoint files).
        cache: where presets are downloaded (default: the package's cache).

    Returns:
        The :class:`NextViTImageClassifier` that was saved.

    ``keras_hub.models.ImageClassifier.from_preset(folder)`` (after
    ``import keras_nextvit``) then rebuilds it.
    """
    variant, num_classes, size, crop, interpolation, weights = _source_facts(source, variant)
    if weights_lib.is_preset(weights):
        weights = weights_lib.download_preset(weights, cache)
    model = NextViT(
        depths=nextvit_presets.VARIANTS[variant]["depths"], classes=num_classes,
        input_shape=(None, None, 3), weights=weights, name=f"nextvit_{variant}",
    )
    backbone = backbone_from_model(model)
    converter = NextViTImageConverter(
        image_size=image_size or size, crop_pct=crop_pct or crop, interpolation=interpolation
    )
    classifier = NextViTImageClassifier(
        backbone, num_classes, preprocessor=NextViTImageClassifierPreprocessor(converter)
    )
    classifier.output_dense.set_weights(model.get_layer("head_fc").get_weights())
    classifier.save_to_preset(os.fspath(folder))
    return classifier
