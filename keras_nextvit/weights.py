"""PyTorch checkpoints -> Keras variables, and the published presets.

A Next-ViT checkpoint comes in three namings (:mod:`keras_nextvit.naming`):
timm's and the upstream repository's for classifiers, mmsegmentation's for
the ADE20K segmenters. All are read from ``.pth`` (PyTorch, ``weights_only=True``),
``.safetensors`` (no torch needed), ``.npz`` or a mapping of name -> array,
renamed to timm's naming, checked tensor by tensor against the model, and
only then assigned: a checkpoint either loads whole or raises an error that
names what does not fit.

Layout changes happen here and nowhere else: conv ``[out, in/groups, kh, kw]``
-> ``[kh, kw, in/groups, out]``; linear ``[out, in]`` and 1x1 conv
``[out, in, 1, 1]`` -> Dense ``[in, out]``.
"""

import difflib
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping

import keras
import numpy as np

from . import presets
from .layers import EfficientMHSA, _Composite
from .naming import (
    MMSEG_BACKBONE,
    checkpoint_depths,
    internal_to_mmseg,
    is_mmdet_naming,
    is_mmseg_naming,
    is_official_naming,
    is_segmenter,
    mmseg_backbone_block_count,
    mmseg_head_kind,
    mmseg_to_internal,
    model_depths,
    official_block_count,
    official_to_timm,
    segmenter_module_order,
    segmenter_prefix,
    torch_prefix,
)

CACHE_ENV = "KERAS_NEXTVIT_CACHE"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


# --------------------------------------------------------------------------
# Walking the model in PyTorch state-dict order
# --------------------------------------------------------------------------

_BN_TENSORS = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)


def _walk(layer, prefix, linear):
    """Yield ``(torch_name, kind, variable)`` for one layer, recursively.

    ``kind`` is ``conv`` (k x k conv), ``conv1x1`` or ``linear`` (both are
    Keras Dense), ``vector`` (bias and BatchNorm tensors) or ``counter``
    (``num_batches_tracked``, which Keras does not keep).
    """
    if isinstance(layer, keras.layers.BatchNormalization):
        for torch_attr, keras_attr in _BN_TENSORS:
            yield f"{prefix}.{torch_attr}", "vector", getattr(layer, keras_attr)
        yield f"{prefix}.num_batches_tracked", "counter", None
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        yield f"{prefix}.weight", "deconv", layer.kernel
        if layer.use_bias:
            yield f"{prefix}.bias", "vector", layer.bias
    elif isinstance(layer, keras.layers.Conv2D):
        yield f"{prefix}.weight", "conv", layer.kernel
        if layer.use_bias:
            yield f"{prefix}.bias", "vector", layer.bias
    elif isinstance(layer, keras.layers.Dense):
        yield f"{prefix}.weight", "linear" if linear else "conv1x1", layer.kernel
        if layer.use_bias:
            yield f"{prefix}.bias", "vector", layer.bias
    elif isinstance(layer, _Composite):
        child_linear = isinstance(layer, EfficientMHSA) or getattr(layer, "TORCH_LINEAR", False)
        for attr, child in layer.torch_children():
            yield from _walk(child, f"{prefix}.{attr}", child_linear)


def torch_tensors(model):
    """Every tensor of the reference state dict for ``model``, in order:
    ``(torch_name, kind, keras_variable_or_None)``. Classifiers use timm's
    names; segmenters mmseg's and detectors mmdet's, with the backbone in
    timm's naming."""
    if is_detector(model):
        for prefix, layer in model.torch_parts():
            yield from _walk(layer, prefix, linear=False)
        return
    layers = model.layers
    prefix_of = torch_prefix
    if is_segmenter(model):
        prefix_of = segmenter_prefix
        layers = sorted(layers, key=lambda layer: segmenter_module_order(layer.name))
    for layer in layers:
        prefix = prefix_of(layer.name)
        yield from _walk(layer, prefix, linear=prefix == "head.fc")


def _torch_shape(kind, variable):
    shape = tuple(variable.shape)
    if kind == "conv":
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    if kind == "linear":
        return (shape[1], shape[0])
    if kind == "conv1x1":
        return (shape[1], shape[0], 1, 1)
    if kind == "deconv":
        kh, kw, cout, cin = shape
        return (cin, cout, kh, kw)
    return shape


