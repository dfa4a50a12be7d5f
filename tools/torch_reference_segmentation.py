"""An independent, eager PyTorch reference of the Next-ViT semantic segmenters.

Semantic FPN and UperNet as the upstream Next-ViT repository trains them for
ADE20K with mmsegmentation 0.x (``segmentation/configs/*_nextvit_*.py``),
written from the description in ``tests/data/segmentation/README.md`` (not
copied from mmsegmentation). Its ``state_dict()`` has exactly the tensor
names, shapes and order of mmseg's checkpoints (see
``tests/data/segmentation/seg_{fpn,upernet}_{small,base,large}.keys.json``),
so a published segmentation checkpoint's ``state_dict`` loads into it and the
project's synthetic weights give the same values as in the golden data.

The backbone is the classification network of ``tools/torch_reference.py``
(loaded by file path, not copied), rearranged into the upstream repository's
naming (``features.{k}`` numbered across stages, ``mlp.conv1``/``mlp.conv2``)
with the segmentation extras: ``extra_norm_list.{0..3}`` and ``proj_head.0``.

Usage::

    model = build_segmenter("small", "fpn")     # eval mode, random init
    load_synthetic(model, seed=0)               # the project's weights
    logits = model(images_nchw)                 # (N, 150, H, W)
    out = model.forward_all(images_nchw)        # features, decode_logits,
                                                # aux_logits, logits

Eager latency (the "PyTorch reference" of the segmentation benchmark)::

    python tools/torch_reference_segmentation.py --variant small --head fpn --size 512

Only ``torch`` and ``numpy`` are imported, never Keras/TensorFlow.
"""

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_HERE = Path(__file__).resolve().parent


def _backbone_reference():
    """``tools/torch_reference.py`` (the classification reference), by path."""
    name = "_nextvit_torch_reference_backbone"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _HERE / "torch_reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ref = _backbone_reference()

VARIANTS = tuple(ref.VARIANTS)
HEADS = ("fpn", "upernet")
NUM_CLASSES = 150  # ADE20K
BN_EPS = 1e-5
ALIGN_CORNERS = False

# Semantic FPN (fpn_512_nextvit_*_80k.py)
FPN_CHANNELS = 256
FPN_HEAD_CHANNELS = 128
FEATURE_STRIDES = (4, 8, 16, 32)
# UperNet (upernet_512_nextvit_*_160k.py)
UPER_CHANNELS = 512
POOL_SCALES = (1, 2, 3, 6)
AUX_IN_INDEX = 2
AUX_CHANNELS = 256
DROPOUT = 0.1


def resize(x, size, mode="bilinear"):
    """mmseg's ``resize``: ``F.interpolate`` to an explicit ``size``."""
    size = tuple(int(s) for s in size)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=ALIGN_CORNERS)


# ---------------------------------------------------------------------------
# Backbone: Next-ViT with the segmentation extras, upstream naming
# ---------------------------------------------------------------------------


