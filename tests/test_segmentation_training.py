"""Segmentation training: the upstream recipes, the poly schedule, the
ignore-index loss, the loss going down, UperNet's weighted auxiliary loss,
exact resume and the command line.

The segmenter here is a tiny Next-ViT (depths 1, 1, 5, 1) with narrow heads on
64x64 crops of generated scenes (``data.write_synthetic_scenes``); the code
paths are the ones the full models take. Graph tracing dominates each run
(~30 s on 2 cores), so the file trains four times: FPN once, UperNet three
times (uninterrupted, interrupted, resumed).
"""

import csv
import json
import math
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import load_tool

from keras_nextvit.segmentation import data as data_lib
from keras_nextvit.segmentation import training as seg_training

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = (1, 1, 5, 1)
COMMON = dict(
    variant=TINY, channels=(32, 16), crop_size=64, tensorboard=False, verbose=0, jit_compile=False
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """ADE20K layout: 16 training scenes, 4 validation scenes, and a split
    "few" of 8 (4 steps of 2 per pass, so that runs cross data passes)."""
    root = tmp_path_factory.mktemp("scenes")
    data_lib.write_synthetic_scenes(root, count=16, size=(64, 64), num_classes=4)
    data_lib.write_synthetic_scenes(root, 4, (64, 64), 4, seed=1, split="validation")
    data_lib.write_synthetic_scenes(root, 8, (64, 64), 4, seed=2, split="few")
    return root


# ---------------------------------------------------------------- numpy references


def np_log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_cross_entropy(logits, labels, ignore_index=255, avg_non_ignore=True):
    valid = labels != ignore_index
    log_probs = np_log_softmax(logits)
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    total = -(picked * valid).sum()
    return total / (valid.sum() if avg_non_ignore else valid.size)


def np_resize_bilinear(x, height, width):
    """PyTorch's bilinear ``align_corners=False`` for NHWC arrays."""
    for axis, size_out in ((1, height), (2, width)):
        size_in = x.shape[axis]
        source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0)
        low = np.minimum(np.floor(source).astype(int), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        weight = (source - low).reshape(shape)
        x = np.take(x, low, axis) * (1 - weight) + np.take(x, high, axis) * weight
    return x


# ------------------------------------------------------------------ the pieces


def test_recipes_are_upstreams():
    fpn, upernet = seg_training.RECIPES["fpn"], seg_training.RECIPES["upernet"]
    def fields(recipe, *names):
        return tuple(getattr(recipe, name) for name in names)

    schedule = ("learning_rate", "weight_decay", "power", "min_learning_rate")
    assert fields(fpn, *schedule) == (1e-4, 1e-4, 0.9, 1e-6)
    assert fields(fpn, "iterations", "batch_size", "warmup_iterations", "clip_norm") == (
        80000, 16, 0, None)
    assert fpn.decay_norms and fpn.auxiliary_loss_weight == 0
    assert fields(upernet, *schedule) == (6e-5, 0.01, 1.0, 0.0)
    assert fields(upernet, "iterations", "batch_size", "beta_1", "beta_2") == (160000, 16, 0.9, 0.999)
    assert (upernet.warmup_iterations, upernet.warmup_ratio) == (1500, 1e-6)
    assert not upernet.decay_norms and upernet.auxiliary_loss_weight == 0.4
    for recipe in (fpn, upernet):
        aug = recipe.augmentation
        assert fields(aug, "crop_size", "img_scale", "ratio_range", "cat_max_ratio") == (
            (512, 512), (2048, 512), (0.5, 2.0), 0.75)
        assert recipe.drop_path_rate == 0.2
        assert not recipe.avg_non_ignore  # mmseg 0.x: the sum over labelled pixels / all pixels
    with pytest.raises(ValueError, match="Unknown segmentation recipe 'deeplab'"):
        seg_training.get_recipe("deeplab")


def poly(i, base, max_iters, power, min_lr):
    return (base - min_lr) * (1 - min(i, max_iters) / max_iters) ** power + min_lr


def test_poly_decay_schedule():
    schedule = seg_training.PolyDecay(1e-4, 80000, power=0.9, min_lr=1e-6)
    for i in (0, 1, 999, 40000, 79999, 80000, 90000):
        assert float(schedule(i)) == pytest.approx(poly(i, 1e-4, 80000, 0.9, 1e-6), rel=1e-5), i
    assert float(schedule(0)) == pytest.approx(1e-4) and float(schedule(80000)) == pytest.approx(1e-6)

    # mmcv's linear warm-up scales the poly rate: lr * (1 - (1 - i / w) * (1 - ratio))
    warm = seg_training.PolyDecay(
        6e-5, 160000, power=1.0, min_lr=0.0, warmup_iters=1500, warmup_ratio=1e-6
    )
    for i in (0, 1, 750, 1499):
        k = (1 - i / 1500) * (1 - 1e-6)
        expected = poly(i, 6e-5, 160000, 1.0, 0.0) * (1 - k)
        assert float(warm(i)) == pytest.approx(expected, rel=1e-5), i
    for i in (1500, 80000, 159999):
        assert float(warm(i)) == pytest.approx(poly(i, 6e-5, 160000, 1.0, 0.0), rel=1e-5), i
    assert float(warm(0)) == pytest.approx(6e-11)
    assert float(warm(750)) == pytest.approx(0.5 * 6e-5 * (1 - 750 / 160000), rel=1e-4)
    assert float(warm(160000)) == 0.0

    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(warm))
    assert isinstance(restored, seg_training.PolyDecay)
    assert float(restored(1234)) == float(warm(1234))
    with pytest.raises(ValueError, match="max_iters must be >= 1"):
        seg_training.PolyDecay(1e-4, 0)


