"""Checkpoint loading: formats, namings, heads, presets, and every bad input."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import infer, synthetic_checkpoint

import keras_nextvit
from keras_nextvit import weights
from keras_nextvit.weights import CheckpointError

SIZE = (64, 64, 3)


def small(**kwargs):
    return keras_nextvit.NextViTSmall(input_shape=SIZE, **kwargs)


@pytest.fixture(scope="module")
def reference():
    """Next-ViT-S loaded from the in-memory synthetic checkpoint."""
    model = small()
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint("small"))
    return model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((2, *SIZE)).astype("float32")


def assert_same_weights(a, b):
    for va, vb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=va.path)


def save_pth(state, path):
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)


def save_safetensors(state, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))


@pytest.mark.parametrize("naming", ["timm", "official"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "npz", "wrapped_pth"])
@pytest.mark.slow
def test_file_formats_and_namings(reference, tmp_path, fmt, naming):
    state = synthetic_checkpoint("small", naming)
    path = tmp_path / f"ckpt.{fmt.replace('wrapped_', '')}"
    if fmt == "pth":
        save_pth(state, path)
    elif fmt == "wrapped_pth":  # the upstream training script's {"model": state_dict}
        torch = pytest.importorskip("torch")
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}, "epoch": 3}, path)
    elif fmt == "safetensors":
        save_safetensors(state, path)
    else:
        np.savez(path, **state)
    model = small(weights=str(path))
    assert_same_weights(model, reference)


def test_weights_are_transposed_correctly(reference):
    state = synthetic_checkpoint("small")
    conv = reference.get_layer("stem_0").conv.kernel
    np.testing.assert_array_equal(
        np.asarray(conv), state["stem.0.conv.weight"].transpose(2, 3, 1, 0)
    )
    fc1 = reference.get_layer("stages_0_blocks_0").mlp.fc1.kernel
    np.testing.assert_array_equal(np.asarray(fc1), state["stages.0.blocks.0.mlp.fc1.weight"][:, :, 0, 0].T)
    q = reference.get_layer("stages_1_blocks_3").e_mhsa.q.kernel
    np.testing.assert_array_equal(np.asarray(q), state["stages.1.blocks.3.e_mhsa.q.weight"].T)
    var = reference.get_layer("norm").moving_variance
    np.testing.assert_array_equal(np.asarray(var), state["norm.running_var"])


def ten_class_checkpoint():
    state = dict(synthetic_checkpoint("small"))
    state["head.fc.weight"] = state["head.fc.weight"][:10]
    state["head.fc.bias"] = state["head.fc.bias"][:10]
    return state


@pytest.mark.slow
def test_other_class_count_loads_headless_and_into_matching_head(reference, x):
    state = ten_class_checkpoint()
    headless = small(include_top=False, pooling="avg")
    keras_nextvit.load_torch_weights(headless, state)
    ten = small(classes=10)
    keras_nextvit.load_torch_weights(ten, state)
    logits = infer(ten, x)
    pooled = infer(headless, x)
    np.testing.assert_allclose(logits, pooled @ state["head.fc.weight"].T + state["head.fc.bias"], atol=1e-4)


def test_class_count_mismatch_names_tensor_and_shapes():
    model = small()
    before = [np.asarray(v).copy() for v in model.weights]
    with pytest.raises(CheckpointError, match=r"'head.fc.weight'.*\(10, 1024\).*\(1000, 1024\).*10 classes"):
        keras_nextvit.load_torch_weights(model, ten_class_checkpoint())
    # Nothing was assigned: a failed load leaves the model as it was.
    for old, var in zip(before, model.weights):
        np.testing.assert_array_equal(old, np.asarray(var))


def test_shape_mismatch_inside_the_network():
    state = dict(synthetic_checkpoint("small"))
    state["stages.0.blocks.1.mhca.group_conv3x3.weight"] = np.zeros((96, 16, 3, 3), "float32")
    with pytest.raises(CheckpointError, match=r"'stages.0.blocks.1.mhca.group_conv3x3.weight'.*\(96, 16, 3, 3\).*\(96, 32, 3, 3\)"):
        keras_nextvit.load_torch_weights(small(), state)


def test_four_channel_model_rejects_rgb_checkpoint():
    model = keras_nextvit.NextViTSmall(input_shape=(64, 64, 4))
    with pytest.raises(CheckpointError, match=r"'stem.0.conv.weight'.*\(64, 3, 3, 3\).*\(64, 4, 3, 3\)"):
        keras_nextvit.load_torch_weights(model, synthetic_checkpoint("small"))


@pytest.mark.parametrize("naming,hint", [("timm", r"Next-ViT-B \(3, 4, 20, 3\)"), ("official", r"30 blocks in all \(Next-ViT-B\)")])
def test_checkpoint_of_another_variant(naming, hint):
    with pytest.raises(CheckpointError, match=f"looks like {hint}.*Not in the model: "):
        keras_nextvit.load_torch_weights(small(), synthetic_checkpoint("base", naming))


def test_missing_tensor_is_named():
    state = dict(synthetic_checkpoint("small"))
    del state["stages.2.blocks.4.e_mhsa.norm.running_var"]
    with pytest.raises(CheckpointError, match=r"Missing from the checkpoint: stages.2.blocks.4.e_mhsa.norm.running_var"):
        keras_nextvit.load_torch_weights(small(), state)


def test_unexpected_tensor_is_named():
    state = dict(synthetic_checkpoint("small"))
    state["extra.weight"] = np.zeros(3, "float32")
    with pytest.raises(CheckpointError, match=r"Not in the model: extra.weight"):
        keras_nextvit.load_torch_weights(small(), state)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_truncated_file(tmp_path, fmt):
    full = tmp_path / f"full.{fmt}"
    (save_pth if fmt == "pth" else save_safetensors)(synthetic_checkpoint("small"), full)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a checkpoint"):
        keras_nextvit.load_torch_weights(small(), str(cut))


@pytest.mark.parametrize("name", ["notes.pth", "notes.safetensors", "notes.npz"])
def test_non_checkpoint_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("these are not the weights you are looking for\n" * 20)
    with pytest.raises(CheckpointError, match=r"could not be read"):
        keras_nextvit.load_torch_weights(small(), str(path))


def test_pickle_that_is_not_a_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        keras_nextvit.load_torch_weights(small(), str(path))


@pytest.mark.slow
def test_unknown_format_and_missing_file(tmp_path):
    path = tmp_path / "weights.bin.gz"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        keras_nextvit.load_torch_weights(small(), str(path))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        small(weights=str(tmp_path / "nowhere.pth"))


# ------------------------------------------------------------------ presets


def test_twelve_presets():
    assert len(keras_nextvit.PRESETS) == 12
    for name, preset in keras_nextvit.PRESETS.items():
        assert preset["hf_hub_id"] == "timm/" + name
        assert preset["input_size"] == (384 if name.endswith("_384") else 224)
        assert preset["crop_pct"] == (1.0 if name.endswith("_384") else 0.95)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"Unknown preset 'nextvit_smal.bd_in1k'.*Did you mean 'nextvit_small.bd_in1k'"):
        small(weights="nextvit_smal.bd_in1k")
    with pytest.raises(ValueError, match="Unknown preset 'imagenet'"):
        small(weights="imagenet")  # the keras.applications habit


@pytest.mark.slow
def test_preset_from_local_cache(reference, tmp_path, monkeypatch, x):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    save_safetensors(synthetic_checkpoint("small"), weights.preset_path("nextvit_small.bd_in1k_384"))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached preset must not be downloaded")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    model = keras_nextvit.NextViTSmall(weights="nextvit_small.bd_in1k_384")
    assert model.input_shape == (None, 384, 384, 3)  # the preset's size by default
    model = small(weights="nextvit_small.bd_in1k_384")
    assert_same_weights(model, reference)


def test_preset_download_goes_to_the_hub_once(tmp_path, monkeypatch):
    calls = []

    def fake_get_file(fname, origin, cache_dir, cache_subdir):
        calls.append(origin)
        path = os.path.join(cache_dir, cache_subdir, fname)
        save_safetensors(synthetic_checkpoint("small"), path)
        return path

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    first = weights.download_preset("nextvit_small.bd_ssld_6m_in1k", cache=tmp_path)
    second = weights.download_preset("nextvit_small.bd_ssld_6m_in1k", cache=tmp_path)
    assert first == second and os.path.isfile(first)
    assert calls == ["https://huggingface.co/timm/nextvit_small.bd_ssld_6m_in1k/resolve/main/model.safetensors"]


def test_preset_not_cached_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        weights.download_preset("nextvit_base.bd_in1k", cache=tmp_path, download=False)


# --------------------------------------------------------------- conversion


@pytest.mark.parametrize("naming", ["timm", "official"])
@pytest.mark.slow
def test_convert_tool(reference, tmp_path, naming, x, capsys):
    """tools/convert_weights.py as a user runs it (timm's names), and the
    ``keras-nextvit convert`` it hands over to, in this process (the
    upstream names: the same code without a second TensorFlow start-up)."""
    src = tmp_path / "ckpt.safetensors"
    save_safetensors(synthetic_checkpoint("small", naming), src)
    out = tmp_path / "nextvit_small.weights.h5"
    if naming == "timm":
        tool = os.path.join(os.path.dirname(__file__), "..", "tools", "convert_weights.py")
        result = subprocess.run([sys.executable, tool, str(src), str(out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        stdout = result.stdout
    else:
        from keras_nextvit import cli

        assert cli.main(["convert", str(src), str(out)]) == 0
        stdout = capsys.readouterr().out
    assert "nextvit_small" in stdout
    model = small(weights=str(out))
    np.testing.assert_array_equal(infer(model, x), infer(reference, x))


def test_convert_rejects_wrong_variant(tmp_path):
    with pytest.raises(CheckpointError, match="holds Next-ViT-S, not 'base'"):
        keras_nextvit.model.convert_checkpoint(synthetic_checkpoint("small"), tmp_path / "x.weights.h5", variant="base")
