"""The ``keras-nextvit`` command: a thin shell over the package.

    keras-nextvit info                 # variants, parameters, MACs vs the paper
    keras-nextvit demo                 # build, classify the shipped photo, save, reload
    keras-nextvit classify PHOTOS... --weights nextvit_small.bd_in1k [--artifact model.tflite]
    keras-nextvit validate VAL_DIR --weights nextvit_small.bd_in1k [--artifact F ... --compare]
    keras-nextvit convert SRC OUT      # PyTorch checkpoint -> .weights.h5 / .keras
    keras-nextvit export OUT --format tflite --quantize int8 --representative-data DIR
    keras-nextvit segment IMAGE --weights CKPT --head fpn -o overlay.png
    keras-nextvit detect IMAGE --weights CKPT --variant small -o out.png --json out.json
    keras-nextvit info --segmentation  # the segmenters' parameters and FLOPs at 512x2048
    keras-nextvit info --detection     # the detectors' parameters and FLOPs at 1280x800
    keras-nextvit hub-preset SRC DIR   # preset name or checkpoint -> keras-hub preset folder
"""

import argparse
import os
import sys
import tempfile
import time


def _info_segmentation():
    from . import flops
    from .segmentation.model import PUBLISHED, PUBLISHED_GFLOPS, NextViTSegmenter

    print(f"{'segmenter':<22}{'params':>13}{'GMACs@512x2048':>16}{'no attn':>9}{'paper GFLOPs':>14}"
          f"{'mIoU 1K / 1K-6M':>18}")
    for head, title in (("fpn", "Semantic FPN"), ("upernet", "UperNet")):
        for variant in ("small", "base", "large"):
            model = NextViTSegmenter(variant, head, input_shape=(512, 2048, 3))
            params = flops.trainable_parameters(model)
            macs = flops.count_segmenter_macs(model, (512, 2048)) / 1e9
            plain = flops.count_segmenter_macs(model, (512, 2048), attention=False) / 1e9
            miou = f"{PUBLISHED[(head, variant, '1k')]} / {PUBLISHED[(head, variant, '1k6m')]}"
            label = f"Next-ViT-{variant[0].upper()} {title}"
            print(f"{label:<22}{params:>13,}{macs:>16.1f}{plain:>9.1f}"
                  f"{PUBLISHED_GFLOPS[head][variant]:>14}{miou:>18}")
    print("\nparams: trainable parameters of the inference segmenter (no auxiliary head, no")
    print("ImageNet classifier); GMACs: convolutions, linear layers and attention products of one")
    print("512x2048 image ('no attn': without the attention products, the convention of the")
    print("upstream FLOPs counter); paper: the upstream README.")


def _info_detection():
    from . import flops
    from .detection.model import PUBLISHED, PUBLISHED_GFLOPS, PUBLISHED_PARAMS_M, NextViTMaskRCNN

    print(f"{'detector':<26}{'params':>13}{'paper':>8}{'GMACs@1280x800':>16}{'no attn':>9}"
          f"{'paper GFLOPs':>14}{'box/mask mAP 1x, 3x':>24}")
    for variant in ("small", "base", "large"):
        detector = NextViTMaskRCNN(variant)
        params = flops.trainable_parameters(detector)
        macs = flops.count_detector_macs(detector) / 1e9
        plain = flops.count_detector_macs(detector, attention=False) / 1e9
        one, three = PUBLISHED[(variant, "1x")], PUBLISHED[(variant, "3x")]
        maps = f"{one[0]}/{one[1]}, {three[0]}/{three[1]}"
        label = f"Next-ViT-{variant[0].upper()} + Mask R-CNN"
        print(f"{label:<26}{params:>13,}{PUBLISHED_PARAMS_M[variant]:>7}M{macs:>16.1f}{plain:>9.1f}"
              f"{PUBLISHED_GFLOPS[variant]:>14}{maps:>24}")
    print("\nparams: trainable parameters of the detector (the checkpoints' unused norm and ImageNet")
    print("classifier not counted; the paper's figure counts them with the stem and stage 1 frozen);")
    print("GMACs: one 1280x800 (height x width) image as mmdet's get_flops.py runs it: backbone, FPN,")
    print("RPN head on five levels, box head on 1000 RoIs, mask head on 100 ('no attn': without the")
    print("attention products, the convention of the upstream counter); paper: the upstream README.")


