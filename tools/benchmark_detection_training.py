"""One training step of Next-ViT + Mask R-CNN: Keras on TensorFlow against
the PyTorch reference (``tools/torch_reference_detection.py``).

    python tools/benchmark_detection_training.py [--variant small] [--size 800x1216]
        [--batch 2] [--warmup 2] [--steps 3] [--rounds 1] [--json FILE]

A step is what a training iteration does after its batch is loaded: the
forward pass, the targets (assignment, sampling, proposals, mask crops), the
five losses, the backward pass and an AdamW update; the backbone's stem and
stage 1 frozen and its BatchNorms in inference mode (``frozen_stages=1,
norm_eval=True``) on both sides. Both start from the project's synthetic
weights (the values the parity tests load on both sides: the two detectors
compute the same outputs, so their proposals, targets and RoIs are alike)
on the same generated batch (noise images, rectangles with their masks).
Each side runs in a
process of its own (this script with ``--side``), sides alternating round by
round; the medians of the timed steps are compared.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data" / "detection"


def synthetic_batch(batch, height, width, instances=8, seed=0):
    """Images ``(B, H, W, 3)`` (standard normal, as normalised pixels), and per
    image ``instances`` boxes, labels and rectangle masks ``(G, H, W)``."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, height, width, 3)).astype(np.float32)
    boxes, labels, masks = [], [], []
    for _ in range(batch):
        size = rng.uniform(32, min(height, width) / 3, (instances, 2))
        corner = rng.uniform(0, 1, (instances, 2)) * (np.array([width, height]) - size)
        box = np.concatenate([corner, corner + size], 1).astype(np.float32)
        mask = np.zeros((instances, height, width), np.uint8)
        for k, (x0, y0, x1, y1) in enumerate(box.astype(int)):
            mask[k, y0:y1, x0:x1] = 1
        boxes.append(box)
        labels.append(rng.integers(0, 80, instances).astype(np.int32))
        masks.append(mask)
    return images, boxes, labels, masks


def keras_steps(variant, height, width, batch_size, warmup, steps):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    import keras
    import tensorflow as tf

    import keras_nextvit
    from keras_nextvit.detection import training

    images, boxes, labels, masks = synthetic_batch(batch_size, height, width)
    batch = {
        "images": images, "gt_boxes": np.stack(boxes), "gt_labels": np.stack(labels),
        "gt_valid": np.ones(np.stack(labels).shape, bool),
        "img_shapes": np.array([[height, width]] * batch_size),
        "pad_shapes": np.array([[height, width]] * batch_size), "masks": masks,
    }
    from keras_nextvit import synthetic

    keras.utils.set_random_seed(0)
    detector = keras_nextvit.NextViTMaskRCNN(variant, num_classes=80)
    # the reference's state dict (mmdet's names and order; the synthetic values depend on both)
    keys = json.loads((DATA / f"det_maskrcnn_{variant}.keys.json").read_text())
    keras_nextvit.load_torch_weights(detector, synthetic.synthetic_state_dict([(k, tuple(v)) for k, v in keys]))
    training.freeze_for_training(detector)
    optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.05)
    seed = keras.random.SeedGenerator(0)
    variables = detector.trainable_variables

    def step():
        with tf.GradientTape() as tape:
            losses = training.detector_losses(detector, batch, seed, training=True)
        optimizer.apply_gradients(zip(tape.gradient(losses["loss"], variables), variables))
        return float(losses["loss"])

    return _timed(step, warmup, steps)


def torch_steps(variant, height, width, batch_size, warmup, steps):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("_torch_reference_detection", HERE / "torch_reference_detection.py")
    reference = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = reference
    spec.loader.exec_module(reference)

    images, boxes, labels, masks = synthetic_batch(batch_size, height, width)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    boxes = [torch.from_numpy(b) for b in boxes]
    labels = [torch.from_numpy(v).long() for v in labels]
    masks = [torch.from_numpy(m) for m in masks]
    torch.manual_seed(0)
    model = reference.load_synthetic(reference.build_detector(variant))
    model.train()
    backbone = model.backbone
    for module in backbone.modules():  # norm_eval
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    # frozen_stages=1: the stem and stage 1's blocks (upstream's features[:stage_out_idx[0] + 1])
    frozen = [backbone.stem, *backbone.features[: backbone.stage_out_idx[0] + 1]]
    for part in frozen:
        for parameter in part.parameters():
            parameter.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)

    def step():
        losses = reference.training_losses(model, images, boxes, labels, masks, generator)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return float(total.detach())

    return _timed(step, warmup, steps)


def _timed(step, warmup, steps):
    times, losses = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        losses.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - start)
        print(f"  step {i + 1}/{warmup + steps}: {time.perf_counter() - start:.1f} s, loss {losses[-1]:.3f}",
              file=sys.stderr, flush=True)
    import resource

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return {"seconds": times, "losses": losses, "peak_gib": peak_gib}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="small", choices=("small", "base", "large"))
    parser.add_argument("--size", default="800x1216", help="HxW of the padded batch")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, allocation)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=1, help="processes per side, sides alternating")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--side", choices=("keras", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size takes HxW, got {args.size!r}")
    settings = (args.variant, height, width, args.batch, args.warmup, args.steps)

    if args.side:  # one side, in this process
        result = (keras_steps if args.side == "keras" else torch_steps)(*settings)
        print("RESULT " + json.dumps(result))
        return 0

    seconds = {"keras": [], "torch": []}
    peaks = {"keras": [], "torch": []}
    for round_index in range(args.rounds):
        for side in ("torch", "keras") if round_index % 2 else ("keras", "torch"):
            print(f"round {round_index + 1}/{args.rounds}: {side}", file=sys.stderr, flush=True)
            command = [sys.executable, __file__, "--side", side, "--variant", args.variant, "--size",
                       args.size, "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps",
                       str(args.steps)]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                print(f"error: the {side} process failed (exit {done.returncode})", file=sys.stderr)
                return 1
            result = json.loads(lines[-1][len("RESULT "):])
            seconds[side] += result["seconds"]
            peaks[side].append(result["peak_gib"])
    sys.path.insert(0, str(HERE))
    from benchmark import _cpu_model  # name, family / model, instruction sets

    medians = {side: statistics.median(times) for side, times in seconds.items()}
    report = {
        "variant": args.variant, "size": [height, width], "batch": args.batch, "cpu": _cpu_model(),
        "cores": os.cpu_count(), "seconds": seconds, "median_seconds": medians,
        "peak_gib": {side: max(values) for side, values in peaks.items()},
        "keras_over_torch": medians["keras"] / medians["torch"],
    }
    print(f"Next-ViT-{args.variant[0].upper()} Mask R-CNN training step, batch {args.batch} at "
          f"{height}x{width}, {report['cpu']} ({report['cores']} cores): Keras/TensorFlow "
          f"{medians['keras']:.1f} s, PyTorch reference {medians['torch']:.1f} s (medians of "
          f"{len(seconds['keras'])} and {len(seconds['torch'])} steps): "
          f"{report['keras_over_torch']:.2f}x; largest process {report['peak_gib']['keras']:.1f} / "
          f"{report['peak_gib']['torch']:.1f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
