"""Tracing cost of a training step with Keras' AdamW and keras_nextvit.AdamW.

    python tools/optimizer_trace.py [--rounds 2]

Each configuration runs in a process of its own, rounds interleaved: the tiny
Next-ViT (depths 1, 1, 5, 1) at 32x32 with 10 classes, batch 64, AdamW with a
warm-up and cosine schedule and weight decay 0.05, compiled with a metric
object and its optimizer built first (one trace). Prints, per optimizer, the
operations of the traced training step, the first ``train_on_batch`` (the
trace and one step) and the median of 8 further steps, medians over rounds.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

OPTIMIZERS = ("keras", "keras_nextvit")


def work(name):
    import time

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_nextvit
    from keras_nextvit import training

    keras.utils.set_random_seed(0)
    model = keras_nextvit.NextViT((1, 1, 5, 1), input_shape=(32, 32, 3), classes=10, drop_path_rate=0.0)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, 80, warmup_target=1e-3, warmup_steps=10)
    optimizer_class = keras_nextvit.AdamW if name == "keras_nextvit" else keras.optimizers.AdamW
    model.compile(
        optimizer=optimizer_class(learning_rate=schedule, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    training.build_optimizer_variables(model)
    rng = np.random.default_rng(0)
    x = rng.random((64, 32, 32, 3)).astype("float32")
    y = np.arange(64) % 10
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    steps = []
    for _ in range(8):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        steps.append(time.perf_counter() - start)
    step = tf.function(model.train_step)
    graph = step.get_concrete_function(
        (tf.TensorSpec((64, 32, 32, 3)), tf.TensorSpec((64,), tf.int64))
    ).graph
    operations, seen = 0, set()

    def count(graph):
        nonlocal operations
        operations += len(graph.get_operations())
        for function in graph._functions.values():
            if function.name not in seen:
                seen.add(function.name)
                count(function.graph)

    count(graph)
    print("RESULT " + json.dumps(
        {"operations": operations, "first_s": first, "step_ms": statistics.median(steps) * 1e3}
    ))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", choices=OPTIMIZERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.work:
        work(args.work)
        return 0
    results = {name: [] for name in OPTIMIZERS}
    for _ in range(args.rounds):
        for name in OPTIMIZERS:
            out = subprocess.run(
                [sys.executable, __file__, "--work", name], capture_output=True, text=True, check=True
            ).stdout
            results[name].append(json.loads(out.split("RESULT ", 1)[1]))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    for name, rows in results.items():
        print(
            f"{name + ' AdamW':20s} operations {rows[0]['operations']:6d}  "
            f"first batch {statistics.median(r['first_s'] for r in rows):5.1f} s  "
            f"step {statistics.median(r['step_ms'] for r in rows):4.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
