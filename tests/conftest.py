import contextlib
import gc
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's oneDNN build serves large tensors from a pool of its own (a
# BFC allocator) that never gives memory back: a process that has built,
# trained and exported many models keeps its largest moment resident (test
# files left 2-3 GB behind after every model was gone). malloc returns large
# blocks to the system when they are freed. Set before TensorFlow loads; the
# workers, notebooks' kernels and subprocesses inherit it.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
# Under pytest-xdist each worker has a core's worth of the machine (``-n 2``
# on 2 cores): one thread for TensorFlow's operations, for OpenMP (PyTorch,
# NumPy's BLAS) and for the exported artifacts' runtimes (TFLite, ONNX
# Runtime, OpenVINO: keras_nextvit's KERAS_NEXTVIT_NUM_THREADS), inherited by
# the worker's notebooks and subprocesses, instead of two workers each
# running pools of threads as wide as the machine and taking cores from each
# other. Set before TensorFlow, PyTorch and NumPy load; a value in the
# environment wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                      "KERAS_NEXTVIT_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

import numpy as np
import pytest

# --suite-profile FILE: each test's wall time and memory (tools/suite_profile.py)
import suite_profile_plugin
from suite_profile_plugin import pytest_addoption  # noqa: F401

# XLA's CPU compiler for the run's JAX subprocesses, which are compile-bound:
# on JAX, Keras builds a model by compiling each variable initializer for each
# shape, runs it eagerly op by op (each op compiled for each shape), and
# compiles a training step that then runs a few times. Without LLVM's
# optimisation, a training step of the tiny Next-ViT: 37 s -> 29 s. And
# without XLA's fusion emitters: a random initializer compiles in 0.05 s
# instead of 0.34 s (0.12 s without LLVM's optimisation alone); Next-ViT-S builds in
# 4.6 s instead of 13.6 and its first eager call takes 5.1 s instead of 10.0
# (a second call 0.6 s instead of 0.4); the JAX parity run took 125 s instead
# of 169, the dense-as-matrix test 19 s instead of 36 (one core of a 2-core
# Xeon each), the data-parallel training test 46 s instead of 69 s alone
# (three processes on two cores; Xeon of model 167): there the two processes'
# losses stay within 1e-7 of one device's at the first step and 4e-6 at the
# third, against that test's bounds of 1e-5 and 1e-4.
JAX_QUICK_COMPILE_UNFUSED = {
    "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
}

DATA = pathlib.Path(__file__).parent / "data"
TOOLS = pathlib.Path(__file__).parent.parent / "tools"


def load_tool(name, module_name=None):
    """``tools/{name}.py`` as a module (the tools are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name or name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# Golden cases of the reference implementation (see tests/data/README.md).
CASES = {
    "small_224_b2": "small",
    "small_64x96_feat": "small",
    "base_224": "base",
    "large_224": "large",
}


def golden(case):
    with np.load(DATA / f"{case}.npz") as data:
        return {key: data[key] for key in data.files}


def key_spec(variant, naming="timm"):
    keys = json.loads((DATA / f"nextvit_{variant}.keys.json").read_text())
    return [(name, tuple(shape)) for name, shape in keys[naming]]


_STATE_CACHE = {}


def synthetic_checkpoint(variant, naming="timm"):
    """The reference's synthetic weights (seed 0) in the given naming."""
    from keras_nextvit import synthetic

    key = (variant, naming)
    if key not in _STATE_CACHE:
        _STATE_CACHE[key] = synthetic.synthetic_state_dict(key_spec(variant, naming))
    return _STATE_CACHE[key]


def nhwc(array):
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def assert_close(actual, expected, rel=1e-4, what="output"):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual - expected)))
    bound = rel * float(np.max(np.abs(expected)))
    assert err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"


