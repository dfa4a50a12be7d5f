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

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _ints(text, what):
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", required=True, help="training folder (see above)")
    parser.add_argument("--val", help="validation folder, evaluated after every epoch")
    parser.add_argument(
        "--output", default="runs/segmentation", help="checkpoints, logs, model.keras"
    )
    parser.add_argument(
        "--variant", default="small",
        help="small | base | large, or four comma-separated stage depths (e.g. 1,1,5,1)",
    )
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
    parser.add_argument("--mixed-precision", choices=["bfloat16", "float16"])
    parser.add_argument(
        "--distribution", default="none",
        choices=["none", "mirrored", "multiworker", "tpu", "data_parallel"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--no-jit", action="store_true", help="no XLA compilation")
    return parser.parse_args(argv)


def _options(args):
    variant = args.variant
    if "," in variant:
        variant = _ints(variant, "--variant")
        if len(variant) != 4:
            raise ValueError(f"--variant needs four stage depths, got {args.variant!r}")
    channels = _ints(args.channels, "--channels") if args.channels else None
    if channels is not None and len(channels) != 2:
        raise ValueError(f"--channels needs two widths, got {args.channels!r}")
    crop = None
    if args.crop_size:
        crop = _ints(args.crop_size, "--crop-size")
        if len(crop) not in (1, 2):
            raise ValueError(f"--crop-size must be N or H,W, got {args.crop_size!r}")
        crop = crop * 2 if len(crop) == 1 else crop
    return dict(
        val_dir=args.val,
        output_dir=args.output,
        variant=variant,
        head=args.head,
        recipe=args.recipe,
        num_classes=args.num_classes,
        weights=args.weights,
        backbone_weights=args.backbone_weights,
        iterations=args.iterations,
        iterations_per_epoch=args.iterations_per_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        crop_size=crop,
        reduce_zero_label=args.reduce_zero_label,
        channels=channels,
        drop_path_rate=args.drop_path_rate,
        train_split=args.train_split,
        val_split=args.val_split,
        mixed_precision=args.mixed_precision,
        distribution=args.distribution,
        seed=args.seed,
        resume=not args.no_resume,
        tensorboard=not args.no_tensorboard,
        jit_compile=False if args.no_jit else "auto",
    )


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    try:
        options = _options(args)
        if not os.path.isdir(args.train):
            raise FileNotFoundError(f"--train: {args.train} is not a directory")
        if args.val is not None and not os.path.isdir(args.val):
            raise FileNotFoundError(f"--val: {args.val} is not a directory")
        import tensorflow as tf

        from keras_nextvit.segmentation import training

        try:
            result = training.train(args.train, **options)
        except tf.errors.OpError as error:
            # A bad file met inside the data pipeline (e.g. image and mask sizes differ).
            raise ValueError(error.message.strip().splitlines()[0]) from None
    except (ValueError, OSError, NotImplementedError, RuntimeError) as error:
        # OSError: missing or unreadable files; RuntimeError: no TPU found.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: run the same command again to resume from the last checkpoint in "
            f"{os.path.join(args.output, 'checkpoints')}",
            file=sys.stderr,
        )
        return 130
    summary = {
        "output": result.output_dir,
        "num_classes": result.num_classes,
        "started_at_epoch": result.initial_epoch,
        "final_val": result.metrics,
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