def test_cross_entropy_ignores_index():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 4)).astype("float32") * 3
    labels = rng.integers(0, 4, size=(2, 5, 6))
    labels[0, :2] = 255
    labels[1, 3, 1:5] = 255
    loss = seg_training.SegmentationCrossEntropy()
    got = float(loss(labels, logits))
    assert got == pytest.approx(np_cross_entropy(logits, labels), rel=1e-5)
    # ignored pixels really are left out: the mean over labelled pixels differs
    # from the mean over all of them, and no ignored logit moves the loss
    assert got != pytest.approx(np_cross_entropy(logits, labels, avg_non_ignore=False), rel=1e-3)
    changed = logits.copy()
    changed[0, :2] += rng.normal(size=changed[0, :2].shape).astype("float32") * 10
    assert float(loss(labels, changed)) == pytest.approx(got, rel=1e-6)
    all_pixels = seg_training.SegmentationCrossEntropy(avg_non_ignore=False)
    assert float(all_pixels(labels, logits)) == pytest.approx(
        np_cross_entropy(logits, labels, avg_non_ignore=False), rel=1e-5
    )
    # labels (N, H, W, 1) are the same labels
    assert float(loss(labels[..., None], logits)) == pytest.approx(got, rel=1e-6)
    # a batch with nothing labelled has loss 0, not NaN
    assert float(loss(np.full((1, 5, 6), 255), logits[:1])) == 0.0
    # logits smaller than the labels are resized bilinearly first (mmseg)
    small = rng.normal(size=(2, 3, 2, 4)).astype("float32")
    expected = np_cross_entropy(np_resize_bilinear(small.astype(np.float64), 5, 6), labels)
    assert float(loss(labels, small)) == pytest.approx(expected, rel=1e-5)
    config = loss.get_config()
    assert (config["ignore_index"], config["avg_non_ignore"]) == (255, True)


BACKEND_SCRIPT = r"""
import json, numpy as np, keras
from keras_nextvit.segmentation.training import PolyDecay, SegmentationCrossEntropy
rng = np.random.default_rng(0)
logits = rng.normal(size=(2, 5, 6, 4)).astype("float32") * 3
labels = rng.integers(0, 4, size=(2, 5, 6)); labels[0, :2] = 255
small = rng.normal(size=(2, 3, 2, 4)).astype("float32")
loss = SegmentationCrossEntropy()
print("RESULT", json.dumps([keras.backend.backend(), float(loss(labels, logits)),
      float(loss(labels, small)), float(PolyDecay(6e-5, 100, 1.0, 0.0, 10)(3))]))
"""


