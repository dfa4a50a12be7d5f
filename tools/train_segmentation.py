"""Train a Next-ViT segmenter (Semantic FPN or UperNet) on an image/mask folder.

    # UperNet on ADE20K from the ImageNet checkpoint: the upstream 160k recipe
    python tools/train_segmentation.py --train data/ade/ADEChallengeData2016 \\
        --val data/ade/ADEChallengeData2016 --reduce-zero-label --num-classes 150 \\
        --head upernet --backbone-weights nextvit_small.bd_in1k --output runs/upernet_s

    # Semantic FPN (80k recipe) on your folder: images/<name>.jpg + masks/<name>.png
    python tools/train_segmentation.py --train data/mine/train --val data/mine/val \\
        --backbone-weights nextvit_small.bd_in1k --output runs/fpn_mine

Folders: ADE20K's images/{split}/*.jpg + annotations/{split}/*.png (the same
root serves --train, split "training", and --val, split "validation"), or
images/* + masks/*.png. Masks are single-channel PNGs of class indices; 255 is
ignored. Without --num-classes the classes are counted from the masks.

Run it again with the same --output to resume from the last checkpoint
(every --iterations-per-epoch steps). OUTPUT/model.keras is the trained
segmenter (without UperNet's auxiliary head); OUTPUT/model.weights.h5 loads
into NextViTSegmenter(weights=...) and tools/eval_segmentation.py --weights.
See keras_nextvit.segmentation.training.train for what each option does.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_nextvit.trainer import command  # noqa: E402  (TensorFlow loads only when training starts)


# the options training.train takes under their own names
OPTIONS = (
    "head", "recipe", "num_classes", "weights", "backbone_weights", "iterations", "iterations_per_epoch",
    "batch_size", "learning_rate", "reduce_zero_label", "drop_path_rate", "train_split", "val_split",
)


def parse_args(argv=None):
    parser = command.parser(__doc__, "training folder (see above)", "runs/segmentation")
    parser.add_argument("--head", choices=["fpn", "upernet"], help="default: the recipe's (fpn)")
    parser.add_argument(
        "--recipe", choices=["fpn", "upernet"],
        help="fpn (80k iterations, lr 1e-4) | upernet (160k, lr 6e-5, warm-up, auxiliary head); "
        "default: the head's",
    )
    parser.add_argument("--num-classes", type=int, help="default: max mask label + 1")
    parser.add_argument("--weights", help="segmentation checkpoint to start from")
    parser.add_argument(
        "--backbone-weights", help="ImageNet preset name or checkpoint for the backbone"
    )
    parser.add_argument("--iterations", type=int, help="training steps (recipe: 80000 / 160000)")
    parser.add_argument(
        "--iterations-per-epoch", type=int,
        help="steps between checkpoints and validation; must divide --iterations "
        "(default: its largest divisor up to the recipe's 8000 / 16000)",
    )
    parser.add_argument("--batch-size", type=int, help="global batch per step (recipe: 16)")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate, used as given")
    parser.add_argument("--crop-size", help="training crop: N or H,W (recipe: 512)")
    parser.add_argument(
        "--reduce-zero-label", action="store_true",
        help="ADE20K's annotations: 0 is 'other' (ignored), class k is stored as k + 1",
    )
    parser.add_argument(
        "--channels", help="head widths, two comma-separated ints (small experiments)"
    )
    parser.add_argument(
        "--drop-path-rate", type=float, help="backbone stochastic depth (recipe: 0.2)"
    )
    parser.add_argument("--train-split", help="ADE20K-layout split of --train (default: training)")
    parser.add_argument("--val-split", help="ADE20K-layout split of --val (default: validation)")
    command.add_run_arguments(parser)
    parser.add_argument("--no-jit", action="store_true", help="no XLA compilation")
    return parser.parse_args(argv)


def _options(args):
    channels = command.ints(args.channels, "--channels") if args.channels else None
    if channels is not None and len(channels) != 2:
        raise ValueError(f"--channels needs two widths, got {args.channels!r}")
    crop = None
    if args.crop_size:
        crop = command.ints(args.crop_size, "--crop-size")
        if len(crop) not in (1, 2):
            raise ValueError(f"--crop-size must be N or H,W, got {args.crop_size!r}")
        crop = crop * 2 if len(crop) == 1 else crop
    return dict(
        **command.folder_options(args),
        **command.same_names(args, OPTIONS),
        crop_size=crop,
        channels=channels,
        jit_compile=False if args.no_jit else "auto",
        **command.run_options(args),
    )


def main(argv=None):
    args = parse_args(argv)

    def train():
        from keras_nextvit.segmentation import training

        return training.train(args.train, **_options(args))

    return command.run_command(
        args, train, lambda result: command.summary(result, num_classes=result.num_classes)
    )


if __name__ == "__main__":
    sys.exit(main())