class UpstreamMlp(nn.Module):
    """The reference's ``Mlp`` (1x1 conv -> ReLU -> 1x1 conv) under the
    upstream repository's names ``conv1``/``conv2`` (timm: ``fc1``/``fc2``).
    Reuses the two convolutions it is given."""

    def __init__(self, conv1, conv2):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class SegBackbone(nn.Module):
    """Next-ViT as the upstream ``segmentation/nextvit.py`` builds it with
    ``with_extra_norm=True``.

    After the last block of stage i (i = 1, 2, 3) the map goes through
    ``extra_norm_list[i-1]`` and the normalised map both is output i and feeds
    stage i+1; after stage 4 it goes through ``norm``. ``extra_norm_list[3]``
    and ``proj_head`` exist in the checkpoint but are never used.
    """

    def __init__(self, variant):
        super().__init__()
        net = ref.build(variant)  # the classification reference (timm names)
        self.stem = net.stem
        blocks = []
        self.stage_out_idx = []
        stage_channels = []
        for stage, plan in zip(net.stages, ref.stage_plan(ref.VARIANTS[variant])):
            for block in stage.blocks:
                # Same module, same position in the state dict: only renamed.
                block.mlp = UpstreamMlp(block.mlp.fc1, block.mlp.fc2)
                blocks.append(block)
            self.stage_out_idx.append(len(blocks) - 1)
            stage_channels.append(plan[-1][1])
        self.features = nn.Sequential(*blocks)
        self.extra_norm_list = nn.ModuleList(
            nn.BatchNorm2d(c, eps=BN_EPS) for c in stage_channels
        )
        self.norm = net.norm
        self.proj_head = nn.Sequential(net.head.fc)
        self.out_channels = tuple(stage_channels)

    def forward(self, x):
        """The four normalised stage outputs (NCHW; strides 4, 8, 16, 32)."""
        x = self.stem(x)
        outputs = []
        last = len(self.features) - 1
        for idx, block in enumerate(self.features):
            x = block(x)
            if idx in self.stage_out_idx:
                if idx == last:
                    x = self.norm(x)
                else:
                    x = self.extra_norm_list[self.stage_out_idx.index(idx)](x)
                outputs.append(x)
        return outputs


