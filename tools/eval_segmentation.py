#!/usr/bin/env python
"""Evaluate a Next-ViT segmenter on ADE20K (or any folder in its layout).

    python tools/eval_segmentation.py data/ade/ADEChallengeData2016 \\
        --weights fpn_80k_nextvit_small.pth --variant small --head fpn

    # the first 50 validation images, sliding-window inference
    python tools/eval_segmentation.py data/ade/ADEChallengeData2016 \\
        --weights upernet_160k_nextvit_base.pth --variant base --head upernet \\
        --limit 50 --slide

The folder holds images/{split}/*.jpg and annotations/{split}/*.png (paired by
name). Each image is segmented at its own size and compared with its
annotation; the confusion matrix is accumulated over the whole split, as
mmsegmentation does. Prints IoU and accuracy per class, then aAcc, mIoU and
mAcc (percent). ADE20K's annotations hold 0 for "other" and 1..150 for the
classes, so by default 0 is ignored and the others shift down by one;
--no-reduce-zero-label reads the annotations as class indices.
"""

import argparse
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_root", help="dataset root: images/{split}/*.jpg, annotations/{split}/*.png")
    parser.add_argument("--weights", help="segmentation checkpoint (.pth, .safetensors, .npz, .weights.h5)")
    parser.add_argument("--variant", default="small", choices=["small", "base", "large"])
    parser.add_argument("--head", default="fpn", choices=["fpn", "upernet"])
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--split", default="validation", help="subfolder of images/ and annotations/")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (by name)")
    parser.add_argument(
        "--no-reduce-zero-label",
        action="store_true",
        help="annotations hold class indices (default: ADE20K's 0 = other, classes 1..N)",
    )
    parser.add_argument("--ignore-index", type=int, default=255, help="label value not counted")
    parser.add_argument(
        "--slide", action="store_true", help="sliding-window inference (default: whole image)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _percent(value):
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def format_report(scores, class_names=None):
    """The per-class table and the summary line, as text."""
    iou, acc = scores["IoU"], scores["Acc"]
    if class_names is None or len(class_names) != len(iou):
        class_names = [str(index) for index in range(len(iou))]
    width = max(len("class"), *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for name, class_iou, class_acc in zip(class_names, iou, acc):
        lines.append(f"{name:<{width}}  {_percent(class_iou):>6}  {_percent(class_acc):>6}")
    lines.append(
        f"aAcc {_percent(scores['aAcc'])}  mIoU {_percent(scores['mIoU'])}  "
        f"mAcc {_percent(scores['mAcc'])}  ({scores['num_images']} images)"
    )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    try:
        if args.num_classes < 1:
            raise ValueError(f"--num-classes must be >= 1, got {args.num_classes}")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.weights is not None and not os.path.exists(args.weights):
            raise FileNotFoundError(f"--weights: {args.weights} does not exist")

        from keras_nextvit.segmentation.metrics import evaluate_folder

        mode = "slide" if args.slide else "whole"
        state = {}

        def predict(image):
            # Built on the first image, once the folder has been checked.
            if "model" not in state:
                from keras_nextvit.segmentation import NextViTSegmenter, segment

                if args.weights is None:
                    print(
                        "warning: no --weights: the segmenter has random weights and "
                        "its scores mean nothing",
                        file=sys.stderr,
                    )
                state["segment"] = segment
                state["model"] = NextViTSegmenter(
                    variant=args.variant,
                    head=args.head,
                    num_classes=args.num_classes,
                    weights=args.weights,
                )
            return state["segment"](state["model"], image, mode=mode)

        scores = evaluate_folder(
            predict,
            args.data_root,
            num_classes=args.num_classes,
            reduce_zero_label=not args.no_reduce_zero_label,
            ignore_index=args.ignore_index,
            split=args.split,
            limit=args.limit,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        # OSError: missing or unreadable files (FileNotFoundError, PIL's
        # UnidentifiedImageError).
        print(f"error: {error}", file=sys.stderr)
        return 2

    class_names = None
    if args.num_classes == 150:
        from keras_nextvit.segmentation.ade20k import CLASSES

        class_names = CLASSES
    print(format_report(scores, class_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