def _loadable_tensors(model):
    """``torch_tensors`` without ``num_batches_tracked`` (Keras keeps none)."""
    return [(name, kind, var) for name, kind, var in torch_tensors(model) if kind != "counter"]


def torch_state_dict_spec(model):
    """``[(name, shape), ...]`` of the reference PyTorch state dict that
    matches ``model``, in state-dict order: timm's naming for classifiers,
    mmseg's for segmenters (without the tensors a segmenter never uses)."""
    mm = is_segmenter(model) or is_detector(model)
    rename = (lambda n: internal_to_mmseg(n, depths)) if mm else (lambda n: n)
    depths = detector_depths(model) if is_detector(model) else model_depths(model)
    return [
        (rename(name), () if kind == "counter" else _torch_shape(kind, var))
        for name, kind, var in torch_tensors(model)
    ]


def _to_keras(name, kind, array, variable):
    """Convert one PyTorch tensor to the variable's layout, or raise."""
    array = np.asarray(array)
    expected = _torch_shape(kind, variable)
    shape = tuple(array.shape)
    fits = shape == expected
    if kind == "conv1x1" and shape == expected[:2]:
        fits = True  # a Linear-shaped 1x1 conv is the same matrix
    if kind == "linear" and shape == expected + (1, 1):
        fits = True
    if not fits:
        raise CheckpointError(
            f"Tensor {name!r}: checkpoint shape {shape} does not fit the model, which "
            f"expects {expected} (PyTorch layout) for variable {variable.path!r}."
        )
    if kind in ("conv", "deconv"):
        array = array.transpose(2, 3, 1, 0)
    elif kind in ("conv1x1", "linear"):
        array = array.reshape(array.shape[0], array.shape[1]).T
    return np.ascontiguousarray(array, dtype=variable.dtype)


# --------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------


def _unwrap(state, source):
    for key in ("state_dict", "model", "model_state", "module"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: not a checkpoint (found {type(state).__name__}).")
    out = OrderedDict()
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: not a checkpoint (key {key!r} is not a name).")
        key = key[len("module."):] if key.startswith("module.") else key
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        try:
            out[key] = np.asarray(value)
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(f"{source}: entry {key!r} is not an array ({error}).") from None
        if out[key].dtype == object:
            raise CheckpointError(f"{source}: entry {key!r} is not a numeric array.")
    if not out:
        raise CheckpointError(f"{source}: the checkpoint holds no tensors.")
    return out


def _unreadable(path, kind, error):
    return CheckpointError(
        f"{path}: could not be read as a {kind} checkpoint; the file is truncated, corrupt "
        f"or not a checkpoint ({type(error).__name__}: {error})."
    )


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {path} needs PyTorch (pip install torch); a timm .safetensors "
            "checkpoint loads without it."
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise _unreadable(path, "PyTorch", error) from None


def _read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError(
            f"Reading {path} needs the safetensors package (pip install safetensors)."
        ) from None
    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001
        raise _unreadable(path, ".safetensors", error) from None


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as error:  # noqa: BLE001
        raise _unreadable(path, ".npz", error) from None


def read_checkpoint(source):
    """Read ``source`` (path or mapping) into an ordered ``{name: ndarray}``."""
    if isinstance(source, Mapping):
        return _unwrap(source, "mapping")
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    lower = path.lower()
    if lower.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif lower.endswith(".npz"):
        state = _read_npz(path)
    elif lower.endswith((".pth", ".pt", ".bin", ".tar", ".ckpt")) or head[:2] == b"PK":
        state = _read_torch(path)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint format; expected .pth/.pt (PyTorch), "
            ".safetensors, .npz, or .weights.h5 (Keras)."
        )
    return _unwrap(state, path)


def _variant_of(depths):
    for name, config in presets.VARIANTS.items():
        if tuple(config["depths"]) == tuple(depths):
            return f"Next-ViT-{name[0].upper()} {tuple(depths)}"
    return f"depths {tuple(depths)}"


def _match_variant(state):
    """``(variant or None, what was found)`` for a state dict in either naming:
    the upstream naming tells only the total number of blocks."""
    if is_official_naming(state):
        total = official_block_count(state)
        matches = [n for n, c in presets.VARIANTS.items() if sum(c["depths"]) == total]
        found = f"{total} blocks in all"
    else:
        depths = checkpoint_depths(state)
        matches = [n for n, c in presets.VARIANTS.items() if tuple(c["depths"]) == depths]
        found = f"depths {depths}"
    return (matches[0] if matches else None), found


