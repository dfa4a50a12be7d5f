#!/usr/bin/env python
"""Latency of Next-ViT: the Keras model on TensorFlow against the PyTorch reference.

    python tools/benchmark.py                      # Next-ViT-S, 224, batch 1 and 8
    python tools/benchmark.py --variant base --batch 1

Every configuration runs in a process of its own (fresh threads, caches and
allocator), warms up, then reports the median of repeated runs:

* ``keras tf.function``: ``model(x, training=False)`` in a ``tf.function``;
* ``keras XLA``: the same with ``jit_compile=True``;
* ``torch eager``: ``tools/torch_reference.py`` under ``torch.inference_mode``.

The bar of issue #2: the better of the two Keras rows at most 0.75x torch eager.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _median_ms(fn, x, warmup, repeats):
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def keras_worker(variant, size, batch, mode, warmup, repeats):
    """Runs inside its own process: build, compile, time."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.path.insert(0, ROOT)
    import numpy as np
    import tensorflow as tf

    import keras_nextvit
    from keras_nextvit.presets import VARIANTS

    model = keras_nextvit.NextViT(
        depths=VARIANTS[variant]["depths"], input_shape=(size, size, 3), name=variant
    )
    x = tf.constant(np.random.default_rng(0).standard_normal((batch, size, size, 3)), tf.float32)
    fn = tf.function(lambda t: model(t, training=False), jit_compile=(mode == "xla"))
    median, best = _median_ms(lambda t: fn(t).numpy(), x, warmup, repeats)
    return {"median_ms": median, "min_ms": best}


def peak_worker(warmup, repeats):
    """This CPU's practical float32 limit: GFLOP/s of a large TF matmul."""
    import tensorflow as tf

    n = 2048
    a = tf.random.normal((n, n))
    fn = tf.function(lambda t: tf.matmul(t, t))
    median, best = _median_ms(lambda t: fn(t).numpy(), a, warmup, repeats)
    return {"median_ms": median, "min_ms": best, "gflops": 2 * n**3 / (best * 1e6)}


def torch_worker(variant, size, batch, warmup, repeats):
    cmd = [
        sys.executable, os.path.join(HERE, "torch_reference.py"),
        "--variant", variant, "--size", str(size), "--batch", str(batch),
        "--warmup", str(warmup), "--repeats", str(repeats),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    median = float(re.search(r"median ([\d.]+) ms", out)[1])
    best = float(re.search(r"min ([\d.]+)", out)[1])
    return {"median_ms": median, "min_ms": best}


def run_isolated(kind, args, batch, mode=None):
    if kind == "torch":
        return torch_worker(args.variant, args.size, batch, args.warmup, args.repeats)
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", mode,
        "--variant", args.variant, "--size", str(args.size), "--batch", str(batch),
        "--warmup", str(args.warmup), "--repeats", str(args.repeats),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="small", choices=["small", "base", "large"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--worker", choices=["function", "xla", "peak"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch reference rows")
    args = parser.parse_args(argv)

    if args.worker == "peak":
        print(json.dumps(peak_worker(args.warmup, args.repeats)))
        return
    if args.worker:
        result = keras_worker(args.variant, args.size, args.batch[0], args.worker, args.warmup, args.repeats)
        print(json.dumps(result))
        return

    rows = []
    for batch in args.batch:
        results = {
            "keras tf.function": run_isolated("keras", args, batch, "function"),
            "keras XLA": run_isolated("keras", args, batch, "xla"),
        }
        if not args.skip_torch:
            results["torch eager (reference)"] = run_isolated("torch", args, batch)
        rows.append((batch, results))

    print(f"Next-ViT-{args.variant[0].upper()} {args.size}x{args.size}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats} runs after {args.warmup} warm-up runs, one process each")
    print(f"{'batch':>5}  {'configuration':<26}{'median ms':>10}{'min ms':>9}{'ms/image':>10}")
    for batch, results in rows:
        for name, r in results.items():
            print(f"{batch:>5}  {name:<26}{r['median_ms']:>10.1f}{r['min_ms']:>9.1f}"
                  f"{r['median_ms'] / batch:>10.1f}")
        if "torch eager (reference)" in results:
            best = min(results["keras tf.function"]["median_ms"], results["keras XLA"]["median_ms"])
            ratio = best / results["torch eager (reference)"]["median_ms"]
            verdict = "meets" if ratio <= 0.75 else "misses"
            print(f"{batch:>5}  best Keras / torch eager = {ratio:.2f} ({verdict} the 0.75 bar)")

    # How close to the hardware both are: MACs of one image against this
    # CPU's float32 matmul rate.
    sys.path.insert(0, ROOT)
    from keras_nextvit.presets import PAPER

    peak = run_isolated("keras", args, 1, "peak")
    gflop = 2 * PAPER[args.variant]["gflops"] * (args.size / 224) ** 2
    print(f"\nfloat32 matmul (2048^2) on this CPU: {peak['gflops']:.0f} GFLOP/s; one image is "
          f"~{gflop:.1f} GFLOP (2 x MACs), so ~{gflop / peak['gflops'] * 1e3:.0f} ms at that rate")


if __name__ == "__main__":
    main()
