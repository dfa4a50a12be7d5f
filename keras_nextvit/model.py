"""The Next-ViT model builder, the paper's variants and the feature extractor.

The functional graph mirrors the reference module tree, layer for layer and
name for name::

    input_check -> stem_0 .. stem_3 -> stages_{s}_blocks_{b} ... -> norm
                -> avg_pool -> head_fc

Keras names cannot hold dots on every backend, so the reference's ``stem.0``
is ``stem_0`` here; :mod:`keras_nextvit.naming` turns one into the other.
"""

import keras

from . import presets
from .layers import NCB, NTB, ConvBNReLU, InputCheck, _batch_norm
from .naming import block_name, extra_norm_name, model_depths, stage_block_names, torch_prefix  # noqa: F401


def stage_plan(depths):
    """The Next Hybrid Strategy: block type and width of every block.

    Returns four lists of ``("NCB" | "NTB", channels)``. Stages 1, 2 and 4
    end in one NTB; stage 3 repeats (4 x NCB, 1 x NTB), so its depth must be
    a multiple of 5.
    """
    depths = tuple(int(d) for d in depths)
    if len(depths) != 4 or min(depths) < 1:
        raise ValueError(f"depths must be four positive integers, got {depths}.")
    if depths[1] < 1 or depths[2] % 5:
        raise ValueError(
            f"depths[2] must be a multiple of 5 (4 NCB + 1 NTB per unit), got {depths}."
        )
    return [
        [("NCB", 96)] * depths[0],
        [("NCB", 192)] * (depths[1] - 1) + [("NTB", 256)],
        ([("NCB", 384)] * 4 + [("NTB", 512)]) * (depths[2] // 5),
        [("NCB", 768)] * (depths[3] - 1) + [("NTB", 1024)],
    ]


def _resolve_input_shape(input_shape, input_tensor, preset):
    if input_tensor is not None:
        shape = tuple(input_tensor.shape[1:])
    elif input_shape is not None:
        shape = tuple(input_shape)
    elif preset is not None:
        size = preset["input_size"]
        shape = (size, size, 3)
    else:
        shape = (None, None, 3)
    return check_input_shape(shape)


def check_input_shape(shape):
    """``shape`` as a tuple if it is ``(height, width, channels)`` with sizes
    of at least 32 pixels (or ``None``); else a clear ValueError."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got {shape}."
        )
    for axis, size in zip(("height", "width"), shape[:2]):
        if size is not None and size < presets.MIN_INPUT_SIZE:
            raise ValueError(
                f"input_shape {axis} {size} is below the minimum of "
                f"{presets.MIN_INPUT_SIZE} pixels (input_shape={shape})."
            )
    return shape


def NextViT(
    depths,
    stem_channels=presets.STEM_CHANNELS,
    strides=presets.STAGE_STRIDES,
    sr_ratios=presets.SR_RATIOS,
    head_dim=presets.HEAD_DIM,
    mix_block_ratio=presets.MIX_BLOCK_RATIO,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation=None,
    drop_path_rate=0.1,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    name="nextvit",
):
    """Build a Next-ViT as a functional Keras model.

    Args:
        depths: blocks per stage, e.g. ``(3, 4, 10, 3)`` for Next-ViT-S.
        stem_channels: widths of the stem convolutions (the last is used
            twice).
        strides: first-block stride of each stage.
        sr_ratios: E-MHSA spatial reduction of each stage.
        head_dim: channels per attention head (MHCA and E-MHSA).
        mix_block_ratio: share of an NTB's channels given to E-MHSA.
        include_top: end in the classifier (``head.fc``).
        weights: ``None``, a preset name (see ``keras_nextvit.PRESETS``), or a
            path to a ``.weights.h5``, ``.pth``/``.pt``, ``.safetensors`` or
            ``.npz`` file.
        input_tensor: optional Keras tensor to use as the model input.
        input_shape: ``(height, width, 3)``; ``None`` sizes give a model
            for any image of at least 32 pixels. Default: the preset's size
            when ``weights`` is a preset, else ``(None, None, 3)``.
        pooling: with ``include_top=False``: ``None`` (the normalised last
            feature map), ``"avg"`` or ``"max"``.
        classes: classifier width with ``include_top=True``.
        classifier_activation: activation of ``head.fc`` (``None``: logits).
        drop_path_rate: stochastic depth of the last block; rates grow
            linearly from 0 over all blocks.
        dropout_rate: dropout in MLPs and the E-MHSA output projection.
        attention_dropout_rate: dropout on attention probabilities.
        name: model name.

    Example:

    >>> import numpy as np, keras_nextvit
    >>> model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 3), classes=10)
    >>> model.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape
    (1, 10)
    """
    from . import weights as weights_lib

    preset = weights_lib.get_preset(weights) if weights_lib.is_preset(weights) else None
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    if preset is not None and include_top and classes != preset["num_classes"]:
        raise ValueError(
            f"Preset {weights!r} has a {preset['num_classes']}-class head; got "
            f"classes={classes}. Use include_top=False, or load the preset into a "
            "1000-class model and replace its head."
        )
    shape = _resolve_input_shape(input_shape, input_tensor, preset)
    if weights is not None and shape[-1] != 3:
        raise ValueError(
            f"Pretrained weights expect 3 input channels (RGB); got input_shape={shape}. "
            "Build with weights=None for other channel counts."
        )
    plan = stage_plan(depths)

    if input_tensor is None:
        inputs = keras.Input(shape=shape, name="images")
    elif not keras.backend.is_keras_tensor(input_tensor):
        inputs = keras.Input(tensor=input_tensor, shape=shape, name="images")
    else:
        inputs = input_tensor

    stages, x = build_trunk(
        inputs,
        plan,
        stem_channels=stem_channels,
        strides=strides,
        sr_ratios=sr_ratios,
        head_dim=head_dim,
        mix_block_ratio=mix_block_ratio,
        drop_path_rate=drop_path_rate,
        dropout_rate=dropout_rate,
        attention_dropout_rate=attention_dropout_rate,
    )
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(
            classes, activation=classifier_activation, name="head_fc", dtype=_head_dtype()
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    model_inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else inputs
    model = keras.Model(model_inputs, x, name=name)
    if weights is not None:
        weights_lib.load_weights(model, weights)
    return model


def build_trunk(inputs, plan, **config):
    """Input check, stem, stages and the final BatchNorm on the Keras tensor
    ``inputs``: ``(stage_outputs, normalised_last_map)``. ``config``: the
    keyword arguments of :func:`build_stages`. The classifier and
    ``keras_nextvit.hub.NextViTBackbone`` are both built by this."""
    x = InputCheck(channels=inputs.shape[-1], min_size=presets.MIN_INPUT_SIZE, name="input_check")(
        inputs
    )
    stages = build_stages(x, plan, **config)
    return stages, _batch_norm("norm")(stages[-1])


def build_stages(
    x,
    plan,
    stem_channels=presets.STEM_CHANNELS,
    strides=presets.STAGE_STRIDES,
    sr_ratios=presets.SR_RATIOS,
    head_dim=presets.HEAD_DIM,
    mix_block_ratio=presets.MIX_BLOCK_RATIO,
    drop_path_rate=0.1,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    extra_norms=False,
):
    """The stem and the four stages on the Keras tensor ``x``.

    Returns the four stage outputs (strides 4, 8, 16, 32). With
    ``extra_norms`` (the segmentation backbone of the upstream repository,
    ``with_extra_norm=True``), stage ``i``'s last block is followed by the
    BatchNorm ``extra_norm_{i}`` for stages 1-3 and by ``norm`` for stage 4,
    and the normalised map is both the output and what the next stage reads.
    Without, the outputs are the raw last-block maps (classification).
    """
    c0, c1, c2 = stem_channels
    for i, (filters, stride) in enumerate(((c0, 2), (c1, 1), (c2, 1), (c2, 2))):
        x = ConvBNReLU(filters, 3, strides=stride, name=f"stem_{i}")(x)

    outputs = []
    total_blocks = sum(len(stage) for stage in plan)
    block_index = 0
    for s, stage in enumerate(plan):
        for b, (kind, filters) in enumerate(stage):
            rate = drop_path_rate * block_index / max(total_blocks - 1, 1)
            common = dict(
                strides=strides[s] if b == 0 else 1,
                head_dim=head_dim,
                drop_path=rate,
                dropout=dropout_rate,
                name=block_name(s, b),
            )
            if kind == "NCB":
                x = NCB(filters, **common)(x)
            else:
                x = NTB(
                    filters,
                    sr_ratio=sr_ratios[s],
                    mix_block_ratio=mix_block_ratio,
                    attention_dropout=attention_dropout_rate,
                    **common,
                )(x)
            block_index += 1
        if extra_norms:
            x = _batch_norm("norm" if s == len(plan) - 1 else extra_norm_name(s))(x)
        outputs.append(x)
    return outputs



def _head_dtype():
    """float32 logits under a mixed-precision policy (Keras' advice for the last
    layer: softmax, losses and metrics stay accurate); else the policy's."""
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype != policy.variable_dtype else None


