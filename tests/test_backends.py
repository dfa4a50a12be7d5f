"""The parity tests (classifier, segmenters and detector) and keras-hub's
conformance harness again, on the JAX and PyTorch backends of Keras.

Each backend runs in its own process (Keras picks its backend at import).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import JAX_QUICK_COMPILE_UNFUSED

HERE = pathlib.Path(__file__).parent


def _require(backend, module):
    """Skip without ``module`` installed; in CI, which must test every
    backend, fail instead."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed; CI must test the {backend} backend.")
        pytest.skip(f"{module} is not installed")


PARITY_FILES = (
    "test_parity.py", "test_segmentation_parity.py", "test_detection_parity.py",
    "test_detection_ops.py",
)
# keras-hub's own test harness on NextViTBackbone and NextViTImageClassifier
HUB_HARNESS_FILES = ("test_hub_harness.py",)


@pytest.mark.parametrize(
    "backend,module,files",
    [
        # on JAX the harness shares the parity run's process: the backbones' initialisers
        # and eager ops compile once per shape and dtype, and both files build the same
        # tiny Next-ViT
        pytest.param("jax", "jax", PARITY_FILES + HUB_HARNESS_FILES, id="jax-jax"),
        pytest.param("torch", "torch", PARITY_FILES, id="torch-torch"),
        pytest.param("torch", "torch", HUB_HARNESS_FILES, id="hub_harness-torch"),
    ],
)
@pytest.mark.slow
def test_parity_on_backend(backend, module, files):
    _require(backend, module)
    if set(HUB_HARNESS_FILES) <= set(files):
        _require(backend, "keras_hub")
        _require(backend, "grain")  # imported by keras-hub's harness
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":
        env.update(JAX_QUICK_COMPILE_UNFUSED)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [str(HERE / name) for name in files],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, f"{', '.join(files)} on {backend} failed:\n{tail}"
    assert " passed" in result.stdout and "failed" not in result.stdout, tail


TORCH_DIRECT_FORMS = r"""
import contextlib
from unittest import mock
import numpy as np, keras, torch
import keras_nextvit
from keras_nextvit import torch_fast

assert torch_fast.active()
keras.utils.set_random_seed(0)
model = keras_nextvit.NextViT((1, 1, 5, 1), input_shape=(64, 64, 3), classes=10, drop_path_rate=0.0)
rng = np.random.default_rng(0)
for layer in model._flatten_layers():  # non-trivial BatchNorm statistics
    if isinstance(layer, keras.layers.BatchNormalization):
        n = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(0, 0.1, n))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
y = np.array([3, 7])

def forward(m):
    return keras.ops.convert_to_numpy(m(x, training=False))

def check_inference(m):
    with torch_fast.disabled():
        plain = forward(m)
    # with autograd on (F.linear), and without it (cached 1x1-convolution
    # weights and BatchNorm scale and shift), as predict_on_batch runs
    for direct in (forward(m), m.predict_on_batch(x)):
        assert np.abs(direct - plain).max() <= 1e-5 * np.abs(plain).max(), np.abs(direct - plain).max()

check_inference(model)
# predict_on_batch took the fused oneDNN forms (BatchNorm folded, prepacked
# weights), which PyTorch's CPU wheels have.
assert torch_fast._packing_available()
assert sum("packed" in key for key, _ in torch_fast._MADE.values()) >= 20
# training=True without autograd: batch statistics, never the folded form.
with torch.no_grad():
    with torch_fast.disabled():
        plain = keras.ops.convert_to_numpy(model(x, training=True))
    direct = keras.ops.convert_to_numpy(model(x, training=True))
assert np.abs(direct - plain).max() <= 1e-5 * np.abs(plain).max()
check_inference(model)  # the moving statistics moved: the folded weights follow
print("INFERENCE OK")

# keras_nextvit.AdamW is Keras' own fused AdamW here (torch._foreach updates)
assert type(keras_nextvit.AdamW(1e-3)) is type(keras.optimizers.AdamW(1e-3))
assert type(keras_nextvit.AdamW(1e-3)) is not keras_nextvit.AdamW

merged = keras_nextvit.merge_batchnorm(model)  # the deploy form takes the same route
check_inference(merged)
print("DEPLOY OK")

# One training step from the same weights: same loss, same updated weights
# (gradients flow through the direct forms; BatchNorm trains in Keras' form).
# The step runs with a smooth activation in place of ops.relu, which both
# forms call alike when training: at ReLU's kink a unit whose input lies
# within rounding of zero can fall on either side in the two forms' summation
# orders, and its whole gradient is passed in one and dropped in the other
# (seen on an Intel Xeon: one hidden unit of a block's fc1, then every weight
# before it 1e-3 apart). The fused ReLU of inference is checked above.
weights = model.get_weights()
results = []
for ctx in (torch_fast.disabled, contextlib.nullcontext):
    model.set_weights(weights)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with ctx(), mock.patch.object(keras.ops, "relu", keras.ops.softplus):
        loss = model.train_on_batch(x, y)
    results.append((float(loss), model.get_weights()))
(loss_plain, w_plain), (loss_direct, w_direct) = results
assert abs(loss_plain - loss_direct) <= 1e-5 * abs(loss_plain), (loss_plain, loss_direct)
# Biases that start at zero and feed a BatchNorm (directly or through the
# residual stream) get gradients of pure rounding, ~1e-7 in either form:
# compare with an absolute floor.
worst = max(np.abs(p - d).max() / (np.abs(p).max() + 1e-2) for p, d in zip(w_plain, w_direct))
assert worst <= 1e-4, worst
moved = max(np.abs(p - w).max() for p, w in zip(w_direct, weights))
assert moved > 1e-3, moved  # the step did change the weights
# What the inference forms kept from the old weights is remade from the new.
check_inference(model)
print("TRAINING OK")
"""


