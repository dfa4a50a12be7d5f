"""Starting TensorFlow without its start-up noise, for the command line and
the tools.

TensorFlow writes C++ log lines (absl's "before absl::InitializeLog()"
warning, oneDNN's notice, the CUDA probes) to the process' stderr while it
loads, some of them before ``TF_CPP_MIN_LOG_LEVEL`` takes effect. A command
that only reports a user's mistake should print that mistake alone.
"""

import os
import sys


def import_tensorflow_quietly():
    """Import TensorFlow (Keras' default backend, tf.data, the exporters)
    with file descriptor 2 pointed at /dev/null while it loads. Nothing
    happens when it is loaded already or not installed (the command that
    needs it says so)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        saved = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(devnull, 2)
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        os.close(devnull)
