#!/usr/bin/env python
"""Evaluate a Next-ViT Mask R-CNN on COCO (or any folder in its layout).

    python tools/eval_detection.py data/coco --weights mask_rcnn_1x_nextvit_small.pth --variant small

    # the first 100 images, results kept as COCO JSON
    python tools/eval_detection.py data/coco --weights mask_rcnn_3x_nextvit_base.pth \\
        --variant base --limit 100 --out results/base_3x

The folder holds val2017/*.jpg and annotations/instances_val2017.json. Each
image goes through keras_nextvit.detect (mmdet's test pipeline and test_cfg);
the detections are scored with pycocotools' COCOeval, box (bbox) and mask
(segm) mAP as mmdet reports them. Prints COCOeval's tables and a summary in
percent; --out PREFIX writes PREFIX.bbox.json and PREFIX.segm.json.
Needs pycocotools (pip install "keras-nextvit[coco]").
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("coco_root", help="dataset root: {split}/*.jpg, annotations/instances_{split}.json")
    parser.add_argument("--weights", help="detection checkpoint (mmdet .pth, .safetensors, .npz, .weights.h5)")
    parser.add_argument("--variant", default="small", choices=["small", "base", "large"])
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (by image id)")
    parser.add_argument("--score-thr", type=float, default=0.05, help="test_cfg score threshold")
    parser.add_argument("--scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"),
                        help="test scale (mmdet's img_scale)")
    parser.add_argument("--no-masks", action="store_true", help="score the boxes only")
    parser.add_argument("--out", help="write the detections as COCO results: OUT.bbox.json, OUT.segm.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def format_summary(scores):
    lines = []
    for kind in ("bbox", "segm"):
        if kind in scores:
            values = "  ".join(f"{name} {100 * value:.1f}" for name, value in scores[kind].items())
            lines.append(f"{kind}: {values}")
    lines.append(f"({scores['num_images']} images)")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.weights is not None and not os.path.exists(args.weights):
            raise FileNotFoundError(f"--weights: {args.weights} does not exist")
        if args.out and os.path.dirname(args.out):
            os.makedirs(os.path.dirname(args.out), exist_ok=True)

        from keras_nextvit.detection.evaluation import evaluate_coco
        from keras_nextvit.detection.inference import check_score_thr

        score_thr = check_score_thr(args.score_thr)
        state = {}

        def predict(image):
            # Built on the first image, once the folder has been checked.
            if "detector" not in state:
                from keras_nextvit.detection import NextViTMaskRCNN, detect

                if args.weights is None:
                    print("warning: no --weights: the detector has random weights and its scores "
                          "mean nothing", file=sys.stderr)
                state["detect"] = detect
                state["detector"] = NextViTMaskRCNN(args.variant, num_classes=args.num_classes,
                                                    weights=args.weights)
            return state["detect"](state["detector"], image, score_thr=score_thr, scale=tuple(args.scale))

        scores = evaluate_coco(
            predict, args.coco_root, split=args.split, limit=args.limit,
            progress=not args.no_progress, results_prefix=args.out, masks=not args.no_masks,
        )
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
