"""The ``keras-nextvit`` command: a thin shell over the package.

    keras-nextvit info                 # variants, parameters, MACs vs the paper
    keras-nextvit demo                 # build, classify the shipped photo, save, reload
    keras-nextvit convert SRC OUT      # PyTorch checkpoint -> .weights.h5 / .keras
    keras-nextvit export OUT --format tflite --quantize int8 --representative-data DIR
"""

import argparse
import os
import sys
import tempfile
import time


def _info(args):
    from . import flops, presets
    from .model import NextViT

    print(f"{'variant':<11}{'depths':<16}{'params':>13}{'paper':>8}{'GMACs@224':>11}{'paper':>7}"
          f"{'top-1 224/384 (paper)':>24}")
    for name, config in presets.VARIANTS.items():
        model = NextViT(depths=config["depths"], input_shape=(224, 224, 3), name=f"nextvit_{name}")
        paper = presets.PAPER[name]
        params = flops.trainable_parameters(model)
        gmacs = flops.count_macs(model, 224) / 1e9
        print(
            f"{'Next-ViT-' + name[0].upper():<11}{str(config['depths']):<16}{params:>13,}"
            f"{paper['params_m']:>7}M{gmacs:>11.2f}{paper['gflops']:>7}"
            f"{paper['top1_224']:>15} / {paper['top1_384']}"
        )
    print("\nparams: trainable parameters (PyTorch's count); GMACs: multiply-accumulates of")
    print("convolutions, linear layers and attention products for one 224x224 image.")
    print(f"\n{len(presets.PRESETS)} presets (weights=...):")
    for name, preset in presets.PRESETS.items():
        print(f"  {name:<36} {preset['input_size']}px crop {preset['crop_pct']}  {preset['dataset']}")


def _demo(args):
    import keras
    import numpy as np

    from . import flops, preprocessing
    from .model import NextViT
    from .presets import VARIANTS
    from .weights import is_preset

    size = args.size
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")
    start = time.perf_counter()
    weights = args.weights
    model = NextViT(
        depths=VARIANTS[args.variant]["depths"],
        input_shape=(size, size, 3),
        weights=weights,
        name=f"nextvit_{args.variant}",
    )
    source = weights or "none: randomly initialised (pass --weights PRESET or a checkpoint path)"
    print(f"built Next-ViT-{args.variant[0].upper()} at {size}x{size} in "
          f"{time.perf_counter() - start:.1f} s: {flops.trainable_parameters(model):,} parameters, "
          f"{flops.count_macs(model, size) / 1e9:.2f} GMACs; weights: {source}")

    preset = weights if is_preset(weights) else None
    image_path = args.image or preprocessing.SAMPLE_IMAGE
    image = preprocessing.load_image(image_path, preset=preset, size=size)
    batch = preprocessing.preprocess_input(image[None])
    start = time.perf_counter()
    logits = model.predict(batch, verbose=0)
    print(f"classified {os.path.basename(str(image_path))} ({image.shape[1]}x{image.shape[0]} after "
          f"resize + center crop) in {time.perf_counter() - start:.2f} s:")
    for index, name, prob in preprocessing.decode_predictions(logits, top=5)[0]:
        print(f"  {prob:7.2%}  {index:4d}  {name}")
    if weights is None:
        print("  (untrained weights: these classes are arbitrary)")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{model.name}.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        again = restored.predict(batch, verbose=0)
        size_mb = os.path.getsize(path) / 2**20
    diff = float(np.max(np.abs(again - logits)))
    print(f"saved to .keras ({size_mb:.0f} MiB), reloaded: max abs difference {diff:.1e}")
    if diff > 1e-5 * max(1.0, float(np.max(np.abs(logits)))):
        print("error: the reloaded model computes something else", file=sys.stderr)
        return 1
    return 0


def _convert(args):
    from .weights import convert_checkpoint

    model = convert_checkpoint(args.source, args.output, args.variant, args.input_size)
    print(f"wrote {args.output}: {model.name}, {model.output_shape[-1]} outputs")


def _export(args):
    from .exporters import export
    from .model import NextViT
    from .presets import VARIANTS
    from .weights import is_preset

    size = args.size
    model = NextViT(
        depths=VARIANTS[args.variant]["depths"],
        input_shape=(size, size, 3),
        weights=args.weights,
        name=f"nextvit_{args.variant}",
    )
    if args.weights is None:
        print("note: no --weights given; exporting randomly initialised weights", file=sys.stderr)
    elif is_preset(args.weights):
        print(f"weights: preset {args.weights}")
    report = export(
        model,
        args.output,
        format=args.format,
        quantize=args.quantize,
        representative_data=args.representative_data,
        merge_bn=not args.no_merge_bn,
        batch_size=None if args.dynamic_batch else args.batch_size,
        uint8_input=args.uint8_input,
        calibration_steps=args.calibration_steps,
    )
    print(report)
    return 0


# Every export's quantize modes (tflite.QUANTIZE_MODES, then TensorRT's
# precisions that TFLite lacks); ``export`` checks them per format.
QUANTIZE_CHOICES = ("none", "float16", "dynamic", "int8", "int8_float_attention")


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-nextvit", description="Next-ViT for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="variants, parameter and MAC counts vs the paper, presets")
    info.set_defaults(run=_info)

    demo = commands.add_parser("demo", help="build a model, classify a photo, save and reload it")
    demo.add_argument("--variant", choices=["small", "base", "large"], default="small")
    demo.add_argument("--weights", help="preset name or checkpoint path (.pth/.safetensors/.weights.h5)")
    demo.add_argument("--image", help="image file (default: a photo shipped with the package)")
    demo.add_argument("--size", type=int, default=224, help="input size (default 224)")
    demo.set_defaults(run=_demo)

    export = commands.add_parser("export", help="export (SavedModel/TFLite/ONNX/TensorRT) and verify")
    export.add_argument("output", help="output file (.tflite/.onnx/.plan) or folder (SavedModel)")
    export.add_argument("--format", choices=["saved_model", "tflite", "onnx", "tensorrt"], default="tflite")
    export.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                        help="TFLite: none/float16/dynamic/int8 (full-integer)/int8_float_attention; "
                        "TensorRT: none/float16/int8")
    export.add_argument("--representative-data", help="image folder to calibrate int8 on")
    export.add_argument("--calibration-steps", type=int, default=100)
    export.add_argument("--variant", choices=["small", "base", "large"], default="small")
    export.add_argument("--weights", help="preset name or checkpoint path")
    export.add_argument("--size", type=int, default=224)
    export.add_argument("--batch-size", type=int, default=1)
    export.add_argument("--dynamic-batch", action="store_true", help="variable batch dimension")
    export.add_argument("--uint8-input", action="store_true", help="SavedModel: uint8 images, normalised in-graph")
    export.add_argument("--no-merge-bn", action="store_true", help="keep the BatchNorms")
    export.set_defaults(run=_export)

    convert = commands.add_parser("convert", help="PyTorch checkpoint -> .weights.h5 or .keras")
    convert.add_argument("source")
    convert.add_argument("output")
    convert.add_argument("--variant", choices=["small", "base", "large"])
    convert.add_argument("--input-size", type=int)
    convert.set_defaults(run=_convert)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as error:
        print(f"keras-nextvit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