def _info(args):
    from . import flops, presets
    from .model import NextViT

    if args.segmentation:
        return _info_segmentation()
    if args.detection:
        return _info_detection()

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
    from .model import convert_checkpoint

    model = convert_checkpoint(args.source, args.output, args.variant, args.input_size)
    print(f"wrote {args.output}: {model.name}, {model.output_shape[-1]} outputs")


def _export(args):
    from .exporters import check_request, export

    # before building the model: a request that cannot be met fails at once
    batch_size = None if args.dynamic_batch else args.batch_size
    check_request(args.output, args.format, args.quantize, args.representative_data, args.uint8_input, batch_size)
    from .model import NextViT
    from .presets import VARIANTS
    from .weights import is_preset

    size = args.size
    if args.head:
        from .segmentation import NextViTSegmenter

        if is_preset(args.weights):
            raise ValueError(
                f"--weights {args.weights} is an ImageNet classification preset; a segmenter "
                "takes a segmentation checkpoint file (.pth from the upstream repository)."
            )
        model = NextViTSegmenter(
            args.variant, args.head, num_classes=args.num_classes,
            input_shape=(size, size, 3), weights=args.weights,
        )
    else:
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
        batch_size=batch_size,
        uint8_input=args.uint8_input,
        calibration_steps=args.calibration_steps,
    )
    print(report)
    return 0


def _segment(args):
    import numpy as np

    from .segmentation import NextViTSegmenter, ade20k, segment
    from .segmentation.inference import read_image

    image = read_image(args.image)  # a bad file fails before the model is built
    if args.weights is None:
        print("note: no --weights given; the segmenter is randomly initialised and its classes "
              "are arbitrary", file=sys.stderr)
    model = NextViTSegmenter(args.variant, args.head, num_classes=args.num_classes, weights=args.weights)
    start = time.perf_counter()
    classes = segment(model, image, mode="slide" if args.slide else "whole")
    print(f"segmented {os.path.basename(args.image)} ({image.shape[1]}x{image.shape[0]}) in "
          f"{time.perf_counter() - start:.1f} s:")
    from .visualize import class_areas, overlay_segmentation

    names = ade20k.CLASSES if args.num_classes == len(ade20k.CLASSES) else None
    for value, share in class_areas(classes)[:10]:
        name = names[value] if names else f"class {value}"
        print(f"  {share:7.2%}  {value:4d}  {name}")
    if args.output:
        from PIL import Image

        if args.output.lower().endswith(".npy"):
            np.save(args.output, classes)
        else:
            Image.fromarray(overlay_segmentation(image, classes)).save(args.output)
        print(f"wrote {args.output}")
    return 0