def _describe(state):
    """What a checkpoint looks like, for error messages."""
    if not is_official_naming(state):
        return _variant_of(checkpoint_depths(state))
    variant, found = _match_variant(state)
    return found + (f" (Next-ViT-{variant[0].upper()})" if variant else "")


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _summarise(names, limit=6):
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _check_names(expected_names, state, ignore, what_model, what_checkpoint):
    """Raise a CheckpointError listing what is missing and unexpected."""
    missing = sorted(n for n in expected_names if n not in state)
    unexpected = [k for k in state if k not in expected_names and not ignore(k)]
    if missing or unexpected:
        message = [f"Checkpoint does not fit {what_model}; the checkpoint looks like {what_checkpoint}."]
        if missing:
            message.append(f"Missing from the checkpoint: {_summarise(missing)}.")
        if unexpected:
            message.append(f"Not in the model: {_summarise(unexpected)}.")
        raise CheckpointError(" ".join(message))


def _assign_all(expected, state, hint=None):
    """Convert every tensor (checking shapes), then assign them all: a
    checkpoint either loads whole or not at all. ``hint(name, array)`` may
    add advice to a shape error."""
    values = []
    for name, kind, variable in expected:
        try:
            values.append((variable, _to_keras(name, kind, state[name], variable)))
        except CheckpointError as error:
            extra = hint(name, state[name]) if hint else None
            if extra:
                raise CheckpointError(f"{error} {extra}") from None
            raise
    for variable, value in values:
        variable.assign(value)


def _without_counters(state):
    return OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def load_torch_weights(model, source):
    """Load a PyTorch Next-ViT checkpoint into ``model``.

    Args:
        model: a model from :func:`keras_nextvit.NextViT` (any head) or a
            segmenter from :func:`keras_nextvit.NextViTSegmenter`.
        source: path to a ``.pth``/``.pt``, ``.safetensors`` or ``.npz``
            file, or a mapping of tensor name -> array: timm's or the
            upstream repository's naming for classifiers, mmsegmentation's
            for segmenters (``state_dict`` inside a ``.pth`` is found).

    A headless model (``include_top=False``) ignores the checkpoint's
    classifier; a model with a head needs one of the same width. A segmenter
    ignores the tensors it never uses (``backbone.proj_head.*``,
    ``backbone.extra_norm_list.3.*``, and ``auxiliary_head.*`` when built
    without it). Any other missing, unexpected or mis-shaped tensor raises
    :class:`CheckpointError` naming it, and then nothing is assigned.

    Returns:
        ``model``.
    """
    raw = read_checkpoint(source)
    if is_detector(model):
        return _load_detector(model, raw)
    if is_segmenter(model):
        return _load_segmenter(model, raw)
    depths = model_depths(model)
    if is_mmdet_naming(raw):
        raise CheckpointError(
            f"The checkpoint is a detection model ({_describe_mmdet(raw)}), and model "
            f"{model.name!r} is a classifier. Build keras_nextvit.NextViTMaskRCNN(weights=...) "
            "to use it, or pass it as backbone_weights= to start a model from its backbone."
        )
    if is_mmseg_naming(raw):
        raise CheckpointError(
            f"The checkpoint is a segmentation model ({_describe_mmseg(raw)}), and model "
            f"{model.name!r} is a classifier. Build keras_nextvit.NextViTSegmenter(weights=...) "
            "to use it, or pass it as backbone_weights= to start a segmenter from its backbone."
        )
    state = official_to_timm(raw, depths) if is_official_naming(raw) else raw
    state = _without_counters(state)
    expected = _loadable_tensors(model)
    expected_names = {n for n, _, _ in expected}
    has_head = any(n.startswith("head.") for n in expected_names)
    _check_names(
        expected_names,
        state,
        ignore=lambda k: not has_head and k.startswith("head."),
        what_model=f"model {model.name!r} ({_variant_of(depths)})",
        what_checkpoint=_describe(raw),
    )

    def hint(name, array):
        if name.startswith("head.fc.weight"):
            return (
                f"The checkpoint's classifier has {np.shape(array)[0]} classes: build the model "
                "with that many `classes`, or with include_top=False."
            )
        return None

    _assign_all(expected, state, hint)
    return model