def infer(model, x):
    """``model`` on one batch in inference mode, its outputs as NumPy (a
    list for several). For a single batch, a call is the cheaper form on
    TensorFlow and PyTorch: TensorFlow's first ``predict`` traces the model
    into a graph (Next-ViT-S at 64x96: 2.4 s, the call 0.3 s; 2-core Xeon).
    On JAX, where each operation of a call is compiled for its shape,
    ``predict`` compiles one program."""
    import keras

    if keras.backend.backend() == "jax":
        return model.predict(x, verbose=0)
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in out]
    return keras.ops.convert_to_numpy(out)


@contextlib.contextmanager
def zero_initialised():
    """Models built inside start every weight at zero, made by NumPy, in
    place of Keras' initialisers: for models that are only inspected
    (weight names, shapes, counts) or whose every weight is loaded right
    after. On JAX each initialiser is an operation compiled for its shape
    (Next-ViT-S took 3.9 s to build with them, 1.4 s with zeros; 2-core
    Xeon); on TensorFlow and PyTorch they cost little."""
    from keras.src.layers.layer import Layer

    add_weight = Layer.add_weight

    def zeros(shape, dtype=None):
        return np.zeros(shape, dtype or "float32")

    def add_zero_weight(self, *args, **kwargs):
        return add_weight(self, *args, **dict(kwargs, initializer=zeros))

    Layer.add_weight = add_zero_weight
    try:
        yield
    finally:
        Layer.add_weight = add_weight


TINY = (1, 1, 5, 1)


def synthetic_tiny(input_shape=(64, 64, 3), **kwargs):
    """A tiny Next-ViT (depths 1, 1, 5, 1: every kind of block, an eighth of
    the layers of S) with synthetic weights and BatchNorm statistics, for
    tests of a route rather than of a published variant."""
    import keras_nextvit
    from keras_nextvit import synthetic, weights

    model = keras_nextvit.NextViT(TINY, input_shape=input_shape, drop_path_rate=0.0, **kwargs)
    spec = weights.torch_state_dict_spec(model)
    keras_nextvit.load_torch_weights(model, synthetic.synthetic_state_dict(spec))
    return model


@pytest.fixture(scope="session")
def synthetic_small():
    """Next-ViT-S at the golden 64x96 size with the reference's synthetic
    weights: the model the export tests convert (exports leave it as it
    was, so one serves them all)."""
    import keras_nextvit

    model = keras_nextvit.NextViTSmall(input_shape=(64, 96, 3))
    keras_nextvit.load_torch_weights(model, synthetic_checkpoint("small"))
    return model


@pytest.fixture(scope="session", autouse=True)
def _jax_compilation_cache(pytestconfig, tmp_path_factory):
    """One JAX compilation cache for the run's processes. On JAX, Keras runs
    eagerly op by op, and XLA compiles every operation for every shape it
    meets: building Next-ViT-S and its first call cost 14 s and 17 s of
    compiling in a fresh process, 3 s and 5 s in one that finds the
    executables of an earlier process on disk. The JAX processes of the run
    (the backend parity tests, keras-hub presets, data-parallel training)
    inherit the directory; a compiled executable is the same however it is
    found. A user's own ``JAX_COMPILATION_CACHE_DIR`` is kept."""
    root = run_root(pytestconfig, tmp_path_factory)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax-compilation-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory):
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def digits(pytestconfig, tmp_path_factory):
    """A small Next-ViT trained for 4 epochs on scikit-learn's digits
    (32x32, normalised; ~98% held-out accuracy), for the int8 exports: the
    synthetic weights make every image's logits point almost the same way,
    so only a trained model shows what int8 does to predictions. (After 2
    epochs, at ~88%, near-ties flip under any int8 and top-1 agreement
    measures the ties rather than the quantization.) Trained once per test
    run: the first worker that needs it saves its weights, the others load
    them. Returns a namespace with ``model``, ``images``, ``labels``,
    ``train`` and ``held_out`` indices, and ``calibration`` (8 batches of 8
    training images)."""
    import types

    sys.path.insert(0, str(DATA.parent.parent / "tools"))
    from int8_study import digits_data, digits_model, train_digits

    def make(directory):
        model = train_digits(epochs=4)[0]
        model.save_weights(directory / "digits.weights.h5")

    directory = shared_artifact(pytestconfig, tmp_path_factory, "digits", make)
    images, labels, train, held_out = digits_data()
    model = digits_model()
    model.load_weights(directory / "digits.weights.h5")
    # trained: its logits depend on the image (the model outputs logits;
    # accuracy reads their argmax)
    accuracy = float(np.mean(np.argmax(infer(model, images[held_out]), -1) == labels[held_out]))
    assert accuracy >= 0.9
    calibration = [images[train[i : i + 8]] for i in range(0, 64, 8)]
    return types.SimpleNamespace(
        model=model, images=images, labels=labels, train=train, held_out=held_out,
        calibration=calibration,
    )


