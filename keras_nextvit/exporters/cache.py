"""What one model's exports share within a process, kept while the model
lives and its weights are unchanged.

Exporting a model to several formats (``tutorials/03_deployment.ipynb``
writes seven) used to fold its BatchNorms once per export and write one
SavedModel per TFLite conversion, although the float modes (``none``,
``float16``) convert the same traced form and the integer modes (``int8``,
``int8_float_attention``) another. An entry is keyed on the model object
and the export's settings and stamped with a fingerprint of every weight's
bytes: a model trained, quantized or reloaded in between is derived again.
"""

import hashlib
import weakref

import numpy as np


def weights_fingerprint(model):
    """A digest of every variable's path, shape, dtype and bytes (about 0.1 s
    for Next-ViT-S's 31 M values)."""
    digest = hashlib.blake2b(digest_size=16)
    for variable in model.weights:
        value = np.ascontiguousarray(variable.numpy() if hasattr(variable, "numpy") else np.asarray(variable))
        digest.update(f"{variable.path}|{value.shape}|{value.dtype}".encode())
        digest.update(memoryview(value).cast("B"))
    return digest.hexdigest()


class DerivedCache:
    """``get(model, key, make)``: ``make()``'s value for ``model`` and ``key``,
    made again when the model's weights have changed since. Holds the model
    weakly; a value must not refer to the model (it would keep it alive)."""

    def __init__(self):
        self._entries = weakref.WeakKeyDictionary()

    def get(self, model, key, make):
        fingerprint = weights_fingerprint(model)
        entries = self._entries.setdefault(model, {})
        found = entries.get(key)
        if found is not None and found[0] == fingerprint:
            return found[1]
        entries.pop(key, None)  # free the stale value before making the new one
        value = make()
        entries[key] = (fingerprint, value)
        return value
