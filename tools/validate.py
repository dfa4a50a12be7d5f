#!/usr/bin/env python
"""Top-1 / top-5 of a Next-ViT classifier over an ImageNet-layout folder.

    python tools/validate.py imagenet/val --weights nextvit_small.bd_in1k
    python tools/validate.py imagenet/val --weights nextvit_small.bd_in1k --limit 5000 --batch-size 64
    python tools/validate.py imagenet/val --weights nextvit_small.bd_in1k \\
        --artifact nextvit_small.tflite --artifact nextvit_small.onnx --compare --csv table.csv

The same command as ``keras-nextvit validate`` (``--help`` lists the
options): the preset's resize, crop and interpolation, a progress bar with
the running top-1, then a table of top-1, top-5, loss, top-1 agreement
with the first model and ms per image. ``--artifact`` scores an exported
file with its own runtime instead of the Keras model; with ``--compare``
the Keras model and every artifact see the same images in one pass.
"""

import sys

from keras_nextvit.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