# Tensors of a published segmentation checkpoint that the segmenter never
# uses: the ImageNet classifier and the norm after stage 4 (stage 4 goes
# through ``backbone.norm`` instead).
UNUSED_SEGMENTATION_TENSORS = ("backbone.proj_head.", "backbone.extra_norm_list.3.")

HEAD_TITLES = {"fpn": "Semantic FPN", "upernet": "UperNet"}


def _describe_mmseg(state):
    """What a segmentation checkpoint looks like: variant, head, classes."""
    total = mmseg_backbone_block_count(state)
    variants = [n for n, c in presets.VARIANTS.items() if sum(c["depths"]) == total]
    variant = f"Next-ViT-{variants[0][0].upper()}" if variants else f"{total} backbone blocks"
    head = HEAD_TITLES.get(mmseg_head_kind(state), "an unknown head")
    seg = state.get("decode_head.conv_seg.weight")
    classes = "" if seg is None else f", {np.shape(seg)[0]} classes"
    return f"{variant} + {head}{classes}"


def _describe_segmenter(model):
    kind = "upernet" if "UPerHead" == type(model.get_layer("decode_head")).__name__ else "fpn"
    depths = model_depths(model)
    classes = model.get_layer("decode_head").num_classes
    return f"{_variant_of(depths)} + {HEAD_TITLES[kind]}, {classes} classes"


def _load_segmenter(model, raw):
    depths = model_depths(model)
    if is_mmdet_naming(raw):
        raise CheckpointError(
            f"The checkpoint is a detection model ({_describe_mmdet(raw)}), and model "
            f"{model.name!r} is a segmenter. Build keras_nextvit.NextViTMaskRCNN(weights=...) to "
            "use it, or pass it as backbone_weights= to start the segmenter from its backbone."
        )
    if not is_mmseg_naming(raw):
        raise CheckpointError(
            f"The checkpoint is an ImageNet classification checkpoint ({_describe(raw)}), not "
            f"a segmentation one, and model {model.name!r} is a segmenter. Pass it as "
            "backbone_weights= (NextViTSegmenter(backbone_weights=...) or "
            "keras_nextvit.load_backbone_weights) to start the backbone from it."
        )
    state = _without_counters(mmseg_to_internal(raw, depths))
    expected = _loadable_tensors(model)
    expected_names = {n for n, _, _ in expected}
    has_auxiliary = any(n.startswith("auxiliary_head.") for n in expected_names)

    unused = UNUSED_SEGMENTATION_TENSORS + ("backbone.head.fc.",)  # proj_head.0, renamed

    def ignore(key):
        return key.startswith(unused) or (
            not has_auxiliary and key.startswith("auxiliary_head.")
        )

    _check_names(
        expected_names,
        state,
        ignore,
        what_model=f"segmenter {model.name!r} ({_describe_segmenter(model)})",
        what_checkpoint=_describe_mmseg(raw),
    )

    def hint(name, array):
        if name.endswith("conv_seg.weight"):
            return (
                f"The checkpoint predicts {np.shape(array)[0]} classes: build the segmenter with "
                "that num_classes (or load its backbone with backbone_weights= and train a new head)."
            )
        return None

    _assign_all(expected, state, hint)
    return model


# Tensors of a published detection checkpoint that the detector never uses:
# the classifier's final norm and the ImageNet classifier (``proj_head.0``,
# named ``head.fc`` once the backbone is in timm's naming).
UNUSED_DETECTION_TENSORS = ("backbone.norm.", "backbone.head.fc.")


def is_detector(model):
    return hasattr(model, "torch_parts") and hasattr(model, "rpn_head")


def detector_depths(model):
    return tuple(model.depths)


def _describe_mmdet(state):
    """What a detection checkpoint looks like: variant and classes."""
    total = mmseg_backbone_block_count(state)
    variants = [n for n, c in presets.VARIANTS.items() if sum(c["depths"]) == total]
    variant = f"Next-ViT-{variants[0][0].upper()}" if variants else f"{total} backbone blocks"
    cls = state.get("roi_head.bbox_head.fc_cls.weight")
    classes = "" if cls is None else f", {np.shape(cls)[0] - 1} classes"
    return f"{variant} + Mask R-CNN{classes}"


