"""Fine-tuning surgery: a new classifier, frozen and unfrozen stages.

Next-ViT's layers are named after the reference modules (``stem_0`` ..
``stem_3``, ``stages_{s}_blocks_{b}``, ``norm``, ``avg_pool``, ``head_fc``), so
a stage is the set of layers whose name starts with ``stages_{s}_``.

A frozen BatchNorm (``trainable=False``) runs in inference mode in Keras 3:
it uses and keeps its moving statistics, which is what fine-tuning a frozen
pretrained stage wants. Recompile after changing what is trainable.
"""

import keras

from .model import _head_dtype, model_depths


def replace_classifier(model, classes, classifier_activation=None, name=None):
    """A model sharing ``model``'s backbone with a new ``classes``-way head.

    Works on classifiers and on ``include_top=False`` models (pooled or
    not). The new ``head_fc`` has Keras' default initialisation.

    >>> model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3))
    >>> keras_nextvit.replace_classifier(model, 10).output_shape
    (None, 10)
    """
    if int(classes) < 1:
        raise ValueError(f"classes must be a positive integer, got {classes}.")
    names = {layer.name for layer in model.layers}
    if "avg_pool" in names:
        features = model.get_layer("avg_pool").output
    elif "norm" in names:
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(
            model.get_layer("norm").output
        )
    else:
        raise ValueError(
            f"Model {model.name!r} has no 'avg_pool' or 'norm' layer; is it a Next-ViT?"
        )
    outputs = keras.layers.Dense(
        int(classes), activation=classifier_activation, name="head_fc", dtype=_head_dtype()
    )(features)
    return keras.Model(model.input, outputs, name=name or model.name)


def stage_layers(model, stage):
    """Layers of stage ``stage`` (0-3); ``"stem"`` gives the stem."""
    prefix = "stem_" if stage == "stem" else f"stages_{int(stage)}_"
    layers = [layer for layer in model.layers if layer.name.startswith(prefix)]
    if not layers:
        raise ValueError(f"Model {model.name!r} has no layers of stage {stage!r}.")
    return layers


def freeze_stages(model, num_stages):
    """Freeze the stem and the first ``num_stages`` stages (0 freezes nothing).

    Returns ``model``. ``num_stages=4`` leaves only the final norm and the
    head trainable (linear probing plus the norm).
    """
    num_stages = int(num_stages)
    depths = model_depths(model)
    if not 0 <= num_stages <= len(depths):
        raise ValueError(f"num_stages must be in 0..{len(depths)}, got {num_stages}.")
    if num_stages == 0:
        return model
    for layer in stage_layers(model, "stem"):
        layer.trainable = False
    for stage in range(num_stages):
        for layer in stage_layers(model, stage):
            layer.trainable = False
    return model


def unfreeze(model):
    """Make every layer trainable again. Returns ``model``."""
    for layer in model.layers:
        layer.trainable = True
    return model
