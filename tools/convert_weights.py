#!/usr/bin/env python
"""Convert a PyTorch Next-ViT checkpoint to Keras.

    python tools/convert_weights.py nextvit_small_in1k_224.pth nextvit_small.weights.h5
    python tools/convert_weights.py model.safetensors nextvit_small.keras

Reads upstream ``.pth`` or timm ``.safetensors`` (either naming), infers the
variant and the number of classes, and writes ``.weights.h5`` (load it with
``NextViTSmall(weights=path)``) or a whole ``.keras`` model. The same as
``keras-nextvit convert``.
"""

import sys

from keras_nextvit.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
