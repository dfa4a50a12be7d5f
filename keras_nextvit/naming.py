"""Names: Keras layer names <-> the three PyTorch checkpoint namings.

Next-ViT's tensors go by three names, all of which the loader reads:

* **timm's**: ``stages.{s}.blocks.{b}.…``, ``mlp.fc1``/``fc2``, ``head.fc``;
* **the upstream repository's**: ``features.{i}.…`` (blocks numbered across
  stages), ``mlp.conv1``/``conv2``, ``proj_head.0``;
* **mmsegmentation's** (the published ADE20K segmenters): the upstream
  backbone under ``backbone.`` (plus ``backbone.extra_norm_list.{i}``), then
  ``neck.…``, ``decode_head.…`` and ``auxiliary_head.…`` with mmseg's module
  names (``lateral_convs.0.conv``, ``scale_heads.3.4.bn``, ``psp_modules.2.1``);
* **mmdetection's** (the published COCO Mask R-CNNs): the same backbone and
  ``neck.…``, then ``rpn_head.…`` and ``roi_head.{bbox,mask}_head.…``.

Keras names cannot hold dots on every backend, so the reference's ``stem.0``
is the layer ``stem_0`` here. Internally the loader compares checkpoints in
timm's naming, under ``backbone.`` for segmenters. This module only renames:
it imports nothing from the builders or the loader.
"""

import re
from collections import OrderedDict

import numpy as np

# --------------------------------------------------------------------------
# Keras layer names
# --------------------------------------------------------------------------

SEGMENTER_PARTS = ("neck", "decode_head", "auxiliary_head")
_EXTRA_NORM = re.compile(r"^extra_norm_(\d+)$")


def block_name(stage, block):
    return f"stages_{stage}_blocks_{block}"


def extra_norm_name(stage):
    """Keras name of the segmentation backbone's norm after ``stage`` (0-2)."""
    return f"extra_norm_{stage}"


def torch_prefix(layer_name):
    """The timm module path of a top-level layer: ``stages_2_blocks_4``
    -> ``stages.2.blocks.4``, ``head_fc`` -> ``head.fc``."""
    return layer_name.replace("_", ".")


def is_segmenter(model):
    return any(layer.name == "decode_head" for layer in model.layers)


def segmenter_prefix(layer_name):
    """The (internal, timm-backbone) module path of a segmenter's top-level
    layer: ``stem_0`` -> ``backbone.stem.0``, ``extra_norm_1`` ->
    ``backbone.extra_norm_list.1``, ``decode_head`` -> ``decode_head``."""
    if layer_name in SEGMENTER_PARTS:
        return layer_name
    match = _EXTRA_NORM.match(layer_name)
    if match:
        return f"backbone.extra_norm_list.{match[1]}"
    return "backbone." + torch_prefix(layer_name)


def segmenter_module_order(layer_name):
    """Rank of a segmenter's top-level layer in mmseg's state-dict order:
    the extra norms come after all blocks there (``extra_norm_list`` is
    registered after ``features``), before ``norm`` and the heads."""
    order = ("stem_", "stages_", "extra_norm_", "norm", "neck", "decode_head", "auxiliary_head")
    for rank, start in enumerate(order):
        if layer_name.startswith(start):
            return rank
    return -1


def model_depths(model):
    """Blocks per stage of a Next-ViT Keras model, read from its layer names."""
    counts = [0, 0, 0, 0]
    for layer in model.layers:
        parts = layer.name.split("_")
        if len(parts) == 4 and parts[0] == "stages" and parts[2] == "blocks":
            counts[int(parts[1])] += 1
    return tuple(counts)


def stage_block_names(model):
    """Names of the last block of each stage of a Next-ViT model."""
    depths = model_depths(model)
    if min(depths) < 1:
        raise ValueError(f"Model {model.name!r} does not look like a Next-ViT (no four stages).")
    return [block_name(s, depths[s] - 1) for s in range(4)]


# --------------------------------------------------------------------------
# Checkpoint namings
# --------------------------------------------------------------------------