def _variant_builder(variant, default_name):
    config = presets.VARIANTS[variant]
    paper = presets.PAPER[variant]

    def build(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation=None,
        drop_path_rate=config["drop_path_rate"],
        name=default_name,
        **kwargs,
    ):
        return NextViT(
            depths=config["depths"],
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            drop_path_rate=drop_path_rate,
            name=name,
            **kwargs,
        )

    title = f"Next-ViT-{variant[0].upper()}"
    build.__name__ = f"NextViT{variant.capitalize()}"
    build.__qualname__ = build.__name__
    build.__doc__ = (
        f"{title}: depths {config['depths']}, drop path {config['drop_path_rate']} "
        f"({paper['params_m']}M parameters, {paper['gflops']} GFLOPs at 224, "
        f"{paper['top1_224']}% ImageNet-1K top-1 in the paper).\n\n"
        "Takes the `keras.applications` arguments; see `NextViT` for all of them.\n\n"
        "Example:\n\n"
        f">>> model = keras_nextvit.{build.__name__}(input_shape=(224, 224, 3))\n"
        f">>> model = keras_nextvit.{build.__name__}(weights='nextvit_{variant}.bd_in1k')"
        "  # downloads once\n"
    )
    return build


NextViTSmall = _variant_builder("small", "nextvit_small")
NextViTBase = _variant_builder("base", "nextvit_base")
NextViTLarge = _variant_builder("large", "nextvit_large")