# ---------------------------------------------------------------- the run
#
# The suite runs in two pytest-xdist workers (``-n 2``, the README's test
# command) under the scheduler below. Each test file is one group, so that a file's
# module-scoped fixtures are built once, on one worker; the files that take
# minutes and whose tests share nothing costly are split, a test (every
# parametrisation of it) to a group: each notebook, each backend subprocess,
# each training run. The groups start longest first, by the seconds the last
# profile gave them (``tools/suite_profile.py`` under ``-n 2``, 2-core Intel
# Xeon of model 167), so that the two workers end together; the rest follow
# in file order.

SPLIT_BY_TEST = {"test_tutorials.py", "test_backends.py", "test_training.py"}
SECONDS = {
    "test_export.py": 254,
    "test_export_coreml.py": 211,
    "test_tutorials.py::test_tutorial_runs::08_detection_training": 210,
    "test_backends.py::test_parity_on_backend::jax-jax": 163,
    "test_detection_training.py": 151,
    "test_hub.py": 123,
    "test_tutorials.py::test_tutorial_runs::03_deployment": 112,
    "test_tutorials.py::test_tutorial_runs::04_finetuning": 108,
    "test_segmentation_training.py": 102,
    "test_cli.py": 102,
    "test_tutorials.py::test_tutorial_runs::05_segmentation": 80,
    "test_export_openvino.py": 70,
    "test_training.py::test_jax_data_parallel_across_two_processes": 68,
    "test_segmentation_export.py": 68,
    "test_detection_export.py": 65,
    "test_tutorials.py::test_tutorial_runs::06_keras_hub": 61,
    "test_segmentation_model.py": 57,
    "test_tutorials.py::test_tutorial_runs::07_detection": 53,
    "test_weights.py": 49,
    "test_detection_inference.py": 44,
    "test_training.py::test_mirrored_strategy_two_devices_equals_one": 42,
    "test_training.py::test_resume_continues_exactly": 42,
    "test_hub_harness.py": 42,
    "test_model.py": 41,
    "test_detection_reference.py": 39,
    "test_classify.py": 38,
    "test_backends.py::test_parity_on_backend::torch-torch": 37,
    "test_training.py::test_mixed_precision": 33,
    "test_segmentation_reference.py": 32,
    "test_detection_parity.py": 24,
    "test_reparam.py": 23,
    "test_training.py::test_loss_goes_down": 22,
    "test_backends.py::test_jax_dense_as_matrix_matches_keras": 20,
    "test_training.py::test_ema_weights_are_what_training_returns": 20,
    "test_tutorials.py::test_tutorial_runs::01_quickstart": 20,
    "test_training.py::test_train_command": 19,
    "test_backends.py::test_parity_on_backend::hub_harness-torch": 17,
    "test_parity.py": 17,
    "test_detection_model.py": 17,
    "test_segmentation_parity.py": 17,
    "test_training.py::test_gradient_accumulation_equals_the_mean_gradient": 15,
    "test_detection_evaluation.py": 14,
    "test_torch_reference_detection.py": 14,
    "test_augment.py": 13,
}


def group_of(nodeid):
    """The group a test id belongs to: its file, or for the files split by
    test, its test (a notebook, a backend, a training run)."""
    path, _, name = nodeid.partition("::")
    path = path.rsplit("/", 1)[-1]
    if path not in SPLIT_BY_TEST:
        return path
    function, _, case = name.partition("[")
    if path == "test_training.py" or not case:  # a training run's cases share a group
        return f"{path}::{function}"
    return f"{path}::{function}::{case.rstrip(']')}"


