"""An independent, eager PyTorch implementation of Next-ViT (Li et al., 2022).

Written from the architecture description, not copied from timm; its
``state_dict()`` has exactly timm's tensor names, shapes and order (see
``tests/data/nextvit_*.keys.json``), so timm checkpoints load into it and the
project's synthetic weights give the same values as in the golden data.

It serves two purposes:

* the "PyTorch reference in eager mode" of the latency benchmark::

      python tools/torch_reference.py --variant small --size 224 --batch 1

* an independent check of the Keras port on image sizes the golden data does
  not cover (``tests/test_torch_reference.py``).

Usage::

    model = build("small")             # eval mode, random init
    load_synthetic(model, seed=0)      # the project's reproducible weights
    logits = model(images_nchw)
    stages = model.forward_features(images_nchw)   # 4 raw stage outputs
    pooled = model.forward_pre_logits(images_nchw)  # after final BN + pool

Only ``torch`` and ``numpy`` are needed; the synthetic weights come from
``keras_nextvit/synthetic.py``, which is loaded by file path so that this
script never imports Keras/TensorFlow into the benchmark process.
"""

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = {
    "small": (3, 4, 10, 3),
    "base": (3, 4, 20, 3),
    "large": (3, 4, 30, 3),
}
STEM_CHANNELS = (64, 32, 64)
STAGE_STRIDES = (1, 2, 2, 2)
SR_RATIOS = (8, 4, 2, 1)
HEAD_DIM = 32
MIX_BLOCK_RATIO = 0.75
BN_EPS = 1e-5


def make_divisible(value, divisor):
    """Round to a multiple of ``divisor`` (at least ``divisor``), never more
    than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def stage_plan(depths):
    """``[("NCB" | "NTB", channels), ...]`` for each of the four stages."""
    d0, d1, d2, d3 = depths
    if d2 % 5:
        raise ValueError(f"depths[2] must be a multiple of 5, got {depths}")
    return [
        [("NCB", 96)] * d0,
        [("NCB", 192)] * (d1 - 1) + [("NTB", 256)],
        ([("NCB", 384)] * 4 + [("NTB", 512)]) * (d2 // 5),
        [("NCB", 768)] * (d3 - 1) + [("NTB", 1024)],
    ]


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


class ConvNormAct(nn.Module):
    """3x3 conv (padding 1 on every side) -> BatchNorm -> ReLU."""

    def __init__(self, in_chs, out_chs, stride):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_chs, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class PatchEmbed(nn.Module):
    """Stride 2: 2x2 average pool (ceil mode, padding not counted) then
    1x1 conv + BN. Stride 1: 1x1 conv + BN if the width changes, else
    identity (no parameters)."""

    def __init__(self, in_chs, out_chs, stride=1):
        super().__init__()
        if stride == 2:
            self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        elif stride == 1:
            self.pool = None
        else:
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 2 or in_chs != out_chs:
            self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
            self.norm = nn.BatchNorm2d(out_chs, eps=BN_EPS)
        else:
            self.conv = None
            self.norm = None

    def forward(self, x):
        if self.pool is not None:
            x = self.pool(x)
        if self.conv is not None:
            x = self.norm(self.conv(x))
        return x


class MHCA(nn.Module):
    """Multi-head convolutional attention: grouped 3x3 conv (one group per
    head of 32 channels) -> BN -> ReLU -> 1x1 projection."""

    def __init__(self, chs, head_dim=HEAD_DIM):
        super().__init__()
        self.group_conv3x3 = nn.Conv2d(
            chs, chs, 3, padding=1, groups=chs // head_dim, bias=False
        )
        self.norm = nn.BatchNorm2d(chs, eps=BN_EPS)
        self.projection = nn.Conv2d(chs, chs, 1, bias=False)

    def forward(self, x):
        return self.projection(F.relu(self.norm(self.group_conv3x3(x))))


class Mlp(nn.Module):
    """1x1 conv (bias) -> ReLU -> 1x1 conv (bias)."""

    def __init__(self, chs, ratio):
        super().__init__()
        hidden = int(chs * ratio)
        self.fc1 = nn.Conv2d(chs, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, chs, 1, bias=True)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class NCB(nn.Module):
    """Next Convolution Block."""

    def __init__(self, in_chs, out_chs, stride=1):
        super().__init__()
        self.patch_embed = PatchEmbed(in_chs, out_chs, stride)
        self.mhca = MHCA(out_chs)
        self.norm = nn.BatchNorm2d(out_chs, eps=BN_EPS)
        self.mlp = Mlp(out_chs, 3.0)

    def forward(self, x):
        x = self.patch_embed(x)
        x = x + self.mhca(x)
        return x + self.mlp(self.norm(x))


class EMHSA(nn.Module):
    """Efficient multi-head self attention on tokens ``(B, N, C)``.

    Queries from every token; with ``sr > 1`` keys/values from the tokens
    average-pooled ``sr*sr`` at a time along the (row-major) token axis,
    then batch-normalised. Tokens that do not fill a last window are dropped
    (``AvgPool1d`` semantics; fewer tokens than one window is an error).
    """

    def __init__(self, dim, sr, head_dim=HEAD_DIM):
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.pool = nn.AvgPool1d(sr * sr, stride=sr * sr)
            self.norm = nn.BatchNorm1d(dim, eps=BN_EPS)
        else:
            self.pool = None
            self.norm = None

    def _heads(self, t):
        # (B, N, C) -> (B, heads, N, head_dim)
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, n, c = x.shape
        q = self._heads(self.q(x))
        if self.pool is not None:
            kv = self.norm(self.pool(x.transpose(1, 2))).transpose(1, 2)
        else:
            kv = x
        k = self._heads(self.k(kv))
        v = self._heads(self.v(kv))
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class NTB(nn.Module):
    """Next Transformer Block: E-MHSA on ``c1`` channels, MHCA on a ``c2``
    projection of them, concatenation, BN + MLP residual."""

    def __init__(self, in_chs, out_chs, stride=1, sr=1):
        super().__init__()
        c1 = make_divisible(int(out_chs * MIX_BLOCK_RATIO), 32)
        c2 = out_chs - c1
        self.patch_embed = PatchEmbed(in_chs, c1, stride)
        self.norm1 = nn.BatchNorm2d(c1, eps=BN_EPS)
        self.e_mhsa = EMHSA(c1, sr)
        self.projection = PatchEmbed(c1, c2, 1)
        self.mhca = MHCA(c2)
        self.norm2 = nn.BatchNorm2d(out_chs, eps=BN_EPS)
        self.mlp = Mlp(out_chs, 2.0)

    def forward(self, x):
        x = self.patch_embed(x)
        b, c, h, w = x.shape
        tokens = self.norm1(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = self.e_mhsa(tokens)
        x = x + out.transpose(1, 2).reshape(b, c, h, w)
        y = self.projection(x)
        y = y + self.mhca(y)
        x = torch.cat([x, y], dim=1)
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


class Head(nn.Module):
    def __init__(self, in_chs, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_chs, num_classes)

    def forward(self, x):
        return self.fc(x)


class NextViT(nn.Module):
    def __init__(self, depths, num_classes=1000):
        super().__init__()
        c0, c1, c2 = STEM_CHANNELS
        self.stem = nn.Sequential(
            ConvNormAct(3, c0, 2),
            ConvNormAct(c0, c1, 1),
            ConvNormAct(c1, c2, 1),
            ConvNormAct(c2, c2, 2),
        )
        in_chs = c2
        stages = []
        for s, plan in enumerate(stage_plan(depths)):
            blocks = []
            for b, (kind, out_chs) in enumerate(plan):
                stride = STAGE_STRIDES[s] if b == 0 else 1
                if kind == "NCB":
                    blocks.append(NCB(in_chs, out_chs, stride))
                else:
                    blocks.append(NTB(in_chs, out_chs, stride, SR_RATIOS[s]))
                in_chs = out_chs
            stages.append(Stage(blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_chs, eps=BN_EPS)
        self.head = Head(in_chs, num_classes)

    def forward_features(self, x):
        """The raw output of each stage's last block (NCHW), a list of 4."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_pre_logits(self, x):
        """Final BatchNorm then global average pool: ``(B, 1024)``."""
        return self.norm(self.forward_features(x)[-1]).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.forward_pre_logits(x))