def feature_extractor(model, name=None):
    """A model that returns the four stage outputs of ``model``.

    Outputs are channels-last maps at strides 4, 8, 16 and 32 with 96, 256,
    512 and 1024 channels: the raw output of each stage's last block (before
    the final BatchNorm). Weights are shared with ``model``.

    >>> features = keras_nextvit.feature_extractor(keras_nextvit.NextViTSmall())
    """
    outputs = [model.get_layer(n).output for n in stage_block_names(model)]
    return keras.Model(model.input, outputs, name=name or f"{model.name}_features")


def convert_checkpoint(source, output, variant=None, input_size=None):
    """Convert a PyTorch checkpoint to a Keras ``.weights.h5`` (or ``.keras``).

    Returns the Keras model the weights were loaded into (a builder: it
    builds the model the checkpoint describes, then loads it).
    """
    import os

    from .weights import CheckpointError, infer_variant, load_torch_weights, read_checkpoint

    state = read_checkpoint(source)
    found, classes = infer_variant(state)
    if variant is not None and variant != found:
        raise CheckpointError(f"{source} holds Next-ViT-{found[0].upper()}, not {variant!r}.")
    shape = (input_size, input_size, 3) if input_size else (None, None, 3)
    model = NextViT(
        depths=presets.VARIANTS[found]["depths"],
        include_top=classes is not None,
        classes=classes or 1000,
        input_shape=shape,
        name=f"nextvit_{found}",
    )
    load_torch_weights(model, state)
    output = os.fspath(output)
    if output.endswith(".keras"):
        model.save(output)
    elif output.endswith(".weights.h5"):
        model.save_weights(output)
    else:
        raise ValueError(f"Output must end in .weights.h5 or .keras, got {output!r}.")
    return model
