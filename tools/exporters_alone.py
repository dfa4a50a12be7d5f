"""Modules of ``keras_nextvit/exporters`` imported without TensorFlow or Keras.

The check tools (``coreml_check.py check``, ``tensorrt_check.py check``) run
on machines that have this repository's files, NumPy and one runtime (Core
ML on a Mac, TensorRT on a GPU machine) but not TensorFlow. Importing
``keras_nextvit.exporters.coreml`` would run ``keras_nextvit/__init__.py``
and import Keras; :func:`load` imports the exporter modules as a package of
their own instead (they import only NumPy, each other, and their runtime
where they use it).
"""

import importlib
import os
import sys
import types

EXPORTERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_nextvit", "exporters")
PACKAGE = "_nextvit_exporters"


def load(*names):
    """The modules ``names`` (e.g. ``"coreml", "verify"``) of the exporters
    folder, as ``_nextvit_exporters.<name>``."""
    package = types.ModuleType(PACKAGE)
    package.__path__ = [EXPORTERS]
    sys.modules[PACKAGE] = package
    return tuple(importlib.import_module(f"{PACKAGE}.{name}") for name in names)