def build(variant, num_classes=1000):
    """A Next-ViT ``variant`` ("small", "base", "large") in eval mode."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return NextViT(VARIANTS[variant], num_classes).eval()


# ---------------------------------------------------------------------------
# Synthetic weights
# ---------------------------------------------------------------------------

_REPO = Path(__file__).resolve().parents[1]


def _synthetic_module():
    """``keras_nextvit/synthetic.py`` (pure numpy), without importing the
    ``keras_nextvit`` package and hence Keras/TensorFlow."""
    name = "_nextvit_synthetic_ref"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, _REPO / "keras_nextvit" / "synthetic.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def synthetic_numpy_state(model, seed=0):
    """``{name: np.ndarray}`` of the project's synthetic weights for
    ``model``'s state-dict spec (what ``load_torch_weights`` also accepts)."""
    spec = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    return _synthetic_module().synthetic_state_dict(spec, seed=seed)


def load_synthetic(model, seed=0):
    """Fill ``model`` with the synthetic weights of ``seed``; returns it."""
    state = synthetic_numpy_state(model, seed)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return model


def synthetic_input(seed, shape):
    """The project's synthetic NCHW images, as a torch tensor."""
    return torch.from_numpy(_synthetic_module().synthetic_input(seed, shape))


# ---------------------------------------------------------------------------
# Eager latency benchmark
# ---------------------------------------------------------------------------


def benchmark(variant="small", size=224, batch=1, warmup=5, repeats=20):
    """Median (and all) eager forward latencies in milliseconds."""
    model = load_synthetic(build(variant))
    return time_eager(model, synthetic_input(0, (batch, 3, size, size)), warmup, repeats)


def time_eager(model, x, warmup, repeats):
    """Median (and all) latencies in ms of ``model(x)`` under inference mode."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="small", choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    median, times = benchmark(args.variant, args.size, args.batch, args.warmup, args.repeats)
    print(
        f"nextvit_{args.variant} torch {torch.__version__} eager, inference_mode, "
        f"batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads: "
        f"median {median:.2f} ms over {len(times)} runs "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )


if __name__ == "__main__":
    main()