def pytest_configure(config):
    suite_profile_plugin.pytest_configure(config)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's
def pytest_xdist_make_scheduler(config, log):
    """Under ``-n``: xdist's scope scheduler (a group runs whole on one
    worker, a worker takes the next group when it is free) with our groups,
    in the collection's order, which is longest first."""
    from xdist.scheduler import LoadScopeScheduling

    class LongestGroupsFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(nodeid)

    # keep the collection's order: xdist would otherwise start with the
    # groups that have the most tests, whatever they cost
    config.option.loadscopereorder = False
    return LongestGroupsFirst(config, log)


def pytest_collection_modifyitems(config, items):
    # in an xdist worker (whose collection the scheduler reads) only; a run
    # in one process keeps the files' order. A stable sort keeps each
    # group's tests together and in their order.
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: -SECONDS.get(group_of(item.nodeid), 0))


def pytest_collection_finish(session):
    """Once the test files (and with them TensorFlow, Keras, JAX, PyTorch)
    are imported: move every object alive now out of the garbage
    collector's sight. Those modules' objects live as long as the process,
    and every full collection (Keras runs one per variable it deletes,
    ``clear_session`` runs one, and Python its own) would walk them all
    again."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="module", autouse=True)
def _release_module_state(request):
    """After each test file: drop what it kept (its lru_cache'd models and
    checkpoints), Keras' and TensorFlow's global state, and give the freed
    memory back to the system, so that a worker stays small however many
    files it runs. Module-scoped fixtures are already finalised by then
    (this one is set up first, so it is torn down last)."""
    yield
    for value in list(vars(request.module).values()):
        if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
            value.cache_clear()
    _STATE_CACHE.clear()  # up to 1 GB for S, B and L in both namings; remade in 0.5 s each
    release_memory()


@pytest.fixture(autouse=True)
def _release_training_graphs():
    """After a test that traced a training step on TensorFlow: free the step's
    graph, which TensorFlow would keep for the life of the process."""
    yield
    if forget_custom_gradients():
        gc.collect()


def forget_custom_gradients():
    """Drop the gradient functions that ``tf.custom_gradient`` registered in
    graph mode; returns whether there were any.

    Keras' TensorFlow optimizer sums the gradients through the replica
    context's ``all_reduce``, a ``custom_gradient``; traced inside a
    ``tf.function`` it registers its gradient function in TensorFlow's global
    gradient registry under a new name, and that closure holds every gradient
    tensor of the traced training step: the step's whole graph stays alive
    (200-300 MB for the tiny Next-ViT, about 1 GB for a segmenter). Nothing
    here takes a second-order gradient of a training step, the only use of
    those entries."""
    ops = sys.modules.get("tensorflow.python.framework.ops")
    if ops is None:
        return False
    registry = ops._gradient_registry._registry
    stale = [name for name in registry if name.startswith("CustomGradient-")]
    for name in stale:
        del registry[name]
    return bool(stale)


def release_memory():
    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session(free_memory=True)
    forget_custom_gradients()
    gc.collect()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def shared_artifact(config, tmp_path_factory, name, make):
    """A directory made once per test run, however many xdist workers ask:
    the first calls ``make(directory)`` under a lock, the others wait for it
    and reuse the result (the run's temporary root, :func:`run_root`, is
    shared by workers)."""
    from filelock import FileLock

    directory = run_root(config, tmp_path_factory) / f"shared-{name}"
    with FileLock(str(directory) + ".lock"):
        if not (directory / ".done").exists():
            directory.mkdir(exist_ok=True)
            make(directory)
            (directory / ".done").write_text("")
    return directory


def run_root(config, tmp_path_factory):
    """The test run's temporary root, the same for every xdist worker: a
    worker's base directory lies one level below it. A worker is told by its
    config, not by the environment, which a pytest run in a worker's
    subprocess inherits."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if hasattr(config, "workerinput") else root