# ---------------------------------------------------------------------------
# mmseg building blocks
# ---------------------------------------------------------------------------


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` (order conv -> norm -> act): children ``conv``
    and ``bn``. The conv has a bias only without a norm (``bias="auto"``)."""

    def __init__(self, in_chs, out_chs, kernel_size, padding=0, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=padding, bias=not norm)
        self.bn = nn.BatchNorm2d(out_chs, eps=BN_EPS) if norm else None
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act:
            x = F.relu(x)
        return x


class Upsample2x(nn.Module):
    """mmseg's ``Upsample(scale_factor=2, mode="bilinear")``: it resizes to
    the explicit size ``(int(2H), int(2W))``, not by a scale factor."""

    def forward(self, x):
        return resize(x, [int(t * 2) for t in x.shape[-2:]])


class DecodeHead(nn.Module):
    """mmseg's ``BaseDecodeHead``: ``conv_seg`` (registered first, hence first
    in the state dict) and ``Dropout2d`` before it."""

    def __init__(self, channels, num_classes):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(DROPOUT)

    def cls_seg(self, x):
        return self.conv_seg(self.dropout(x))


class FPN(nn.Module):
    """mmseg's ``FPN`` neck: 1x1 lateral convs (bias), nearest top-down sum to
    the finer level's size, 3x3 output convs (bias); no norm, no activation."""

    def __init__(self, in_channels, out_channels=FPN_CHANNELS):
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, norm=False, act=False) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, norm=False, act=False)
            for _ in in_channels
        )

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], laterals[i - 1].shape[2:], mode="nearest"
            )
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


class FPNHead(DecodeHead):
    """mmseg's ``FPNHead``: per level ``max(1, log2(stride) - log2(4))``
    3x3 ConvModules, each followed on the coarser levels by a 2x bilinear
    upsample; the levels summed after a bilinear resize to level 1."""

    def __init__(self, in_channels, channels=FPN_HEAD_CHANNELS, num_classes=NUM_CLASSES,
                 feature_strides=FEATURE_STRIDES):
        super().__init__(channels, num_classes)
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(feature_strides):
            length = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers = []
            for k in range(length):
                layers.append(
                    ConvModule(in_channels[i] if k == 0 else channels, channels, 3, padding=1)
                )
                if stride != feature_strides[0]:
                    layers.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, inputs):
        output = self.scale_heads[0](inputs[0])
        for i in range(1, len(self.scale_heads)):
            output = output + resize(self.scale_heads[i](inputs[i]), output.shape[2:])
        return self.cls_seg(output)


class UPerHead(DecodeHead):
    """mmseg's ``UPerHead`` (PPM on the last level + FPN-style fusion)."""

    def __init__(self, in_channels, channels=UPER_CHANNELS, num_classes=NUM_CLASSES,
                 pool_scales=POOL_SCALES):
        super().__init__(channels, num_classes)
        # PPM: AdaptiveAvgPool2d(s) then a 1x1 ConvModule ("psp_modules.{i}.1").
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1))
            for s in pool_scales
        )
        self.bottleneck = ConvModule(
            in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1
        )
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, channels, 1) for c in in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)

    def psp_forward(self, x):
        outs = [x] + [resize(ppm(x), x.shape[2:]) for ppm in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[-1])
        outs = [outs[0]] + [resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(DecodeHead):
    """mmseg's ``FCNHead`` with ``num_convs=1``, ``concat_input=False``: the
    UperNet auxiliary head on stage 3 (training only)."""

    def __init__(self, in_channels, channels=AUX_CHANNELS, num_classes=NUM_CLASSES,
                 in_index=AUX_IN_INDEX):
        super().__init__(channels, num_classes)
        self.in_index = in_index
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3, padding=1))

    def forward(self, inputs):
        return self.cls_seg(self.convs(inputs[self.in_index]))


# ---------------------------------------------------------------------------
# The segmenter (mmseg EncoderDecoder, whole-image inference)
# ---------------------------------------------------------------------------


class Segmenter(nn.Module):
    """``backbone`` [-> ``neck``] -> ``decode_head`` (+ ``auxiliary_head``)."""

    def __init__(self, variant, head, num_classes=NUM_CLASSES, auxiliary=None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if auxiliary is None:  # as the upstream configs: UperNet only
            auxiliary = head == "upernet"
        self.variant = variant
        self.head = head
        self.backbone = SegBackbone(variant)
        chs = self.backbone.out_channels
        if head == "fpn":
            self.neck = FPN(chs)
            self.decode_head = FPNHead([FPN_CHANNELS] * len(chs), num_classes=num_classes)
        else:
            self.neck = None
            self.decode_head = UPerHead(chs, num_classes=num_classes)
        self.auxiliary_head = (
            FCNHead(chs[AUX_IN_INDEX], num_classes=num_classes) if auxiliary else None
        )

    def forward_features(self, x):
        """The backbone's four normalised outputs (NCHW)."""
        return self.backbone(x)

    def forward_all(self, x):
        """``{"features": [4 maps], "decode_logits": stride-4 logits,
        "aux_logits": stride-16 logits or None, "logits": input-size logits}``."""
        features = self.backbone(x)
        neck_out = self.neck(features) if self.neck is not None else features
        decode_logits = self.decode_head(neck_out)
        aux_logits = self.auxiliary_head(features) if self.auxiliary_head is not None else None
        return {
            "features": features,
            "decode_logits": decode_logits,
            "aux_logits": aux_logits,
            "logits": resize(decode_logits, x.shape[2:]),
        }

    def forward_decode(self, x):
        """The decode head's stride-4 logits."""
        features = self.backbone(x)
        return self.decode_head(self.neck(features) if self.neck is not None else features)

    def forward_aux(self, x):
        """The auxiliary head's stride-16 logits (UperNet)."""
        if self.auxiliary_head is None:
            raise ValueError("this segmenter has no auxiliary head")
        return self.auxiliary_head(self.backbone(x))

    def forward(self, x):
        """mmseg's whole-image inference: decode logits resized bilinearly
        (``align_corners=False``) to the input size."""
        return resize(self.forward_decode(x), x.shape[2:])


def build_segmenter(variant, head, num_classes=NUM_CLASSES, auxiliary=None):
    """A Next-ViT ``variant`` + ``head`` ("fpn" | "upernet") segmenter in eval
    mode. ``auxiliary=None`` follows the upstream configs (an FCN auxiliary
    head for UperNet, none for Semantic FPN)."""
    if variant not in ref.VARIANTS:
        raise ValueError(f"variant must be one of {sorted(ref.VARIANTS)}, got {variant!r}")
    return Segmenter(variant, head, num_classes, auxiliary).eval()


# ---------------------------------------------------------------------------
# Synthetic weights
# ---------------------------------------------------------------------------


def synthetic_numpy_state(model, seed=0):
    """``{name: np.ndarray}``: the synthetic weights with tensor index i =
    the position in ``model``'s state dict (mmseg's order)."""
    return ref.synthetic_numpy_state(model, seed)


def load_synthetic(model, seed=0):
    """Fill ``model`` with the synthetic weights of ``seed``; returns it."""
    state = synthetic_numpy_state(model, seed)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return model


synthetic_input = ref.synthetic_input


# ---------------------------------------------------------------------------
# ONNX export and eager latency benchmark
# ---------------------------------------------------------------------------


def adaptive_pool_matrix(in_size, out_size, dtype=torch.float32):
    """``(out_size, in_size)`` matrix ``P`` with ``P @ v`` = PyTorch's 1-D
    adaptive average pool of ``v``: row ``i`` averages elements
    ``floor(i * in / out)`` to ``ceil((i + 1) * in / out) - 1``."""
    p = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        p[i, start:end] = 1.0 / (end - start)
    return p.to(dtype)


class MatmulAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(s)`` as two matrix products, for a fixed input
    size. The TorchScript ONNX exporter refuses adaptive pools whose output
    size does not divide the input size (UperNet's PPM: 3 and 6 of 16 at
    512x512); this form exports and agrees to float rounding (~1e-7)."""

    def __init__(self, output_size):
        super().__init__()
        s = output_size
        self.output_size = (s, s) if isinstance(s, int) else tuple(s)

    def forward(self, x):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ph = adaptive_pool_matrix(h, self.output_size[0], x.dtype)
        pw = adaptive_pool_matrix(w, self.output_size[1], x.dtype)
        return torch.matmul(torch.matmul(ph, x), pw.t())


def export_onnx(model, path, size, batch=1):
    """Export ``model`` (input ``images`` NCHW, output ``logits``) to ONNX,
    opset 17, with the TorchScript exporter (the dynamo one needs
    ``onnxscript``), for a fixed input size. ``size`` is an int or ``(H, W)``.

    UperNet's PPM pools are swapped for ``MatmulAdaptiveAvgPool2d`` during
    the export (and restored after): the exporter rejects adaptive pools
    whose bins do not tile the input."""
    h, w = (size, size) if isinstance(size, int) else size
    x = synthetic_input(0, (batch, 3, h, w))
    model = model.eval()
    swapped = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                if isinstance(child, nn.AdaptiveAvgPool2d):
                    swapped.append((module, name, child))
                    setattr(module, name, MatmulAdaptiveAvgPool2d(child.output_size))
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (x,),
                str(path),
                opset_version=17,
                input_names=["images"],
                output_names=["logits"],
                dynamo=False,
            )
    finally:
        for module, name, child in swapped:
            setattr(module, name, child)
    return path


def benchmark(variant="small", head="fpn", size=512, batch=1, warmup=3, repeats=10):
    """Median (and all) eager forward latencies in milliseconds."""
    model = load_synthetic(build_segmenter(variant, head))
    return ref.time_eager(model, synthetic_input(0, (batch, 3, size, size)), warmup, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="small", choices=sorted(ref.VARIANTS))
    parser.add_argument("--head", default="fpn", choices=HEADS)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--onnx", metavar="PATH", help="also export the model to ONNX here")
    args = parser.parse_args(argv)
    if args.onnx:
        model = load_synthetic(build_segmenter(args.variant, args.head))
        export_onnx(model, args.onnx, args.size, args.batch)
        print(f"wrote {args.onnx}")
    median, times = benchmark(
        args.variant, args.head, args.size, args.batch, args.warmup, args.repeats
    )
    print(
        f"nextvit_{args.variant} + {args.head} torch {torch.__version__} eager, inference_mode, "
        f"batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads: "
        f"median {median:.2f} ms over {len(times)} runs "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )


if __name__ == "__main__":
    main()