def _detect(args):
    import json

    from .detection import NextViTMaskRCNN, coco, detect
    from .detection.inference import check_score_thr, prepare
    from .segmentation.inference import read_image

    score_thr = check_score_thr(args.score_thr)  # bad settings and files fail before the model
    image = read_image(args.image)
    prepare([image])  # too small an image fails here too
    if args.weights is None:
        print("note: no --weights given; the detector is randomly initialised and its detections "
              "are arbitrary", file=sys.stderr)
    detector = NextViTMaskRCNN(args.variant, num_classes=args.num_classes, weights=args.weights)
    start = time.perf_counter()
    result = detect(detector, image, score_thr=score_thr)
    names = coco.CLASSES if args.num_classes == len(coco.CLASSES) else None
    count = len(result["scores"])
    print(f"detected {count} objects in {os.path.basename(args.image)} ({image.shape[1]}x{image.shape[0]}) "
          f"in {time.perf_counter() - start:.1f} s" + (":" if count else "."))
    records = []
    for box, score, label, mask in zip(result["boxes"], result["scores"], result["labels"], result["masks"]):
        name = names[int(label)] if names else f"class {int(label)}"
        records.append({
            "label": int(label), "name": name, "score": round(float(score), 5),
            "box": [round(float(v), 2) for v in box], "mask_area": int(mask.sum()),
        })
    for record in records[:10]:
        x1, y1, x2, y2 = record["box"]
        print(f"  {record['score']:.3f}  {record['name']:<16} ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"image": args.image, "detections": records}, handle, indent=1)
        print(f"wrote {args.json}")
    if args.output:
        import matplotlib

        matplotlib.use("Agg")
        from .visualize import plot_detections

        fig = plot_detections(image, result, class_names=names and list(names))
        fig.savefig(args.output, dpi=150, bbox_inches="tight")
        print(f"wrote {args.output}")
    return 0


def _transform(args):
    from .classify import Transform
    from .weights import is_preset

    preset = args.weights if is_preset(args.weights) else None
    return Transform.of(preset, size=args.size, crop_pct=args.crop_pct, interpolation=args.interpolation,
                        mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None)


def select_backend(backend):
    """Run Keras on ``backend`` (before Keras is imported; a process that
    has imported it already must be on that backend)."""
    if backend is None:
        return
    loaded = sys.modules.get("keras")
    if loaded is not None and loaded.backend.backend() != backend:
        raise ValueError(f"--backend {backend}: Keras is already running on {loaded.backend.backend()} in this "
                         "process; set KERAS_BACKEND before it starts.")
    os.environ["KERAS_BACKEND"] = backend


def _keras_model(args, batch_size):
    from . import classify

    model = classify.keras_classifier(args.weights, args.variant, args.num_classes, batch_size=batch_size,
                                      mixed_precision=getattr(args, "mixed_precision", False))
    source = args.weights or "none: randomly initialised (pass --weights PRESET or a checkpoint path)"
    print(f"Keras model ({args.variant}, backend {_backend()}); weights: {source}")
    if args.weights is None:
        print("  (untrained weights: its classes are arbitrary)")
    return model


def _backend():
    import keras

    return keras.backend.backend()


def _class_names(args, count):
    from .preprocessing import imagenet_classes

    if args.class_names:
        names = [line.strip() for line in open(args.class_names, encoding="utf-8") if line.strip()]
        if len(names) != count:
            raise ValueError(f"{args.class_names} names {len(names)} classes; the model gives {count}.")
        return names
    if count == 1000:
        return imagenet_classes()
    return [f"class {i}" for i in range(count)]


def _classify(args):
    import json

    from . import classify

    if args.json and args.csv:
        raise ValueError("--json and --csv each write the results; give one.")
    files = classify.image_files(args.images)
    transform = _transform(args)
    if args.artifact:
        model = classify.artifact_classifier(args.artifact)
        print(f"{model.kind} artifact {args.artifact}")
        transform = classify.check_sizes({"artifact": model}, transform, args.size)
    else:
        model = _keras_model(args, args.batch_size)
    rows = classify.classify(files, model, transform, _class_names(args, int(model.num_classes)), top=args.top,
                             batch_size=args.batch_size, progress=len(files) > 1 and not args.no_progress)
    for row in rows:
        print(row["file"])
        for index, name, prob in row["top"]:
            print(f"  {prob:7.2%}  {index:4d}  {name}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([{"file": r["file"], "top": [{"index": i, "name": n, "probability": p}
                                                   for i, n, p in r["top"]]} for r in rows], handle, indent=1)
        print(f"wrote {args.json}")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "rank", "index", "name", "probability"])
            for r in rows:
                for rank, (i, n, p) in enumerate(r["top"], 1):
                    writer.writerow([r["file"], rank, i, n, f"{p:.6f}"])
        print(f"wrote {args.csv}")
    return 0


def _validate(args):
    import dataclasses
    import json
    import time

    from . import classify

    if args.compare and not args.artifact:
        raise ValueError("--compare runs the Keras model beside the --artifact files: give at least one.")
    classifiers = {}
    for path in args.artifact or ():
        runner = classify.artifact_classifier(path)
        classifiers[os.path.basename(path) if os.path.basename(path) not in classifiers else path] = runner
    transform = classify.check_sizes(classifiers, _transform(args), args.size)
    if args.compare or not args.artifact:
        classifiers = {"keras": _keras_model(args, args.batch_size), **classifiers}
    for name, runner in classifiers.items():
        if name != "keras":
            print(f"{runner.kind} artifact {runner.path}")
    files, labels, class_names = classify.labelled_folder(args.folder, args.num_classes, args.limit)
    print(f"validating on {len(files)} images of {len(set(labels.tolist()))} classes in {args.folder} "
          f"({transform.size}x{transform.size}, crop {transform.crop_pct}, {transform.interpolation})")
    start = time.perf_counter()
    rows = classify.validate(files, labels, classifiers, transform, batch_size=args.batch_size,
                             progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(classify.format_table(rows))
    print(f"{len(files)} images in {seconds:.1f} s ({len(files) / seconds:.1f} images/s, "
          f"{len(classifiers)} model{'s' if len(classifiers) > 1 else ''})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"folder": str(args.folder), "transform": dataclasses.asdict(transform),
                       "rows": [r.to_dict() for r in rows]}, handle, indent=1)
        print(f"wrote {args.json}")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].to_dict()))
            writer.writeheader()
            writer.writerows(r.to_dict() for r in rows)
        print(f"wrote {args.csv}")
    return 0


