"""SavedModel export with a named serving signature.

The signature is ``serving_default`` with one input ``images`` (NHWC) and one
output per model output, named after it. With ``uint8_input=True`` the input
is a uint8 image batch and the ImageNet normalisation runs inside the graph.
"""

import keras
import numpy as np

from .. import presets
from .verify import run_in_batches

SIGNATURE = "serving_default"
INPUT_NAME = "images"


def output_names(model):
    names = list(model.output_names)
    if len(names) == 1 and names[0] == "head_fc":
        return ["logits"]
    return names


def serving_fn(model, uint8_input=False, mean=presets.IMAGENET_MEAN, std=presets.IMAGENET_STD):
    """``images -> [outputs]``: what every exported graph computes."""
    from ..preprocessing import preprocess_input

    def serve(images):
        x = preprocess_input(images, mean, std) if uint8_input else images
        outputs = model(x, training=False)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    return serve


def input_spec(model, batch_size, dtype="float32"):
    import tensorflow as tf

    h, w, c = model.inputs[0].shape[1:]
    return tf.TensorSpec((batch_size, h, w, c), tf.dtypes.as_dtype(dtype), name=INPUT_NAME)


def export_saved_model(model, path, batch_size=1, uint8_input=False, for_converter=False, **preprocess):
    """Write ``model`` as a SavedModel at ``path``; returns ``path``.

    ``for_converter=True`` writes through Keras' ``ExportArchive``, whose
    variables the TFLite converter freezes correctly (from a plain
    ``tf.Module`` it leaves them uninitialised); that archive stores every
    weight twice, so the SavedModel users get is a plain ``tf.Module``.
    """
    import tensorflow as tf

    names = output_names(model)
    serve = serving_fn(model, uint8_input, **preprocess)

    @tf.function(autograph=False)
    def endpoint(images):
        return dict(zip(names, serve(images)))

    spec = input_spec(model, batch_size, "uint8" if uint8_input else "float32")
    if for_converter:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=endpoint, input_signature=[spec])
        archive.write_out(str(path), verbose=False)
        return str(path)
    module = tf.Module()
    module.model = model
    tf.saved_model.save(
        module, str(path), signatures={SIGNATURE: endpoint.get_concrete_function(spec)}
    )
    return str(path)


class SavedModelRunner:
    """Calls a SavedModel's serving signature on NumPy batches."""

    def __init__(self, path, names):
        import tensorflow as tf

        self._tf = tf
        self.signature = tf.saved_model.load(str(path)).signatures[SIGNATURE]
        self.names = names
        spec = self.signature.structured_input_signature[1][INPUT_NAME]
        self.dtype = spec.dtype.as_numpy_dtype
        self.batch = spec.shape[0]

    def _run(self, images):
        outputs = self.signature(**{INPUT_NAME: self._tf.constant(images)})
        return [outputs[name].numpy() for name in self.names]

    def __call__(self, images):
        return run_in_batches(self._run, np.asarray(images, self.dtype), self.batch)
