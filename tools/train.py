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

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_nextvit.trainer import command  # noqa: E402  (TensorFlow loads only when training starts)


# the options training.train takes under their own names
OPTIONS = (
    "weights", "recipe", "epochs", "batch_size", "learning_rate", "image_size", "gradient_accumulation",
    "remat", "freeze_stages", "max_steps_per_epoch",
)


def parse_args(argv=None):
    parser = command.parser(__doc__, "training folder: <root>/<class>/<image>", "runs/nextvit")
    parser.add_argument("--weights", help="preset name or checkpoint file to start from")
    parser.add_argument("--recipe", default="paper", help="paper | finetune_384")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch per step")
    parser.add_argument(
        "--learning-rate", type=float, help="per 256 images (scaled linearly with the batch)"
    )
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--remat", action="store_true", help="gradient checkpointing")
    parser.add_argument("--freeze-stages", type=int, default=0, help="freeze stem + N stages")
    parser.add_argument("--max-steps-per-epoch", type=int)
    command.add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def train():
        from keras_nextvit import training

        return training.train(
            args.train,
            **command.folder_options(args),
            **command.same_names(args, OPTIONS),
            **command.run_options(args),
        )

    return command.run_command(args, train)


if __name__ == "__main__":
    sys.exit(main())