@pytest.mark.slow
def test_loss_and_schedule_on_jax_and_torch():
    import os

    processes = {
        backend: subprocess.Popen(
            [sys.executable, "-c", BACKEND_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT, env=dict(os.environ, KERAS_BACKEND=backend),
        )
        for backend in ("jax", "torch")  # at the same time: most of it is imports
    }
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 4)).astype("float32") * 3
    labels = rng.integers(0, 4, size=(2, 5, 6))
    labels[0, :2] = 255
    small = rng.normal(size=(2, 3, 2, 4)).astype("float32")
    for backend, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        name, full, resized, lr = json.loads(line[len("RESULT "):])
        assert name == backend
        assert full == pytest.approx(np_cross_entropy(logits, labels), rel=1e-5)
        assert resized == pytest.approx(
            np_cross_entropy(np_resize_bilinear(small.astype(np.float64), 5, 6), labels), rel=1e-5
        )
        assert lr == pytest.approx(6e-5 * (1 - 3 / 100) * (1 - (1 - 3 / 10) * (1 - 1e-6)), rel=1e-5)


@pytest.mark.slow
def test_weight_decay_spares_norms_in_upernet_recipe():
    from keras_nextvit.segmentation import NextViTSegmenter

    model = NextViTSegmenter(TINY, "upernet", 4, input_shape=(64, 64, 3), channels=(32, 16))
    norms = {v.path for v in seg_training.norm_variables(model)}
    assert len(norms) > 30 and all(p.endswith(("gamma", "beta")) for p in norms)
    biases = [v for v in model.trainable_variables if len(v.shape) == 1 and v.path not in norms]
    assert biases  # e.g. the classifiers' biases: decayed upstream too
    for name, spared in (("upernet", True), ("fpn", False)):
        recipe = seg_training.RECIPES[name].replace(weight_decay=0.5, warmup_iterations=0)
        optimizer = seg_training.build_optimizer(recipe, model)
        assert optimizer.epsilon == 1e-8 and optimizer.global_clipnorm is None
        optimizer.build(model.trainable_variables)
        before = [np.array(v) for v in model.trainable_variables]
        optimizer.apply([keras.ops.zeros_like(v) for v in model.trainable_variables],
                        model.trainable_variables)
        for variable, old in zip(model.trainable_variables, before):
            decayed = not (spared and variable.path in norms)
            # AdamW with a zero gradient: only the decay moves a weight (by lr * wd)
            factor = 1 - recipe.learning_rate * 0.5 if decayed else 1.0
            np.testing.assert_allclose(
                np.array(variable), old * factor, rtol=1e-6, err_msg=variable.path
            )
            variable.assign(old)


def test_num_classes_inferred_and_checked(scenes, tmp_path):
    pairs = data_lib.segmentation_folder(scenes)
    assert seg_training.infer_num_classes(pairs) == 4
    assert seg_training.infer_num_classes(pairs, reduce_zero_label=True) == 3
    with pytest.raises(ValueError, match=r"has values \[3\].*num_classes=3"):
        seg_training.train(scenes, output_dir=tmp_path, num_classes=3, **COMMON)
    assert not (tmp_path / "checkpoints").exists()


