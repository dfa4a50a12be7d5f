"""Every tutorial notebook runs top to bottom and saves its figures."""

import pathlib
import shutil

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = pathlib.Path(__file__).parent.parent / "tutorials"
EXPECTED_FIGURES = {
    "01_quickstart": ["01_predictions.png"],
    "02_attention_and_features": [
        "02_stage_pca.png", "02_stage1_channels.png", "02_activation_stats.png",
        "02_key_strips.png", "02_attention_stage2.png", "02_attention_stage4.png",
        "02_local_vs_global.png", "02_grad_cam.png",
    ],
    "03_deployment": ["03_latency.png"],
    "04_finetuning": ["04_curves.png", "04_predictions.png"],
    "05_segmentation": [
        "05_photo_segmentation.png", "05_scenes.png", "05_curves.png", "05_predictions.png",
    ],
    "06_keras_hub": ["06_deeplab.png", "06_detections.png"],
    "07_detection": [
        "07_detections.png", "07_anchors.png", "07_proposals.png", "07_roi_levels.png", "07_masks.png",
    ],
    "08_detection_training": ["08_dataset.png", "08_curves.png", "08_detections.png"],
}


def test_every_notebook_is_listed():
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
@pytest.mark.slow
def test_tutorial_runs(name, tmp_path):
    source = TUTORIALS / f"{name}.ipynb"
    shutil.copy(source, tmp_path)
    notebook = nbformat.read(tmp_path / source.name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    for figure in EXPECTED_FIGURES[name]:
        path = tmp_path / "figures" / figure
        assert path.exists() and path.stat().st_size > 5000, figure