_TIMM_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$")
_OFFICIAL_BLOCK = re.compile(r"^features\.(\d+)\.(.*)$")
MMSEG_BACKBONE = "backbone."


def checkpoint_depths(state):
    """Blocks per stage found in a timm-named state dict."""
    blocks = {}
    for key in state:
        match = _TIMM_BLOCK.match(key)
        if match:
            s, b = int(match[1]), int(match[2])
            blocks[s] = max(blocks.get(s, -1), b)
    return tuple(blocks.get(s, -1) + 1 for s in range(4))


def is_official_naming(state):
    return any(key.startswith(("features.", "proj_head.")) for key in state)


def is_mmseg_naming(state):
    return any(key.startswith((MMSEG_BACKBONE,) + tuple(p + "." for p in SEGMENTER_PARTS)) for key in state)


def is_mmdet_naming(state):
    """A detection checkpoint (mmdet's Mask R-CNN): RPN and RoI heads."""
    return any(key.startswith(("rpn_head.", "roi_head.")) for key in state)


def official_block_count(state):
    return len({int(m[1]) for m in map(_OFFICIAL_BLOCK.match, state) if m})


def _official_name_to_timm(key, starts, num_stages):
    match = _OFFICIAL_BLOCK.match(key)
    if match:
        index, rest = int(match[1]), match[2]
        stage = int(np.searchsorted(starts, index, side="right")) - 1
        new = key
        if stage < num_stages:
            new = f"stages.{stage}.blocks.{index - starts[stage]}.{rest}"
        return new.replace(".mlp.conv1.", ".mlp.fc1.").replace(".mlp.conv2.", ".mlp.fc2.")
    if key.startswith("proj_head.0."):
        return "head.fc." + key[len("proj_head.0."):]
    return key


def official_to_timm(state, depths):
    """Rename an upstream-repository state dict to timm's naming.

    ``features.{i}`` is the i-th block across all stages; ``depths`` says
    where stages start. Blocks beyond ``sum(depths)`` keep a name that no
    model has, so the loader reports them.
    """
    starts = np.cumsum((0,) + tuple(depths))
    return OrderedDict(
        (_official_name_to_timm(key, starts, len(depths)), value) for key, value in state.items()
    )


def timm_to_official(name, depths):
    """One timm-named tensor name in the upstream repository's naming."""
    match = _TIMM_BLOCK.match(name)
    if match:
        stage, block, rest = int(match[1]), int(match[2]), match[3]
        index = int(sum(depths[:stage])) + block
        rest = rest.replace("mlp.fc1.", "mlp.conv1.").replace("mlp.fc2.", "mlp.conv2.")
        return f"features.{index}.{rest}"
    if name.startswith("head.fc."):
        return "proj_head.0." + name[len("head.fc."):]
    return name


def mmseg_to_internal(state, depths):
    """An mmseg segmenter state dict with its backbone in timm's naming
    (``backbone.features.11.…`` -> ``backbone.stages.2.blocks.4.…``)."""
    starts = np.cumsum((0,) + tuple(depths))
    out = OrderedDict()
    for key, value in state.items():
        if key.startswith(MMSEG_BACKBONE):
            inner = key[len(MMSEG_BACKBONE):]
            key = MMSEG_BACKBONE + _official_name_to_timm(inner, starts, len(depths))
        out[key] = value
    return out


def internal_to_mmseg(name, depths):
    """One internal segmenter tensor name in mmseg's naming."""
    if name.startswith(MMSEG_BACKBONE):
        return MMSEG_BACKBONE + timm_to_official(name[len(MMSEG_BACKBONE):], depths)
    return name


def mmseg_backbone_block_count(state):
    return official_block_count(
        {k[len(MMSEG_BACKBONE):]: None for k in state if k.startswith(MMSEG_BACKBONE)}
    )


def mmseg_head_kind(state):
    """``"fpn"``, ``"upernet"`` or ``None``: which decode head an mmseg
    state dict holds."""
    if any(k.startswith("decode_head.psp_modules.") for k in state):
        return "upernet"
    if any(k.startswith(("decode_head.scale_heads.", "neck.lateral_convs.")) for k in state):
        return "fpn"
    return None