def test_train_rejects_bad_arguments(scenes, tmp_path):
    def bad(match, **kwargs):
        with pytest.raises(ValueError, match=match):
            seg_training.train(scenes, output_dir=tmp_path, **{**COMMON, **kwargs})

    bad(r"head must be one of \('fpn', 'upernet'\), got 'deeplab'", head="deeplab")
    bad("Unknown segmentation recipe 'ocr'", recipe="ocr")
    bad("mixed_precision must be one of", mixed_precision="fp8")
    bad(r"iterations_per_epoch \(4\) must divide iterations \(10\)",
        iterations=10, iterations_per_epoch=4)
    bad("iterations must be a positive integer, got 0", iterations=0)
    bad("crop_size must be at least 32 pixels", crop_size=16)
    bad("fewer than one batch of 32", batch_size=32, iterations=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        seg_training.train(tmp_path / "missing", output_dir=tmp_path, **COMMON)


# -------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def fpn_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("fpn")
    return seg_training.train(scenes, val_dir=scenes, output_dir=out, **FPN), out


# from scratch, so a larger rate than the fine-tuning recipe's 1e-4
FPN = dict(COMMON, iterations=24, iterations_per_epoch=12, batch_size=4, learning_rate=1e-3)


@pytest.mark.slow
def test_fpn_loss_goes_down(fpn_run):
    result, out = fpn_run
    losses = result.history["step_loss"]
    assert len(losses) == 24 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-8:]) < 0.75 * np.mean(losses[:4]), np.round(losses, 3)
    assert result.history["loss"][1] < result.history["loss"][0]
    assert result.num_classes == 4 and result.training_model.optimizer.iterations.numpy() == 24

    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {"loss", "mean_iou", "val_loss", "val_mean_iou"} <= set(rows[0])
    assert set(result.metrics) == {"loss", "mean_iou"} and 0 <= result.metrics["mean_iou"] <= 1
    assert result.metrics["mean_iou"] == result.history["val_mean_iou"][-1]
    config = json.loads((out / "segmenter.json").read_text())
    assert (config["head"], config["num_classes"], config["variant"]) == ("fpn", 4, list(TINY))

    # the saved segmenter takes any size and computes what the trained one does
    reloaded = keras.saving.load_model(out / "model.keras")
    assert reloaded.input_shape == (None, None, None, 3)
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    trained = np.asarray(result.training_model(x, training=False))
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), trained, rtol=1e-5, atol=1e-5)
    assert reloaded(np.zeros((1, 48, 80, 3), "float32")).shape == (1, 48, 80, 4)


@pytest.mark.slow
def test_finished_run_trains_no_more(fpn_run, scenes):
    result, out = fpn_run
    again = seg_training.train(scenes, val_dir=scenes, output_dir=out, **FPN)
    assert again.initial_epoch == 2 and again.history == {"step_loss": []}
    # scored afresh: the saved segmenter, the last validation pass's numbers
    assert again.metrics == pytest.approx(result.metrics, rel=1e-5)
    assert again.metrics["mean_iou"] > 0
    np.testing.assert_array_equal(np.array(again.model.weights[0]), np.array(result.model.weights[0]))


UPERNET = dict(
    COMMON, train_split="few", head="upernet", iterations=6, iterations_per_epoch=3, batch_size=2,
    # warm-up inside the run, and a rate that moves the weights
    recipe=seg_training.RECIPES["upernet"].replace(warmup_iterations=2, learning_rate=1e-3),
)


@pytest.fixture(scope="module")
def upernet_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("upernet")
    return seg_training.train(scenes, output_dir=out, **UPERNET)


