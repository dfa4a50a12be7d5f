"""Next-ViT (Li et al., 2022) for Keras 3: TensorFlow, JAX and PyTorch backends."""

import os
import sys

if "tensorflow" not in sys.modules:
    # Quiet TensorFlow's C++ start-up logging unless the user chose a level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

# Public name -> the submodule that defines it. The submodules import Keras
# (and with it the backend, TensorFlow by default), so they load on first use
# of a name, or as soon as Keras itself is imported (see _load, _after_import):
# ``keras-nextvit --help`` and ``import keras_nextvit`` alone stay instant.
_EXPORTS = {
    "AdamW": "optimizers",
    "export": "exporters",
    "freeze_stages": "finetune",
    "replace_classifier": "finetune",
    "unfreeze": "finetune",
    "MHCA": "layers",
    "MLP": "layers",
    "NCB": "layers",
    "NTB": "layers",
    "ConvBNReLU": "layers",
    "DropPath": "layers",
    "EfficientMHSA": "layers",
    "PatchEmbed": "layers",
    "NextViT": "model",
    "NextViTBase": "model",
    "NextViTLarge": "model",
    "NextViTSmall": "model",
    "feature_extractor": "model",
    "stage_plan": "model",
    "decode_predictions": "preprocessing",
    "load_image": "preprocessing",
    "preprocess_input": "preprocessing",
    "PRESETS": "presets",
    "VARIANTS": "presets",
    "merge_batchnorm": "reparam",
    "NextViTMaskRCNN": "detection",
    "detect": "detection",
    "NextViTSegmenter": "segmentation",
    "segment": "segmentation",
    "CheckpointError": "weights",
    "get_preset": "weights",
    "load_backbone_weights": "weights",
    "load_torch_weights": "weights",
    "torch_state_dict_spec": "weights",
}

__all__ = sorted(_EXPORTS)


def _load():
    """Import every submodule behind the public names: this registers the
    layers and models with Keras' serialization (``keras.saving.load_model``
    of a saved Next-ViT needs them)."""
    import importlib

    if _STATE["loaded"]:
        return
    initializing = [
        module for name, module in list(sys.modules.items())
        if name.startswith(f"{__name__}.") and getattr(module.__spec__, "_initializing", False)
    ]
    if initializing:
        # Keras was imported by one of our own submodules, half-way through
        # its import: loading the others now could import it circularly.
        # The next public name used loads them.
        return
    _STATE["loaded"] = True
    for module in dict.fromkeys(_EXPORTS.values()):
        importlib.import_module(f".{module}", __name__)


_STATE = {"loaded": False}


def _after_import(name, action):
    """Run ``action()`` once module ``name`` has been imported: now if it
    already is, else from a one-shot import hook."""
    import importlib.abc
    import importlib.util

    if sys.modules.get(name) is not None:
        action()
        return

    class _AfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)  # one shot; also stops the recursion below
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                action()

            spec.loader.exec_module = exec_module
            return spec

    if not any(getattr(finder, "keras_nextvit_waits_for", None) == name for finder in sys.meta_path):
        finder = _AfterImport()
        finder.keras_nextvit_waits_for = name
        sys.meta_path.insert(0, finder)


def __getattr__(name):
    import importlib

    if name == "hub":  # keras_nextvit.hub without importing keras-hub first
        return importlib.import_module(".hub", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import keras  # noqa: F401  (first: its import hook loads the submodules in order)

    _load()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _import_hub():
    # Registers NextViTBackbone & co. with Keras, so that
    # ``keras_hub.models.ImageClassifier.from_preset(folder)`` finds them.
    # keras-hub imports TensorFlow (its tf.data preprocessing), so this waits
    # for the user to import keras-hub rather than loading it on every backend.
    from . import hub  # noqa: F401


_after_import("keras", _load)
_after_import("keras_hub", _import_hub)