@pytest.mark.slow
def test_torch_direct_forms_match_keras():
    """On the PyTorch backend the blocks compute their sub-layers directly in
    PyTorch (keras_nextvit.torch_fast); that form must equal Keras' own, in
    inference, in the deploy form and through a training step."""
    _run_on_backend("torch", TORCH_DIRECT_FORMS, "TRAINING OK")


def _run_on_backend(backend, script, last_line):
    """Run ``script`` in a process of its own on ``backend``; it must end
    printing ``last_line``."""
    _require(backend, backend)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":
        env.update(JAX_QUICK_COMPILE_UNFUSED)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert last_line in result.stdout


JAX_MATRIX_DENSE = r"""
import contextlib
from unittest import mock
import numpy as np, keras
import keras_nextvit
from keras_nextvit import torch_fast

rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
y = np.array([3, 7])
keras.utils.set_random_seed(0)
reference = keras_nextvit.NextViT((1, 1, 5, 1), input_shape=(64, 64, 3), classes=10, drop_path_rate=0.0)
weights = reference.get_weights()

def one_step(plain):
    model = keras_nextvit.NextViT((1, 1, 5, 1), input_shape=(64, 64, 3), classes=10, drop_path_rate=0.0)
    model.set_weights(weights)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # traced (jit) inside the context: Keras' own Dense throughout. The step
    # runs with a smooth activation in place of ReLU, whose kink can pass a
    # unit's gradient in one form's rounding and drop it in the other's (see
    # the PyTorch test).
    with torch_fast.disabled() if plain else contextlib.nullcontext():
        logits = model.predict_on_batch(x)
        with mock.patch.object(keras.ops, "relu", keras.ops.softplus):
            loss = model.train_on_batch(x, y)
    return logits, float(loss), model.get_weights()

(l_plain, loss_plain, w_plain), (l_matrix, loss_matrix, w_matrix) = one_step(True), one_step(False)
assert np.abs(l_plain - l_matrix).max() <= 1e-5 * np.abs(l_plain).max()
assert abs(loss_plain - loss_matrix) <= 1e-5 * abs(loss_plain), (loss_plain, loss_matrix)
worst = max(np.abs(p - d).max() / (np.abs(p).max() + 1e-2) for p, d in zip(w_plain, w_matrix))
assert worst <= 1e-4, worst
assert max(np.abs(p - w).max() for p, w in zip(w_matrix, weights)) > 1e-3
# keras_nextvit.AdamW is Keras' own AdamW on JAX (XLA merges the scalars)
assert type(keras_nextvit.AdamW(1e-3)) is keras.optimizers.AdamW
print("JAX OK")
"""


@pytest.mark.slow
def test_jax_dense_as_matrix_matches_keras():
    """On JAX the blocks' Dense layers on feature maps run as one matrix
    product of the flattened rows (a faster gradient under XLA); inference and
    a training step must equal Keras' own Dense."""
    _run_on_backend("jax", JAX_MATRIX_DENSE, "JAX OK")


JAX_MERGED_BUFFERS = r"""
import numpy as np, keras
import keras_nextvit

keras.utils.set_random_seed(0)
model = keras_nextvit.NextViT((1, 1, 5, 1), input_shape=(32, 32, 3), classes=10, drop_path_rate=0.0)
merged = keras_nextvit.merge_batchnorm(model)
x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
# Keras' predict on JAX donates the model's arrays to XLA: each model must
# own its weights, whichever runs first.
before = model.predict(x, verbose=0)
after = merged.predict(x, verbose=0)
again = model.predict(x, verbose=0)
np.testing.assert_array_equal(before, again)
assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
print("MERGED OK")
"""


@pytest.mark.slow
def test_merged_model_owns_its_weights_on_jax():
    """``merge_batchnorm`` copies the weights it keeps unchanged: on JAX a
    shared array was deleted by the other model's ``predict`` ("Array has
    been deleted")."""
    _run_on_backend("jax", JAX_MERGED_BUFFERS, "MERGED OK")
