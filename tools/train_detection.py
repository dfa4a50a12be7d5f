"""Train or fine-tune a Next-ViT Mask R-CNN on a COCO-layout folder.

    # fine-tune from the ImageNet checkpoint: the upstream 1x recipe
    python tools/train_detection.py --train data/coco --backbone-weights nextvit_small.bd_in1k

    # the 3x recipe: 36 epochs, each image flipped, resized to a short side of 480-800
    # or resized, cropped and resized (upstream's multi-scale AutoAugment)
    python tools/train_detection.py --train data/coco --backbone-weights nextvit_small.bd_in1k --recipe 3x

    # a published detector on your own classes (the heads' class layers start fresh)
    python tools/train_detection.py --train data/mine --weights mask_rcnn_1x_nextvit_small.pth \\
        --epochs 12 --batch-size 2

Folders: annotations/instances_{split}.json and {split}/ (COCO's layout;
--split, default train2017). --val COCO_ROOT (--val-split, default val2017)
is scored after every epoch: COCO box and mask mAP in log.csv. Run it again
with the same --output to resume from the last checkpoint (every epoch). OUTPUT/detector.weights.h5 loads into
NextViTMaskRCNN(weights=...) and tools/eval_detection.py --weights. See
keras_nextvit.detection.trainer.train for what each option does.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_nextvit.trainer import command  # noqa: E402  (TensorFlow loads only when training starts)

# the options detection.trainer.train takes under their own names
OPTIONS = (
    "num_classes", "weights", "backbone_weights", "recipe", "split", "epochs", "batch_size", "learning_rate",
    "max_steps_per_epoch", "rcnn_sample_num",
)


def parse_args(argv=None):
    parser = command.parser(__doc__, "COCO-layout folder (see above)", "runs/detection")
    parser.add_argument("--split", default="train2017", help="annotations/instances_{split}.json + {split}/")
    parser.add_argument("--num-classes", type=int, help="default: the annotations' categories")
    parser.add_argument("--weights", help="detection checkpoint to start from")
    parser.add_argument("--backbone-weights", help="ImageNet preset name or checkpoint for the backbone")
    parser.add_argument("--recipe", default="1x", choices=["1x", "3x"],
                        help="upstream's 1x schedule, or 3x (36 epochs, multi-scale with crops)")
    parser.add_argument("--epochs", type=int, help="recipe: 12 (1x), 36 (3x)")
    parser.add_argument("--batch-size", type=int, help="images per step (recipe: 16)")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate, used as given (recipe: 1e-4)")
    parser.add_argument("--scale", help="LONG,SHORT: the size images are fitted into (1x recipe: 1333,800)")
    parser.add_argument("--max-steps-per-epoch", type=int)
    parser.add_argument("--rcnn-sample-num", type=int,
                        help="RoIs per image the box head trains on (recipe: 512; fewer for small images)")
    parser.add_argument("--val-split", default="val2017",
                        help="with --val COCO_ROOT: annotations/instances_{split}.json + {split}/, "
                             "scored (box and mask mAP) after every epoch")
    parser.add_argument("--val-limit", type=int, help="score only the first N validation images")
    command.add_run_arguments(parser)
    return parser.parse_args(argv)


def _options(args):
    scale = None
    if args.scale:
        scale = command.ints(args.scale, "--scale")
        if len(scale) != 2:
            raise ValueError(f"--scale must be LONG,SHORT, got {args.scale!r}")
    folders = command.folder_options(args)
    run = command.run_options(args)
    if run.pop("distribution") != "none" or run.pop("mixed_precision") is not None:
        raise NotImplementedError(
            "detection trains on one device in float32 for now (an eager step): drop --distribution "
            "and --mixed-precision"
        )
    return dict(output_dir=folders["output_dir"], variant=folders["variant"], scale=scale,
                val_dir=folders["val_dir"], val_split=args.val_split, val_limit=args.val_limit,
                **command.same_names(args, OPTIONS), **run)


def main(argv=None):
    args = parse_args(argv)

    def train():
        from keras_nextvit.detection import trainer

        return trainer.train(args.train, **_options(args))

    return command.run_command(
        args, train, lambda result: command.summary(result, num_classes=result.model.num_classes)
    )


if __name__ == "__main__":
    sys.exit(main())