@pytest.mark.slow
def test_upernet_auxiliary_loss_is_weighted(upernet_run, scenes):
    model = upernet_run.training_model
    assert set(model.output) == {"decode", "auxiliary"}
    history = upernet_run.history
    losses = zip(history["loss"], history["decode_loss"], history["auxiliary_loss"])
    for total, decode, auxiliary in losses:
        assert total == pytest.approx(decode + 0.4 * auxiliary, rel=1e-5)
        assert auxiliary > 0.05 * decode  # the auxiliary term is not negligible

    # the compiled loss against NumPy, on a batch with ignored pixels
    images, masks = zip(*data_lib.iterate_pairs(data_lib.segmentation_folder(scenes, "validation")))
    x = data_lib.normalize(np.stack(images)).numpy()
    y = np.stack(masks)
    y[0, :10] = 255
    y[2, :, 50:] = 255
    outputs = model(x, training=False)
    decode, auxiliary = np.asarray(outputs["decode"]), np.asarray(outputs["auxiliary"])
    assert decode.shape == (4, 64, 64, 4) and auxiliary.shape == (4, 4, 4, 4)
    # the recipe's mmseg 0.x averaging: the sum over labelled pixels / all pixels
    expected_decode = np_cross_entropy(decode, y, avg_non_ignore=False)
    expected_aux = np_cross_entropy(np_resize_bilinear(auxiliary.astype(np.float64), 64, 64), y,
                                    avg_non_ignore=False)
    scores = model.evaluate(x, {"decode": y, "auxiliary": y}, batch_size=4, return_dict=True, verbose=0)
    assert scores["decode_loss"] == pytest.approx(expected_decode, rel=1e-4)
    assert scores["auxiliary_loss"] == pytest.approx(expected_aux, rel=1e-4)
    assert scores["loss"] == pytest.approx(expected_decode + 0.4 * expected_aux, rel=1e-4)
    assert abs(expected_aux - expected_decode) > 1e-3  # the two terms can be told apart

    # the saved segmenter has no auxiliary head and the trained decode path
    final = upernet_run.model
    assert "auxiliary_head" not in [layer.name for layer in final.layers]
    np.testing.assert_allclose(np.asarray(final(x, training=False)), decode, rtol=1e-4, atol=1e-4)


class Interrupt(keras.callbacks.Callback):
    """Stops the process's training after the checkpoint of epoch ``at``."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_continues_exactly(upernet_run, scenes, tmp_path):
    # mmseg's augmentation, drop path, the heads' dropout, the warm-up and a
    # resume in the middle of a data pass (iteration 3 of 4) that then
    # crosses into the next pass.
    whole = upernet_run
    with pytest.raises(KeyboardInterrupt):
        seg_training.train(scenes, output_dir=tmp_path / "cut", callbacks=[Interrupt(at=0)], **UPERNET)
    resumed = seg_training.train(scenes, output_dir=tmp_path / "cut", **UPERNET)
    assert resumed.initial_epoch == 1
    np.testing.assert_allclose(resumed.history["step_loss"], whole.history["step_loss"][-3:], rtol=1e-5)
    assert resumed.training_model.optimizer.iterations.numpy() == 6
    for a, b in zip(resumed.training_model.weights, whole.training_model.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6, err_msg=a.path)
    with open(tmp_path / "cut" / "log.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]


# ---------------------------------------------------------------- command line


def _load_tool():
    return load_tool("train_segmentation")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train", "{missing}"], "error: --train: .* is not a directory"),
        (["--train", "{scenes}", "--variant", "1,x,5,1"],
         "error: --variant must be comma-separated integers, got '1,x,5,1'"),
        (["--train", "{scenes}", "--variant", "1,1,5"], "error: --variant needs four stage depths"),
        (["--train", "{scenes}", "--crop-size", "64,64,3"], "error: --crop-size must be N or H,W"),
        (["--train", "{scenes}", "--variant", "tiny"], "error: variant must be one of"),
        (["--train", "{scenes}", "--num-classes", "2", "--variant", "1,1,5,1", "--crop-size", "64"],
         r"error: Mask .* has values \[.*\].* num_classes=2"),
        (["--train", "{scenes}", "--iterations", "10", "--iterations-per-epoch", "3"],
         r"error: iterations_per_epoch \(3\) must divide iterations \(10\)"),
    ],
)
def test_command_rejects_bad_arguments(argv, message, scenes, tmp_path, capsys):
    tool = _load_tool()
    argv = [a.format(scenes=scenes, missing=tmp_path / "missing") for a in argv]
    assert tool.main(argv + ["--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


def test_command_line_errors_without_traceback(scenes, tmp_path):
    """As a process: argparse's errors and ours exit 2 with one message."""
    tool = str(ROOT / "tools" / "train_segmentation.py")
    cases = [
        ([], "the following arguments are required: --train"),
        (["--train", str(scenes), "--head", "deeplab"], "argument --head: invalid choice"),
        (["--train", str(tmp_path / "missing")], "error: --train: "),
    ]
    for argv, message in cases:
        result = subprocess.run([sys.executable, tool, *argv], capture_output=True, text=True,
                                timeout=300, cwd=ROOT)
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
