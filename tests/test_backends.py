"""The parity tests (classifier and segmenters) again, on the JAX and PyTorch
backends of Keras.

Each backend runs in its own process (Keras picks its backend at import).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent


@pytest.mark.parametrize("backend,module", [("jax", "jax"), ("torch", "torch")])
def test_parity_on_backend(backend, module):
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed; CI must test the {backend} backend.")
        pytest.skip(f"{module} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            str(HERE / "test_parity.py"), str(HERE / "test_segmentation_parity.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, f"parity on {backend} failed:\n{tail}"
    assert " passed" in result.stdout and "failed" not in result.stdout, tail
