"""Compiling the post-processing's array code on JAX.

Mask R-CNN's test-time steps have data-dependent sizes (proposal and
detection counts, RoIAlign's sampling grid), so the pipeline runs eagerly and
each step is a function of arrays plus a few Python integers read from the
data. Eager JAX compiles every operation separately for every new shape,
which makes an eager pipeline spend most of its time compiling; on JAX these
steps are therefore ``jax.jit``-compiled whole, with the integers as static
arguments (rounded up where a larger bound computes the same result, so that
few shapes are compiled). TensorFlow and PyTorch run them eagerly as they are.
"""

import functools
import weakref

import keras

_LAYER_FUNCTIONS = weakref.WeakKeyDictionary()


def _is_jax():
    return keras.backend.backend() == "jax"


def compiled(static=()):
    """Decorator: ``jax.jit(function, static_argnames=static)`` on JAX, the
    function itself elsewhere (the backend is read at the first call)."""

    def wrap(function):
        cache = {}

        @functools.wraps(function)
        def call(*args, **kwargs):
            if not _is_jax():
                return function(*args, **kwargs)
            if "jit" not in cache:
                import jax

                cache["jit"] = jax.jit(function, static_argnames=static)
            return cache["jit"](*args, **kwargs)

        return call

    return wrap


def call_layer(layer, *args, graph=False, training=False):
    """``layer(*args, training=training)``; for inference on JAX one
    compiled function per layer (and input shape), its weights passed in as
    arguments; on TensorFlow with ``graph`` one traced graph per layer, mode
    and input shape (worth its tracing for the backbone: 3.0 -> 2.2 s for
    Next-ViT-S at 800x1216; in training a GradientTape records one call and
    the backward pass runs as a graph too). The cached functions hold their
    layer weakly: they do not keep it alive."""
    backend = keras.backend.backend()
    owner = weakref.ref(layer)
    if backend == "tensorflow" and graph:
        functions = _LAYER_FUNCTIONS.setdefault(layer, {})
        if training not in functions:
            import tensorflow as tf

            functions[training] = tf.function(lambda *inputs: owner()(*inputs, training=training))
        return functions[training](*args)
    if training:
        return layer(*args, training=True)
    if backend != "jax":
        return layer(*args)
    functions = _LAYER_FUNCTIONS.setdefault(layer, {})
    if "jax" not in functions:
        import jax

        def stateless(trainable, non_trainable, *inputs):
            outputs, _ = owner().stateless_call(trainable, non_trainable, *inputs)
            return outputs

        functions["jax"] = jax.jit(stateless)
    return functions["jax"](
        [v.value for v in layer.trainable_variables],
        [v.value for v in layer.non_trainable_variables],
        *args,
    )


def bucket(value, step=8):
    """``value`` rounded up to a multiple of ``step`` (at least ``step``)."""
    return max(step, -(-int(value) // step) * step)


__all__ = ["bucket", "call_layer", "compiled"]