def _load_detector(model, raw):
    depths = detector_depths(model)
    what_model = f"detector {model.name!r} ({_variant_of(depths)}, {model.num_classes} classes)"
    pass_backbone = (
        "Pass it as backbone_weights= (NextViTMaskRCNN(backbone_weights=...)) to start the "
        "detector's backbone from it."
    )
    if not is_mmseg_naming(raw):
        raise CheckpointError(
            f"The checkpoint is an ImageNet classification checkpoint ({_describe(raw)}), not a "
            f"detection one, and model {model.name!r} is a detector. {pass_backbone}"
        )
    if not is_mmdet_naming(raw):
        raise CheckpointError(
            f"The checkpoint is a segmentation model ({_describe_mmseg(raw)}), not a detection "
            f"one, and model {model.name!r} is a detector. Build "
            f"keras_nextvit.NextViTSegmenter(weights=...) to use it. {pass_backbone}"
        )
    if mmseg_backbone_block_count(raw) != sum(depths):
        raise CheckpointError(
            f"The checkpoint is {_describe_mmdet(raw)}; {what_model} has another backbone. Build "
            "keras_nextvit.NextViTMaskRCNN with the checkpoint's variant."
        )
    state = _without_counters(mmseg_to_internal(raw, depths))
    expected = _loadable_tensors(model)
    expected_names = {n for n, _, _ in expected}
    _check_names(
        expected_names,
        state,
        ignore=lambda key: key.startswith(UNUSED_DETECTION_TENSORS),
        what_model=what_model,
        what_checkpoint=_describe_mmdet(raw),
    )

    def hint(name, array):
        if name.startswith("roi_head.") and name.endswith(("fc_cls.weight", "fc_reg.weight", "conv_logits.weight")):
            return (
                f"The checkpoint is {_describe_mmdet(raw)}: build the detector with that num_classes "
                "(or start from its backbone with backbone_weights= and train new heads)."
            )
        return None

    _assign_all(expected, state, hint)
    return model


def load_backbone_weights(model, source, cache=None):
    """Load the backbone of ``model`` (a classifier or a segmenter) from an
    ImageNet checkpoint: a preset name, a classification checkpoint in timm's
    or the upstream naming, or a segmentation checkpoint (its backbone).

    The segmentation backbone's extra norms (``extra_norm_list.0-2``) are not
    in classification checkpoints; they keep their fresh initialisation, as
    upstream training starts. Everything else of the backbone must be there.

    Returns:
        ``model``.
    """
    if is_preset(source):
        source = download_preset(source, cache)
    raw = read_checkpoint(source)
    depths = model_depths(model)
    segmenter = is_segmenter(model)
    prefix_of = segmenter_prefix if segmenter else torch_prefix
    strip = MMSEG_BACKBONE if segmenter else ""
    if is_mmseg_naming(raw):
        inner = mmseg_to_internal(raw, depths)
        state = OrderedDict(
            (k[len(MMSEG_BACKBONE):], v) for k, v in inner.items() if k.startswith(MMSEG_BACKBONE)
        )
        found = _describe_mmdet(raw) if is_mmdet_naming(raw) else _describe_mmseg(raw)
    else:
        state = official_to_timm(raw, depths) if is_official_naming(raw) else raw
        found = _describe(raw)
    state = _without_counters(state)
    expected = []
    has_norm = any(layer.name == "norm" for layer in model.layers)
    unused = ("head.", "extra_norm_list.", "proj_head.") + (() if has_norm else ("norm.",))
    for layer in model.layers:
        name = layer.name
        if not (name.startswith(("stem_", "stages_")) or name == "norm"):
            continue
        for tensor, kind, variable in _walk(layer, prefix_of(name), linear=False):
            if kind != "counter":
                expected.append((tensor[len(strip):], kind, variable))
    _check_names(
        {n for n, _, _ in expected},
        state,
        ignore=lambda k: k.startswith(unused),
        what_model=f"the backbone of {model.name!r} ({_variant_of(depths)})",
        what_checkpoint=found,
    )
    _assign_all(expected, state)
    return model


# --------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------


def is_preset(weights):
    return isinstance(weights, str) and weights in presets.PRESETS


