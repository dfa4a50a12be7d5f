"""Data-parallel training: ``tf.distribute`` strategies on TensorFlow (one
machine's devices, several machines, a TPU) and ``keras.distribution`` on
JAX (one machine or several, through ``jax.distributed``), and BatchNorm
statistics synchronised across replicas."""

import contextlib
import os

# (Keras is imported where it is used: the training commands read
# DISTRIBUTIONS for their --help without loading a backend.)
DISTRIBUTIONS = ("none", "mirrored", "multiworker", "tpu", "data_parallel")


def distribution_scope(name):
    """Set up data-parallel training; returns ``(context, num_replicas)``.

    * ``none`` -- one device.
    * ``mirrored`` -- ``tf.distribute.MirroredStrategy``: all local GPUs (or
      CPUs/logical devices) of this machine.
    * ``multiworker`` -- ``tf.distribute.MultiWorkerMirroredStrategy``; the
      cluster comes from ``TF_CONFIG`` on every machine. Blocked by Keras
      (keras-team/keras#20585): it stops with a message naming the JAX route.
    * ``tpu`` -- ``tf.distribute.TPUStrategy`` on the TPU the cluster
      resolver finds.
    * ``data_parallel`` -- JAX backend: ``keras.distribution.DataParallel``
      over all devices (set globally for the process); over several
      machines when ``KERAS_DISTRIBUTION_NUM_PROCESSES`` > 1 (see
      :func:`_initialize_jax_processes`).

    Build and compile the model inside ``context``.
    """
    import keras

    name = name or "none"
    if name not in DISTRIBUTIONS:
        raise ValueError(f"Unknown distribution {name!r}; choose one of {DISTRIBUTIONS}.")
    backend = keras.backend.backend()
    if name == "none":
        return contextlib.nullcontext(), 1
    if name == "data_parallel":
        if backend != "jax":
            raise ValueError(
                "distribution='data_parallel' uses keras.distribution, which shards "
                f"over JAX devices; the Keras backend is {backend!r}. Set KERAS_BACKEND=jax, "
                "or use 'mirrored' / 'multiworker' / 'tpu' on TensorFlow."
            )
        if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") not in ("", "1"):
            _initialize_jax_processes()
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    if backend != "tensorflow":
        raise ValueError(
            f"distribution={name!r} is a tf.distribute strategy and needs the TensorFlow "
            f"backend; the Keras backend is {backend!r}. On JAX use 'data_parallel'."
        )
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "distribution='multiworker' needs TF_CONFIG on every machine, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}} (see the README).'
            )
        if not _KERAS_FIT_SUPPORTS_MULTIWORKER:
            raise NotImplementedError(
                f"Keras {keras.__version__} cannot fit() under "
                "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585: the "
                "first batch's shape probe and the per-step log reduction both fail). "
                "Train on several machines with the JAX backend instead: "
                "KERAS_BACKEND=jax, distribution='data_parallel' and "
                "KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID on every "
                "machine (see the README)."
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise RuntimeError(
                "distribution='tpu' found no TPU to connect to (TPUClusterResolver: "
                f"{error}). Run on a TPU VM or set TPU_NAME."
            ) from error
        strategy = tf.distribute.TPUStrategy(resolver)
    return strategy.scope(), strategy.num_replicas_in_sync


# Set to True once a Keras release fixes keras-team/keras#20585.
_KERAS_FIT_SUPPORTS_MULTIWORKER = False


def _initialize_jax_processes():
    """Join a multi-process JAX job (one process per machine, or per GPU).

    ``keras.distribution.initialize`` reads the coordinator address, the
    process count and this process's index from
    ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES``
    and ``KERAS_DISTRIBUTION_PROCESS_ID``. CPU processes exchange gradients
    through gloo.
    """
    import keras

    import jax

    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize()


def synchronize_batchnorm(model, synchronized=True):
    """Batch statistics over the global batch under ``tf.distribute``.

    With per-replica statistics a step on N replicas differs from the same
    step on one device; synchronised BatchNorm makes them equal.
    """
    import keras

    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
