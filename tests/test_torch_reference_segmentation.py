"""The independent PyTorch reference of the Next-ViT segmenters
(tools/torch_reference_segmentation.py): mmseg's state-dict names, shapes and
order for every variant and head, and the golden outputs of
tests/data/segmentation for the synthetic weights."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close, load_tool

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
SEG_DATA = HERE / "data" / "segmentation"

GOLDEN = {
    "fpn": "seg_fpn_small_128x160",
    "upernet": "seg_upernet_small_128x128",
}
ARGMAX_AGREEMENT = 0.999


seg = load_tool("torch_reference_segmentation", "nextvit_torch_reference_segmentation")

_MODELS = {}


def synthetic_segmenter(head):
    """Next-ViT-S + ``head`` with the synthetic seed-0 weights (cached)."""
    if head not in _MODELS:
        _MODELS[head] = seg.load_synthetic(seg.build_segmenter("small", head), seed=0)
    return _MODELS[head]


def golden(head):
    with np.load(SEG_DATA / f"{GOLDEN[head]}.npz") as data:
        return {key: data[key] for key in data.files}


def run_all(model, images_nchw):
    with torch.inference_mode():
        return model.forward_all(torch.from_numpy(np.ascontiguousarray(images_nchw)))


def golden_tensors(out):
    """The reference's outputs under the golden files' keys."""
    tensors = {f"feature{i}": f.numpy() for i, f in enumerate(out["features"], start=1)}
    tensors["decode_logits"] = out["decode_logits"].numpy()
    tensors["logits_first_channels"] = out["logits"][:, :8].numpy()
    if out["aux_logits"] is not None:
        tensors["aux_logits"] = out["aux_logits"].numpy()
    return tensors


@pytest.mark.parametrize("head", ["fpn", "upernet"])
@pytest.mark.parametrize("variant", ["small", "base", "large"])
def test_state_dict_matches_mmseg_naming(variant, head):
    with torch.device("meta"):
        model = seg.build_segmenter(variant, head)
    got = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    expected = json.loads((SEG_DATA / f"seg_{head}_{variant}.keys.json").read_text())
    assert got == expected


@pytest.mark.parametrize("head", ["fpn", "upernet"])
@pytest.mark.slow
def test_reference_reproduces_golden_segmentation(head):
    data = golden(head)
    assert str(data["variant"]) == "small" and str(data["head"]) == head
    images = data["input_nchw"]
    np.testing.assert_array_equal(
        seg.synthetic_input(int(data["input_seed"]), images.shape).numpy(), images
    )
    model = synthetic_segmenter(head)
    out = run_all(model, images)
    tensors = golden_tensors(out)
    expected_keys = {k for k in data if k.startswith("feature") or k.endswith("logits")}
    expected_keys |= {"logits_first_channels"}
    assert set(tensors) == expected_keys
    for key, value in tensors.items():
        assert_close(value, data[key], what=f"{head} {key}")
    assert out["logits"].shape == (1, 150) + images.shape[2:]
    agreement = float(np.mean(out["logits"].argmax(dim=1).numpy() == data["argmax"]))
    assert agreement >= ARGMAX_AGREEMENT, f"argmax agrees on {agreement:.4%} of pixels"

    # forward() / forward_decode() / forward_aux() are the same computation.
    x = torch.from_numpy(images)
    with torch.inference_mode():
        np.testing.assert_array_equal(model(x).numpy(), out["logits"].numpy())
        np.testing.assert_array_equal(model.forward_decode(x).numpy(), tensors["decode_logits"])
        if head == "upernet":
            np.testing.assert_array_equal(model.forward_aux(x).numpy(), tensors["aux_logits"])


@pytest.mark.parametrize(
    "head, name",
    [
        ("fpn", "decode_head.scale_heads.2.2.bn.weight"),
        ("upernet", "decode_head.bottleneck.bn.weight"),
    ],
)
def test_golden_check_catches_a_perturbed_decode_head(head, name):
    """One decode-head scale off by 2% on one channel: the features still
    match, the decode logits miss the bar."""
    data = golden(head)
    model = synthetic_segmenter(head)
    tensor = model.state_dict()[name]
    saved = tensor.clone()
    try:
        with torch.no_grad():
            tensor[7] *= 1.02
        out = run_all(model, data["input_nchw"])
    finally:
        with torch.no_grad():
            tensor.copy_(saved)
    assert_close(out["features"][3].numpy(), data["feature4"], what="feature4")
    with pytest.raises(AssertionError, match="decode_logits"):
        assert_close(out["decode_logits"].numpy(), data["decode_logits"], what="decode_logits")


def test_golden_check_catches_unnormalised_stage_inputs():
    """Feeding the raw stage output (not the extra-normalised map) to the
    next stage, as the classification network does, misses feature2."""
    data = golden("fpn")
    backbone = synthetic_segmenter("fpn").backbone
    with torch.inference_mode():
        x = backbone.stem(torch.from_numpy(data["input_nchw"]))
        for idx in range(backbone.stage_out_idx[1] + 1):
            x = backbone.features[idx](x)
        feature2 = backbone.extra_norm_list[1](x)
    with pytest.raises(AssertionError, match="feature2"):
        assert_close(feature2.numpy(), data["feature2"], what="feature2")


def test_ppm_uses_torch_adaptive_avg_pool():
    model = seg.build_segmenter("small", "upernet")
    pools = [ppm[0] for ppm in model.decode_head.psp_modules]
    assert [type(p) for p in pools] == [torch.nn.AdaptiveAvgPool2d] * 4
    assert [p.output_size for p in pools] == [1, 2, 3, 6]


@pytest.mark.parametrize("hw, s", [((4, 4), 6), ((16, 16), 3), ((5, 7), 6), ((7, 5), 2)])
def test_matmul_adaptive_pool_equals_torch(hw, s):
    """The ONNX-export form of the PPM pool averages torch's own bins."""
    x = seg.synthetic_input(3, (2, 4) + hw)
    expected = torch.nn.AdaptiveAvgPool2d(s)(x)
    got = seg.MatmulAdaptiveAvgPool2d(s)(x)
    assert_close(got.numpy(), expected.numpy(), rel=1e-6, what="pool")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.slow
def test_onnx_export_matches_eager(tmp_path):
    """UperNet, whose PPM pools need the export-time swap (Semantic FPN
    exports as is; left out to keep the test short)."""
    head = "upernet"
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = synthetic_segmenter(head)
    path = seg.export_onnx(model, tmp_path / f"{head}.onnx", (64, 96))
    # The export-time pool swap is undone.
    assert all(type(ppm[0]) is torch.nn.AdaptiveAvgPool2d for ppm in model.decode_head.psp_modules)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = seg.synthetic_input(5, (1, 3, 64, 96))
    (got,) = session.run(["logits"], {"images": x.numpy()})
    with torch.inference_mode():
        expected = model(x).numpy()
    assert_close(got, expected, what=f"{head} onnx logits")