def _model_options(parser, what):
    parser.add_argument("--weights", help="preset name or checkpoint path (.pth/.safetensors/.weights.h5); "
                        f"without it {what} the randomly initialised model")
    parser.add_argument("--variant", default="small",
                        help="small, base, large or four stage depths like 1,1,5,1 (default small; a preset "
                        "sets its own)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier width of the checkpoint")
    parser.add_argument("--class-names", help="text file with one class name per line (default: ImageNet's)")
    parser.add_argument("--size", type=int, help="input size (default: the preset's, or 224)")
    parser.add_argument("--crop-pct", type=float, help="crop over resize size (default: the preset's, or 0.95)")
    parser.add_argument("--interpolation", choices=["bicubic", "bilinear"], help="resize (default: the preset's)")
    parser.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation mean in [0, 1] (default: ImageNet's)")
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation std in [0, 1] (default: ImageNet's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                        help="Keras backend for the model (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _hub_preset(args):
    try:
        from . import hub
    except ImportError as error:
        raise ImportError(str(error)) from None
    print(f"building the keras-hub classifier from {args.source} ...")
    classifier = hub.save_preset(
        args.source, args.folder, variant=args.variant, image_size=args.image_size,
        crop_pct=args.crop_pct,
    )
    converter = classifier.preprocessor.image_converter
    print(f"wrote {args.folder}: NextViTImageClassifier, {classifier.num_classes} classes, "
          f"{classifier.count_params():,} parameters; preprocessor: crop {converter.crop_size} "
          f"at crop_pct {converter.crop_pct}")
    print("load it with: import keras_hub, keras_nextvit; "
          f"keras_hub.models.ImageClassifier.from_preset({args.folder!r})")
    return 0


# Every export's quantize modes (tflite.QUANTIZE_MODES, then TensorRT's
# precisions that TFLite lacks); ``export`` checks them per format.
QUANTIZE_CHOICES = ("none", "float16", "dynamic", "int8", "int8_float_attention")


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-nextvit", description="Next-ViT for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="variants, parameter and MAC counts vs the paper, presets")
    info.add_argument("--segmentation", action="store_true",
                      help="the segmenters (FPN, UperNet): parameters, FLOPs at 512x2048, mIoU")
    info.add_argument("--detection", action="store_true",
                      help="the Mask R-CNN detectors: parameters, FLOPs at 1280x800, box/mask mAP")
    info.set_defaults(run=_info)

    seg = commands.add_parser("segment", help="segment an image (ADE20K classes) and save an overlay")
    seg.add_argument("image", help="image file")
    seg.add_argument("--weights", help="segmentation checkpoint (.pth from the upstream repository, "
                     ".safetensors, .weights.h5)")
    seg.add_argument("--variant", choices=["small", "base", "large"], default="small")
    seg.add_argument("--head", choices=["fpn", "upernet"], default="fpn")
    seg.add_argument("--num-classes", type=int, default=150)
    seg.add_argument("--slide", action="store_true", help="sliding-window inference (512 crops)")
    seg.add_argument("-o", "--output", help="overlay image to write (.png/.jpg), or .npy for the class map")
    seg.set_defaults(run=_segment)

    det = commands.add_parser("detect", help="detect objects (COCO, Mask R-CNN) and draw them")
    det.add_argument("image", help="image file")
    det.add_argument("--weights", help="detection checkpoint (mmdet .pth from the upstream repository, "
                     ".safetensors, .weights.h5)")
    det.add_argument("--variant", choices=["small", "base", "large"], default="small")
    det.add_argument("--num-classes", type=int, default=80)
    det.add_argument("--score-thr", type=float, default=0.05, help="keep detections above this (0..1)")
    det.add_argument("-o", "--output", help="image to write with boxes, labels and masks (.png/.jpg)")
    det.add_argument("--json", help="write the detections (box, score, label, mask area) to this file")
    det.set_defaults(run=_detect)

    cls = commands.add_parser("classify", help="classify images or folders (the model or an exported file)")
    cls.add_argument("images", nargs="+", help="image files or folders of images")
    _model_options(cls, "classifies with")
    cls.add_argument("--top", type=int, default=5, help="classes to show per image")
    cls.add_argument("--artifact", help="run an exported .tflite/.onnx/.xml (OpenVINO) file instead of the model")
    cls.add_argument("--json", help="write the results to this JSON file")
    cls.add_argument("--csv", help="write the results to this CSV file")
    cls.set_defaults(run=_classify)

    val = commands.add_parser("validate", help="top-1/top-5 over an ImageNet-layout folder (<class>/<image>)")
    val.add_argument("folder", help="a folder of class folders, e.g. ImageNet's val/n01440764/*.JPEG")
    _model_options(val, "validates")
    val.add_argument("--limit", type=int, help="validate on this many images (a fixed sample)")
    val.add_argument("--artifact", action="append", help="an exported .tflite/.onnx/.xml file to validate "
                     "instead of the model (repeatable)")
    val.add_argument("--compare", action="store_true",
                     help="run the Keras model and every --artifact over the same images: one table")
    val.add_argument("--mixed-precision", action="store_true", help="the Keras model in mixed bfloat16")
    val.add_argument("--json", help="write the table to this JSON file")
    val.add_argument("--csv", help="write the table to this CSV file")
    val.set_defaults(run=_validate)

    demo = commands.add_parser("demo", help="build a model, classify a photo, save and reload it")
    demo.add_argument("--variant", choices=["small", "base", "large"], default="small")
    demo.add_argument("--weights", help="preset name or checkpoint path (.pth/.safetensors/.weights.h5)")
    demo.add_argument("--image", help="image file (default: a photo shipped with the package)")
    demo.add_argument("--size", type=int, default=224, help="input size (default 224)")
    demo.set_defaults(run=_demo)

    export = commands.add_parser("export", help="export (SavedModel/TFLite/ONNX/OpenVINO/TensorRT/CoreML) and "
                                 "verify")
    export.add_argument("output", help="output file (.tflite/.onnx/.xml/.plan) or folder (SavedModel, "
                        ".mlpackage)")
    export.add_argument("--format", choices=["saved_model", "tflite", "onnx", "openvino", "tensorrt", "coreml"],
                        default="tflite")
    export.add_argument("--quantize", choices=QUANTIZE_CHOICES,
                        help="TFLite: none/float16/dynamic/int8 (full-integer)/int8_float_attention; "
                        "OpenVINO: none/float16 (weights)/int8 (NNCF); TensorRT: none/float16/int8; CoreML: "
                        "float16/none (float32)/int8 (weights). Default: none, for CoreML float16")
    export.add_argument("--representative-data", help="image folder to calibrate int8 on")
    export.add_argument("--calibration-steps", type=int, default=100)
    export.add_argument("--variant", choices=["small", "base", "large"], default="small")
    export.add_argument("--weights", help="preset name or checkpoint path")
    export.add_argument("--size", type=int, default=224)
    export.add_argument("--head", choices=["fpn", "upernet"],
                        help="export a segmenter (Semantic FPN or UperNet) instead of the classifier")
    export.add_argument("--num-classes", type=int, default=150, help="segmenter classes (with --head)")
    export.add_argument("--batch-size", type=int, default=1)
    export.add_argument("--dynamic-batch", action="store_true", help="variable batch dimension")
    export.add_argument("--uint8-input", action="store_true",
                        help="SavedModel: uint8 images, CoreML: an RGB image input; normalised in-graph")
    export.add_argument("--no-merge-bn", action="store_true", help="keep the BatchNorms")
    export.set_defaults(run=_export)

    convert = commands.add_parser("convert", help="PyTorch checkpoint -> .weights.h5 or .keras")
    convert.add_argument("source")
    convert.add_argument("output")
    convert.add_argument("--variant", choices=["small", "base", "large"])
    convert.add_argument("--input-size", type=int)
    convert.set_defaults(run=_convert)

    hub = commands.add_parser(
        "hub-preset", help="preset name or checkpoint -> keras-hub preset folder (needs keras-hub)"
    )
    hub.add_argument("source", help="a preset name (see `info`) or a checkpoint file")
    hub.add_argument("folder", help="the preset folder to write")
    hub.add_argument("--variant", choices=["small", "base", "large"],
                     help="checked against the checkpoint (read from it when not given)")
    hub.add_argument("--image-size", type=int, help="the preprocessor's crop (default: the preset's)")
    hub.add_argument("--crop-pct", type=float, help="crop over resize size (default: the preset's)")
    hub.set_defaults(run=_hub_preset)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)  # --help answers here, before any backend
    from .startup import import_tensorflow_quietly

    try:
        select_backend(getattr(args, "backend", None))  # before TensorFlow, which imports Keras
        # every command but --help uses TensorFlow (tf.data, the exporters)
        import_tensorflow_quietly()
        return args.run(args) or 0
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        print(f"keras-nextvit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
