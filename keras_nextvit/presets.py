"""Data only: the variants of the paper and the published checkpoints.

Nothing here computes; :mod:`keras_nextvit.model` builds from ``VARIANTS``
and :mod:`keras_nextvit.weights` resolves and downloads ``PRESETS``.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Architecture of each variant (Li et al., 2022, Table 9; drop path as the
# upstream training recipe).
VARIANTS = {
    "small": {"depths": (3, 4, 10, 3), "drop_path_rate": 0.1},
    "base": {"depths": (3, 4, 20, 3), "drop_path_rate": 0.2},
    "large": {"depths": (3, 4, 30, 3), "drop_path_rate": 0.2},
}

# What the paper reports, to compare our counts against.
PAPER = {
    "small": {"params_m": 31.7, "gflops": 5.8, "top1_224": 82.5, "top1_384": 83.6},
    "base": {"params_m": 44.8, "gflops": 8.3, "top1_224": 83.2, "top1_384": 84.3},
    "large": {"params_m": 57.8, "gflops": 10.8, "top1_224": 83.6, "top1_384": 84.7},
}

# The configuration every stage shares.
STEM_CHANNELS = (64, 32, 64)
STAGE_STRIDES = (1, 2, 2, 2)
SR_RATIOS = (8, 4, 2, 1)
HEAD_DIM = 32
MIX_BLOCK_RATIO = 0.75
MIN_INPUT_SIZE = 32

HF_HUB_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"


def _preset(variant, tag, dataset, size):
    return {
        "variant": variant,
        "hf_hub_id": f"timm/nextvit_{variant}.{tag}",
        "filename": "model.safetensors",
        "dataset": dataset,
        "num_classes": 1000,
        "input_size": size,
        "crop_pct": 0.95 if size == 224 else 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }


PRESETS = {}
for _variant in VARIANTS:
    for _tag, _dataset in (
        ("bd_in1k", "ImageNet-1K"),
        ("bd_ssld_6m_in1k", "ImageNet-1K + 6M SSLD distillation"),
    ):
        for _size in (224, 384):
            _suffix = "" if _size == 224 else "_384"
            PRESETS[f"nextvit_{_variant}.{_tag}{_suffix}"] = _preset(
                _variant, _tag + _suffix, _dataset, _size
            )
del _variant, _tag, _dataset, _size, _suffix
