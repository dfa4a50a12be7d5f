"""The command-line scaffold of the training tools (``tools/train.py``,
``tools/train_segmentation.py``, ``tools/train_detection.py``): the options
every run takes, and one way to end: a JSON summary, or ``error: ...`` with
exit status 2 for a mistake, or a note on resuming with 130 after Ctrl-C,
never a traceback."""

import argparse
import json
import os
import sys

from .distribute import DISTRIBUTIONS


def ints(text, what):
    """``"1,1,5,1"`` -> ``(1, 1, 5, 1)``; ``what`` names the option in the error."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None


def variant(text):
    """``--variant``: a preset name, or four comma-separated stage depths."""
    if "," not in text:
        return text
    depths = ints(text, "--variant")
    if len(depths) != 4:
        raise ValueError(f"--variant needs four stage depths, got {text!r}")
    return depths


def parser(description, train_help, output_default):
    """An argument parser with the data options every run takes: ``--train``,
    ``--val``, ``--output`` and ``--variant``."""
    made = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_folder_arguments(made, train_help, output_default)
    return made


def add_folder_arguments(parser, train_help, output_default):
    parser.add_argument("--train", required=True, help=train_help)
    parser.add_argument("--val", help="validation folder, evaluated after every epoch")
    parser.add_argument("--output", default=output_default, help="checkpoints, logs, model.keras")
    parser.add_argument(
        "--variant", default="small",
        help="small | base | large, or four comma-separated stage depths (e.g. 1,1,5,1)",
    )


def add_run_arguments(parser):
    """Precision, distribution, seed, resuming and logging."""
    parser.add_argument("--mixed-precision", choices=["bfloat16", "float16"])
    parser.add_argument("--distribution", default="none", choices=list(DISTRIBUTIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--no-tensorboard", action="store_true")


def folder_options(args):
    """The trainers' keywords of :func:`add_folder_arguments` (``--train`` is
    their first argument)."""
    return dict(val_dir=args.val, output_dir=args.output, variant=variant(args.variant))


def same_names(args, names):
    """``{name: args.name}``: the options a trainer takes under their own names."""
    return {name: getattr(args, name) for name in names}


def run_options(args):
    """The :func:`keras_nextvit.trainer.run` keywords of :func:`add_run_arguments`."""
    return dict(
        mixed_precision=args.mixed_precision,
        distribution=args.distribution,
        seed=args.seed,
        resume=not args.no_resume,
        tensorboard=not args.no_tensorboard,
    )


def summary(result, **extra):
    """What a finished run prints: where it wrote, the epoch it started from,
    the final validation scores, and ``extra`` fields."""
    return {"output": result.output_dir, **extra, "started_at_epoch": result.initial_epoch,
            "final_val": result.metrics}


def run_command(args, train, summary=summary):
    """``train()`` -> result; print ``summary(result)`` as JSON. Returns the
    exit status."""
    try:
        if not os.path.isdir(args.train):
            raise FileNotFoundError(f"--train: {args.train} is not a directory")
        if args.val is not None and not os.path.isdir(args.val):
            raise FileNotFoundError(f"--val: {args.val} is not a directory")
        from ..startup import import_tensorflow_quietly

        import_tensorflow_quietly()
        import tensorflow as tf

        try:
            result = train()
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
    print(json.dumps(summary(result), indent=1))
    return 0
