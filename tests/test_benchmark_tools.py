"""tools/benchmark.py's table as data (``--json``) and tools/plot_benchmark.py,
on a hand-made table (the benchmark itself takes minutes per row)."""

import json

import pytest
from conftest import load_tool

benchmark = load_tool("benchmark")
plot_benchmark = load_tool("plot_benchmark")


def table():
    """Two batch sizes as ``benchmark.main`` collects them; one row failed."""
    return [
        (1, {
            "keras XLA": {"median_ms": 30.0, "min_ms": 29.0, "rounds": 2},
            "tflite fp32": {"median_ms": 20.0, "min_ms": 19.5, "rounds": 2, "size_mb": 120.0},
            "onnx ORT": {"error": "onnxruntime is not installed"},
            "torch eager (reference)": {"median_ms": 40.0, "min_ms": 38.0, "rounds": 2},
        }),
        (8, {
            "keras XLA": {"median_ms": 160.0, "min_ms": 150.0, "rounds": 2},
            "torch eager (reference)": {"median_ms": 200.0, "min_ms": 190.0, "rounds": 2},
        }),
    ]


def write(tmp_path, *options):
    path = tmp_path / "run.json"
    benchmark.write_record(benchmark.parse(["--json", str(path), *options]), table())
    return path


def test_the_record_holds_every_row_with_its_ratio_to_the_reference(tmp_path):
    data = json.loads(write(tmp_path, "--rounds", "2").read_text())
    assert (data["model"], data["image_size"], data["rounds"], data["repeats"]) == ("Next-ViT-S", [224, 224], 2, 20)
    assert data["reference"] == "torch eager (reference)" and data["cpu"]
    assert data["versions"]["keras"] and data["versions"]["tensorflow"]  # from the installed packages
    one, eight = data["batches"]
    assert (one["batch"], eight["batch"]) == (1, 8)
    rows = {row["name"]: row for row in one["rows"]}
    assert list(rows) == list(table()[0][1])  # every row, in the table's order
    assert rows["tflite fp32"]["ratio_to_reference"] == pytest.approx(0.5)
    assert rows["tflite fp32"]["size_mb"] == 120.0 and rows["tflite fp32"]["min_ms"] == 19.5
    assert rows["onnx ORT"] == {"name": "onnx ORT", "error": "onnxruntime is not installed"}
    per_image = {row["name"]: row["ms_per_image"] for row in eight["rows"]}
    assert per_image == {"keras XLA": 20.0, "torch eager (reference)": 25.0}
    assert [row["ratio_to_reference"] for row in eight["rows"]] == [pytest.approx(0.8), pytest.approx(1.0)]


def test_the_record_names_each_task_and_size():
    detection = benchmark.record(benchmark.parse(["--task", "detection"]), table()[:1])
    assert detection["model"] == "Next-ViT-S + Mask R-CNN" and detection["image_size"] == [800, 1216]
    segmentation = benchmark.record(benchmark.parse(["--task", "segmentation", "--head", "upernet"]), [])
    assert segmentation["model"] == "Next-ViT-S + UperNet" and segmentation["head"] == "upernet"
    assert segmentation["image_size"] == [512, 512]
    # without a reference row the ratios are None, not a division by zero
    alone = benchmark.record(benchmark.parse([]), [(1, {"keras XLA": {"median_ms": 3.0, "min_ms": 2.0}})])
    assert alone["batches"][0]["rows"][0]["ratio_to_reference"] is None


def test_the_plot_draws_the_run(tmp_path, capsys):
    out = tmp_path / "latency.png"
    assert plot_benchmark.main([str(write(tmp_path)), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert f"wrote {out}" in capsys.readouterr().out
    figure = plot_benchmark.plot(plot_benchmark.load(tmp_path / "run.json"))
    first, second = figure.axes
    assert [t.get_text() for t in first.get_yticklabels()] == [
        "torch eager (reference)", "keras XLA", "tflite fp32",  # slowest first: fastest at the top
    ]
    assert first.get_title(loc="left") == "failed: onnx ORT"  # the failed row is named
    assert any("(0.50x)" in t.get_text() for t in first.texts)


def test_the_plot_refuses_what_is_not_a_run(tmp_path, capsys):
    assert plot_benchmark.main([str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert plot_benchmark.main([str(tmp_path / "bad.json")]) == 2
    assert "is not JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"model": "x", "cpu": "y"}))
    assert plot_benchmark.main([str(tmp_path / "other.json")]) == 2
    assert "has no image_size, batches, reference" in capsys.readouterr().err