def get_preset(name):
    """The data of a published checkpoint (variant, hub id, size, crop...)."""
    if name in presets.PRESETS:
        return presets.PRESETS[name]
    close = difflib.get_close_matches(str(name), presets.PRESETS, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown preset {name!r}.{hint} Known presets: {', '.join(presets.PRESETS)}. "
        "`weights` also takes a path to a .weights.h5, .pth, .safetensors or .npz file."
    )


def cache_dir(cache=None):
    """Where presets are kept: ``cache``, else ``$KERAS_NEXTVIT_CACHE``,
    else ``~/.keras/keras_nextvit``."""
    if cache is not None:
        return os.fspath(cache)
    return os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".keras", "keras_nextvit"
    )


def preset_path(name, cache=None):
    """Where preset ``name`` lives in the cache (whether or not it is there)."""
    get_preset(name)
    return os.path.join(cache_dir(cache), f"{name}.safetensors")


def download_preset(name, cache=None, download=True):
    """Path of preset ``name``'s checkpoint, downloading it once if needed.

    With ``download=False`` a missing file is an error instead of a download.
    """
    preset = get_preset(name)
    path = preset_path(name, cache)
    if os.path.isfile(path):
        return path
    url = presets.HF_HUB_URL.format(repo=preset["hf_hub_id"], filename=preset["filename"])
    if not download:
        raise FileNotFoundError(
            f"Preset {name!r} is not in the cache ({path}). Download it from {url} to "
            "that path, or allow downloads."
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return keras.utils.get_file(
        fname=os.path.basename(path), origin=url, cache_dir=os.path.dirname(path), cache_subdir=""
    )


def load_weights(model, weights, cache=None):
    """Load ``weights`` (preset name or file path) into ``model``."""
    if is_preset(weights):
        return load_torch_weights(model, download_preset(weights, cache))
    if isinstance(weights, Mapping):
        return load_torch_weights(model, weights)
    path = os.fspath(weights)
    if not os.path.exists(path):
        checkpoint_suffixes = (".h5", ".pth", ".pt", ".bin", ".safetensors", ".npz", ".ckpt", ".tar")
        if os.sep not in path and not path.lower().endswith(checkpoint_suffixes):
            get_preset(path)  # not a file name: raises the unknown-preset error
        raise FileNotFoundError(f"Weights file not found: {path}")
    return load_checkpoint(model, path)


def load_checkpoint(model, source):
    """Load a checkpoint file or mapping into ``model``: a Keras
    ``.weights.h5`` through Keras (:func:`load_keras_weights`), anything
    else by name (:func:`load_torch_weights`). What the classifier, the
    segmenters and the detector do with ``weights=``."""
    if not isinstance(source, Mapping) and os.fspath(source).endswith(".weights.h5"):
        return load_keras_weights(model, os.fspath(source))
    return load_torch_weights(model, source)


def load_keras_weights(model, path):
    """``model.load_weights(path)``; a file that does not fit is a
    :class:`CheckpointError` naming the first variable whose shape differs
    and both shapes (Keras' own error prints the values after a warning
    per part it skipped)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    try:
        with warnings.catch_warnings():  # Keras warns of each part it skips, then raises
            warnings.simplefilter("ignore", UserWarning)
            model.load_weights(path)
    except ValueError as error:
        raise CheckpointError(_keras_mismatch(path, model, error)) from None
    return model


def _keras_mismatch(path, model, error):
    """Keras' error for a ``.weights.h5`` that does not fit ``model``, said
    in one line: the first variable whose shape differs, and both shapes."""
    text = str(error)
    found = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))"
                      r".*?Variable path=([^,\s]+)", text, re.S)
    if found:
        wanted, got, variable = found.groups()
        return (f"{path} does not fit {model.name!r}: it holds {variable} with shape {got}, the model's is "
                f"{wanted} (a checkpoint of another variant or number of classes?).")
    return f"{path} does not fit {model.name!r}: {text.splitlines()[0] if text else type(error).__name__}"


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def infer_variant(state):
    """``(variant, num_classes)`` of a checkpoint (either naming)."""
    variant, found = _match_variant(state)
    if variant is None:
        raise CheckpointError(f"Checkpoint matches no Next-ViT variant ({found}).")
    head = state.get("head.fc.weight", state.get("proj_head.0.weight"))
    return variant, (None if head is None else int(np.shape(head)[0]))
