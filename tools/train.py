"""Train or fine-tune Next-ViT on an image folder (ImageNet layout).

    # the paper's recipe from scratch, 8 GPUs of one machine
    python tools/train.py --train imagenet/train --val imagenet/val \\
        --variant small --batch-size 2048 --distribution mirrored

    # fine-tune the ImageNet checkpoint on your classes (one line)
    python tools/train.py --train flowers/train --val flowers/val \\
        --weights nextvit_small.bd_in1k --epochs 10 --learning-rate 5e-5

    # the upstream 384 fine-tuning recipe
    python tools/train.py --train imagenet/train --val imagenet/val \\
        --weights nextvit_small.bd_in1k --recipe finetune_384

Run it again with the same --output to resume from the last epoch. See
``keras_nextvit.training.train`` for what each option does.
"""

import argparse
import json
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", required=True, help="training folder: <root>/<class>/<image>")
    parser.add_argument("--val", help="validation folder, same classes")
    parser.add_argument("--output", default="runs/nextvit", help="checkpoints, logs, model.keras")
    parser.add_argument(
        "--variant",
        default="small",
        help="small | base | large, or four comma-separated stage depths (e.g. 1,1,5,1)",
    )
    parser.add_argument("--weights", help="preset name or checkpoint file to start from")
    parser.add_argument("--recipe", default="paper", help="paper | finetune_384")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch per step")
    parser.add_argument(
        "--learning-rate", type=float, help="per 256 images (scaled linearly with the batch)"
    )
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--mixed-precision", choices=["bfloat16", "float16"])
    parser.add_argument("--remat", action="store_true", help="gradient checkpointing")
    parser.add_argument(
        "--distribution",
        default="none",
        choices=["none", "mirrored", "multiworker", "tpu", "data_parallel"],
    )
    parser.add_argument("--freeze-stages", type=int, default=0, help="freeze stem + N stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--max-steps-per-epoch", type=int)
    parser.add_argument("--no-tensorboard", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from keras_nextvit import training

    variant = args.variant
    if "," in variant:
        variant = tuple(int(d) for d in variant.split(","))
    result = training.train(
        args.train,
        val_dir=args.val,
        output_dir=args.output,
        variant=variant,
        weights=args.weights,
        recipe=args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        image_size=args.image_size,
        gradient_accumulation=args.gradient_accumulation,
        mixed_precision=args.mixed_precision,
        remat=args.remat,
        distribution=args.distribution,
        freeze_stages=args.freeze_stages,
        seed=args.seed,
        resume=not args.no_resume,
        max_steps_per_epoch=args.max_steps_per_epoch,
        tensorboard=not args.no_tensorboard,
    )
    summary = {
        "output": result.output_dir,
        "started_at_epoch": result.initial_epoch,
        "final_val": result.metrics,
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
