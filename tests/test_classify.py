"""``keras-nextvit classify`` and ``validate`` (keras_nextvit.classify):
image folders, labels, the scores against a hand computation, artifacts
against their own runners, and the mistakes a user makes."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_nextvit import classify, cli
from keras_nextvit.preprocessing import imagenet_classes

TINY = ["--variant", "1,1,5,1", "--size", "32", "--batch-size", "4", "--no-progress"]


def photos(folder, count=3, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"photo{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 56, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def imagenet_layout(root, classes, per_class=2, seed=0, size=36):
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(
                root / name / f"{i}.JPEG", format="JPEG")
    return root


def test_image_files_reads_folders_and_refuses_what_is_not_there(tmp_path):
    paths = photos(tmp_path / "a")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    nested = photos(tmp_path / "a" / "more", count=1)
    assert classify.image_files([tmp_path / "a"]) == sorted(paths + nested)
    assert classify.image_files([paths[1], paths[0]]) == [paths[1], paths[0]]
    with pytest.raises(FileNotFoundError, match="missing.jpg: no such file or folder"):
        classify.image_files([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no image files"):
        classify.image_files([tmp_path / "empty"])
    transform = classify.Transform()
    with pytest.raises(ValueError, match="notes.txt is not an image that can be read"):
        transform.load(tmp_path / "a" / "notes.txt")


def test_the_transform_is_the_presets_and_normalises_as_preprocess_input(tmp_path):
    from keras_nextvit.preprocessing import load_image, preprocess_input

    small = classify.Transform.of("nextvit_small.bd_in1k_384")
    assert (small.size, small.crop_pct, small.interpolation) == (384, 1.0, "bicubic")
    assert classify.Transform.of("nextvit_small.bd_in1k", size=64).size == 64
    (path,) = photos(tmp_path, count=1)
    expected = preprocess_input(load_image(str(path), preset="nextvit_small.bd_in1k", size=64))
    np.testing.assert_allclose(classify.Transform.of("nextvit_small.bd_in1k", size=64).load(path), expected,
                               rtol=1e-6, atol=1e-6)
    for bad, message in [(dict(size=16), "at least 32 pixels"), (dict(crop_pct=1.5), r"crop_pct must be in \(0, 1\]"),
                         (dict(std=(1, 0, 1)), "std must be positive"), (dict(mean=(1, 2)), "three values")]:
        with pytest.raises(ValueError, match=message):
            classify.Transform(**bad)


def test_labelled_folder_takes_imagenet_ids_or_sorted_names(tmp_path):
    wnids = classify.imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and len(imagenet_classes()) == 1000
    # a subset of ImageNet's classes keeps their indices in the 1000
    root = imagenet_layout(tmp_path / "subset", [wnids[7], wnids[3]])
    files, labels, names = classify.labelled_folder(root)
    assert [f.parent.name for f in files] == [wnids[3]] * 2 + [wnids[7]] * 2
    assert labels.tolist() == [3, 3, 7, 7] and names == wnids
    # another class set: the sorted folder names are the classes 0..n-1
    root = imagenet_layout(tmp_path / "other", ["zebra", "apple", "mango"])
    files, labels, names = classify.labelled_folder(root, num_classes=3)
    assert names == ["apple", "mango", "zebra"] and labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match=r"has 3 class folders \(apple, mango, zebra\), but the model has 1000"):
        classify.labelled_folder(root)
    files, labels, _ = classify.labelled_folder(root, num_classes=3, limit=4)
    assert len(files) == 4 and all(labels[i] == int(["apple", "mango", "zebra"].index(f.parent.name))
                                   for i, f in enumerate(files))
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        classify.labelled_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    photos(tmp_path / "flat")
    with pytest.raises(ValueError, match="has no class folders"):
        classify.labelled_folder(tmp_path / "flat")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="its class folders hold no image files"):
        classify.labelled_folder(tmp_path / "hollow", num_classes=1)


def test_validate_counts_equal_a_hand_computation(tmp_path):
    """Two stand-in classifiers whose logits are a fixed function of the
    image: top-1, top-5, loss and agreement as counted by hand."""
    root = imagenet_layout(tmp_path / "val", [f"c{i}" for i in range(7)], per_class=3)
    files, labels, _ = classify.labelled_folder(root, num_classes=7)
    transform = classify.Transform(size=32)
    images = transform.batch(files)
    weights = np.random.default_rng(1).normal(size=(images[0].size, 7)) / np.sqrt(images[0].size)

    def first(x):
        return x.reshape(len(x), -1) @ weights

    def second(x):
        return first(x) + np.linspace(0, 3, 7)  # shifts some top-1s

    rows = classify.validate(files, labels, {"a": first, "b": second}, transform, batch_size=4)
    for row, fn in zip(rows, (first, second)):
        logits = fn(images)
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        assert row.images == 21
        assert row.top1 == np.mean(np.argmax(logits, -1) == labels)
        assert row.top5 == np.mean([labels[i] in top5[i] for i in range(21)])
        np.testing.assert_allclose(row.loss, -np.mean(log_probs[np.arange(21), labels]), rtol=1e-9)
        assert row.agreement == np.mean(np.argmax(logits, -1) == np.argmax(first(images), -1))
        assert row.ms_per_image > 0
    assert rows[0].agreement == 1.0 and rows[1].agreement < 1.0  # the shift does change some
    table = classify.format_table(rows)
    assert table.splitlines()[0].split() == ["model", "images", "top-1", "top-5", "loss", "agree", "ms/image"]


def test_the_artifacts_fix_the_input_size():
    from types import SimpleNamespace as Stub

    transform = classify.Transform.of("nextvit_small.bd_in1k")
    assert classify.check_sizes({"a": Stub(input_size=None)}, transform) == transform
    assert classify.check_sizes({"a": Stub(input_size=384)}, transform).size == 384
    with pytest.raises(ValueError, match=r"different input sizes: \{'a': 224, 'b': 384\}"):
        classify.check_sizes({"a": Stub(input_size=224), "b": Stub(input_size=384)}, transform)
    with pytest.raises(ValueError, match=r"--size 256 was asked for, but the artifacts take \{'a': 224\}"):
        classify.check_sizes({"a": Stub(input_size=224)}, transform, requested=256)


def test_a_fixed_batch_artifact_runs_a_shorter_last_batch():
    from keras_nextvit.exporters.verify import run_in_batches

    seen = []

    def run(x):
        seen.append(len(x))
        return [x.sum(axis=1)]

    x = np.arange(14.0).reshape(7, 2)
    (out,) = run_in_batches(run, x, 3)
    assert seen == [3, 3, 3]
    np.testing.assert_array_equal(out, x.sum(axis=1))


def test_classify_command_on_photos_writes_what_it_prints(tmp_path, capsys):
    photos(tmp_path / "photos")
    assert cli.main(["classify", str(tmp_path / "photos"), *TINY, "--top", "3",
                     "--json", str(tmp_path / "top.json")]) == 0
    out = capsys.readouterr().out
    assert "weights: none: randomly initialised" in out
    rows = json.loads((tmp_path / "top.json").read_text())
    assert [os.path.basename(r["file"]) for r in rows] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    for row in rows:
        assert len(row["top"]) == 3 and row["top"][0]["probability"] >= row["top"][1]["probability"]
        assert row["top"][0]["name"] == imagenet_classes()[row["top"][0]["index"]]
        assert f"{row['top'][0]['probability']:7.2%}  {row['top'][0]['index']:4d}" in out
    assert cli.main(["classify", str(tmp_path / "photos" / "photo1.jpg"), *TINY,
                     "--csv", str(tmp_path / "top.csv")]) == 0
    lines = (tmp_path / "top.csv").read_text().splitlines()
    assert lines[0] == "file,rank,index,name,probability" and len(lines) == 6


@pytest.mark.parametrize("args, message", [
    (["classify", "{tmp}/missing"], "missing: no such file or folder"),
    (["classify", "{tmp}/empty"], "empty holds no image files"),
    (["classify", "{tmp}/notes.txt"], "notes.txt is not an image that can be read"),
    (["classify", "{tmp}/photos", "--artifact", "{tmp}/model.pb"], "unknown artifact type '.pb'"),
    (["classify", "{tmp}/photos", "--artifact", "{tmp}/absent.onnx"], "absent.onnx: no such file"),
    (["classify", "{tmp}/photos", "--weights", "{tmp}/notes.txt"], "notes.txt: unknown checkpoint format"),
    (["classify", "{tmp}/photos", "--weights", "{tmp}/ten.weights.h5"],
     "ten.weights.h5 does not fit 'nextvit': it holds head_fc/kernel with shape (1024, 10), the model's is "
     "(1024, 1000)"),
    (["validate", "{tmp}/val", "--weights", "{tmp}/ten.weights.h5"], "holds head_fc/kernel with shape (1024, 10)"),
    (["classify", "{tmp}/photos", "--weights", "nextvit_tiny.bd_in1k"], "neither a file nor a preset"),
    (["classify", "{tmp}/photos", "--variant", "huge"], "variant must be small, base, large or four"),
    (["validate", "{tmp}/missing"], "missing: no such folder"),
    (["validate", "{tmp}/empty"], "has no class folders"),
    (["validate", "{tmp}/val", "--num-classes", "5"], "has 2 class folders"),
    (["validate", "{tmp}/val", "--compare"], "--compare runs the Keras model beside the --artifact files"),
    (["validate", "{tmp}/val", "--artifact", "{tmp}/model.pb"], "unknown artifact type '.pb'"),
])
def test_mistakes_end_in_one_line_and_status_2(tmp_path, capsys, args, message):
    photos(tmp_path / "photos", count=1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "model.pb").write_text("")
    imagenet_layout(tmp_path / "val", ["a", "b"], per_class=1)
    if "{tmp}/ten.weights.h5" in args:  # a checkpoint of 10 classes for a 1000-class (or 2-class) model
        import keras_nextvit

        keras_nextvit.NextViT(depths=(1, 1, 5, 1), classes=10).save_weights(tmp_path / "ten.weights.h5")
    argv = [a.format(tmp=tmp_path) for a in args]
    if "--variant" not in argv:
        argv += TINY
    if "--num-classes" not in argv and argv[0] == "validate":
        argv += ["--num-classes", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"keras-nextvit {argv[0]}: error:" in err and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_validate_compare_over_the_digits_model_and_its_exports(digits, tmp_path, capsys):
    """The digits model of the int8 tests (its held-out accuracy known) and
    its TFLite, ONNX and OpenVINO exports over the 96 held-out digits
    written as PNG class folders: one pass, one table, each row equal to a
    direct computation with the same runners; ``classify --artifact`` on
    the same images gives the ONNX runner's probabilities."""
    import keras_nextvit
    from keras_nextvit.exporters.onnx import ONNXRunner

    root = tmp_path / "digits"
    for k, index in enumerate(digits.held_out):
        folder = root / str(int(digits.labels[index]))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.round((digits.images[index] * 0.25 + 0.5) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    weights = tmp_path / "digits.weights.h5"
    digits.model.save_weights(weights)
    artifacts = {}
    for fmt, suffix in (("tflite", ".tflite"), ("onnx", ".onnx"), ("openvino", ".xml")):
        artifacts[fmt] = tmp_path / f"digits{suffix}"
        keras_nextvit.export(digits.model, artifacts[fmt], format=fmt, input_size=32, verify_export=False)
    model_args = ["--weights", str(weights), "--variant", "1,1,5,1", "--num-classes", "10", "--size", "32",
                  "--crop-pct", "1", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                  "--batch-size", "10", "--no-progress"]
    argv = ["validate", str(root), *model_args, "--compare", "--json", str(tmp_path / "table.json")]
    for path in artifacts.values():
        argv += ["--artifact", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["keras", "digits.tflite", "digits.onnx", "digits.xml"]
    for row in rows:
        assert f"{row['name']:<13}  {row['images']:>6}  {row['top1']:>7.2%}" in out

    files, labels, _ = classify.labelled_folder(root, num_classes=10)
    assert len(files) == 96
    images = classify.Transform(32, 1.0, "bicubic", (0.5,) * 3, (0.25,) * 3).batch(files)
    # the PNGs hold the digits to within rounding: the model's known accuracy
    np.testing.assert_allclose(images, digits.images[digits.held_out][np.argsort(
        [str(int(digits.labels[i])) for i in digits.held_out], kind="stable")], atol=0.01)
    direct = {"keras": np.asarray(digits.model(images)), **{
        os.path.basename(p): classify.artifact_classifier(p)(images) for p in artifacts.values()}}
    reference = np.argmax(direct["keras"], -1)
    for row in rows:
        logits = direct[row["name"]].astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        assert row["images"] == 96
        assert row["top1"] == np.mean(np.argmax(logits, -1) == labels)
        assert row["top5"] == np.mean(np.any(np.argsort(-logits, -1)[:, :5] == labels[:, None], -1))
        np.testing.assert_allclose(row["loss"], -np.mean(log_probs[np.arange(96), labels]), rtol=1e-5)
        assert row["agreement"] == np.mean(np.argmax(logits, -1) == reference)
    assert rows[0]["top1"] >= 0.9 and all(r["agreement"] >= 0.98 for r in rows)

    assert cli.main(["classify", str(root / "3"), *model_args, "--artifact", str(artifacts["onnx"]),
                     "--class-names", str(_names(tmp_path)), "--json", str(tmp_path / "onnx.json")]) == 0
    onnx_rows = json.loads((tmp_path / "onnx.json").read_text())
    threes = sorted((root / "3").iterdir())
    assert [r["file"] for r in onnx_rows] == [str(p) for p in threes]
    (logits,) = ONNXRunner(artifacts["onnx"])(classify.Transform(32, 1.0, "bicubic", (0.5,) * 3,
                                                                  (0.25,) * 3).batch(threes))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row, p in zip(onnx_rows, probs):
        assert row["top"][0]["index"] == int(np.argmax(p)) and row["top"][0]["name"] == f"digit {np.argmax(p)}"
        np.testing.assert_allclose([t["probability"] for t in row["top"]], np.sort(p)[::-1][:5], rtol=1e-5)


def _names(folder):
    path = folder / "names.txt"
    path.write_text("".join(f"digit {i}\n" for i in range(10)))
    return path


def test_a_backend_is_chosen_before_keras_starts(tmp_path, capsys):
    import keras

    running = keras.backend.backend()
    other = "jax" if running != "jax" else "torch"
    photos(tmp_path / "photos", count=1)
    assert cli.main(["classify", str(tmp_path / "photos"), *TINY, "--backend", other]) == 2
    err = capsys.readouterr().err
    assert f"--backend {other}: Keras is already running on {running} in this process" in err


@pytest.mark.slow
def test_validate_on_the_pytorch_backend(tmp_path):
    """``--backend torch`` from a fresh process: Keras starts on PyTorch
    (the command sets the backend before loading TensorFlow, which imports
    Keras) and validates the folder."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    imagenet_layout(tmp_path / "val", ["a", "b"], per_class=2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-m", "keras_nextvit.cli", "validate", str(tmp_path / "val"), *TINY,
         "--num-classes", "2", "--backend", "torch", "--json", str(tmp_path / "table.json")],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend torch" in result.stdout
    (row,) = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert row["name"] == "keras" and row["images"] == 4
