"""Where the test suite spends its time and memory.

    python tools/suite_profile.py run profile.jsonl [-- PYTEST ARGS...]
    python tools/suite_profile.py show profile.jsonl [--top 25]
    python tools/suite_profile.py compare before.jsonl after.jsonl

``run`` runs pytest with the suite-profile plugin (``tests/suite_profile_plugin.py``),
which appends one JSON line per test: wall time (setup + call + teardown),
the test process's resident memory before and after, its peak, and the peak
of the subprocesses it waited for. ``show`` prints per-file totals (time,
memory grown while the file ran, peak), the slowest tests and those that grew
the process most. ``compare`` puts two profiles' per-file times side by side.
Under pytest-xdist each worker's lines carry its name; memory is per worker.
A subprocess's peak (``children_peak_mib``) also counts the pages it shared
with its parent before it started its own program, so read it as an upper
bound.

Where the suite's time and memory go (2-core Intel Xeon with AMX, Keras 3.15,
TensorFlow 2.21):
- In one process the suite took 45 minutes and peaked at 17 GiB: tf2onnx's
  conversions of Next-ViT-S and of UperNet each left ~7 GB of reference
  cycles that Python's collector did not reach (now collected by the ONNX
  exporter, which also runs tf2onnx's optimizers in place), and the process
  kept everything else it had made.
- What a process kept had two more causes, both in TensorFlow, both handled
  in ``tests/conftest.py``. (1) Its oneDNN build serves large tensors from a
  pool allocator of its own that never returns memory: a file that had built
  and exported segmenters left 3.0 GB resident after every Python object was
  gone, 1.2 GB with ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1``. (2) Keras'
  optimizer sums gradients through the replica context's ``all_reduce``, a
  ``tf.custom_gradient``; traced inside a training step it registers its
  gradient function in TensorFlow's global registry, and that closure holds
  the step's whole graph: 200-300 MB per ``fit`` of a tiny Next-ViT, for the
  life of the process (tensorflow/tensorflow#61791, keras-team/keras#17458
  are the symptom). Dropped after each test, three fits in a row stay at the
  same size.
- With both, and two workers (``-n 2``), a clean-clone ``.ci/run`` took 23.5
  minutes of tests and no process passed 7.6 GB (GNU time). About 1.8 tests
  run at once, each 10-20% slower than alone; the CPUs are busy throughout,
  so the time left is work: tracing Keras models into TensorFlow graphs
  (33 s for Next-ViT-S's training step, 46,000 operations), converting them
  (TFLite, ONNX, OpenVINO: 10-40 s each) and the notebooks (03: seven exports
  of Next-ViT-S, 185 s; 04: fine-tuning Next-ViT-S, 154 s; 05: training a
  segmenter, 128 s), the JAX runs (the two-process data-parallel test, three
  JAX processes compiling, 141 s; the JAX and PyTorch parity runs, 150 s).
- ``fit`` traced the training step twice whenever a variable was created
  inside its first trace: an optimizer left unbuilt, or a metric named by a
  string (``metrics=["accuracy"]``). The package's training builds the
  optimizer when it compiles; the notebooks and the digits model build it
  and compile metric objects.
- Python's garbage collector walked TensorFlow's, Keras' and the test
  files' objects at every full collection: 49 s of collections in
  test_cli, test_export and test_hub, 24 s once ``gc.freeze()`` puts what
  exists after collection out of its sight. Keras runs a full collection
  per variable it deletes: ``model.quantize("int8")`` of Next-ViT-S ran 86
  (17 s alone, 48 s in a worker; its test patches them out).
- Keras' ``fit`` on NumPy arrays makes a ``tf.data`` iterator per epoch;
  destroying the last one waits for tf.data's autotuning thread to wake
  (seen with gdb: ``RootDataset::Iterator`` waiting in
  ``Model::OptimizeLoop``): 0-7 s at an epoch boundary, none with
  autotuning off. The package's trainers keep one iterator for all epochs;
  across test_cli, test_export and test_hub iterators' destruction took 7 s
  in all, so the tests leave it.
- Of the 11,787 operations of the tiny Next-ViT's training step with AdamW,
  6,191 are the optimizer's (plain SGD: 5,596 in all): about 41 per
  variable, 151 variables. Keras makes the schedule, step count and bias
  corrections again for every variable; ``keras_nextvit.AdamW`` makes them
  once per step (same updates): with a cosine schedule the tiny model's
  step 18,020 -> 9,170 operations, its first batch (the trace) 11.7 s ->
  5.9 s (``tools/optimizer_trace.py``, each in its own process).
- TensorFlow's graph optimizer (grappler) is 3-6 s of each training step's
  first call and rounds two graphs of the same maths differently; it stays
  on (it is what users run).
- Keras on JAX runs eagerly op by op and XLA compiles each operation for
  each shape: building Next-ViT-S took 14 s and its first call 17 s in a
  fresh process, 3 s and 5 s with the executables of an earlier process in
  a JAX compilation cache (the run now shares one). Running the
  data-parallel test's single-process reference first so that its two
  processes find its executables was slower (76 s -> 100 s alone): they
  compile other programs (sharded) anyway.
- One thread per worker. Under ``-n 2`` each worker, and every notebook and
  subprocess it starts, ran TensorFlow's, PyTorch's and OpenBLAS's thread
  pools as wide as the machine: four or more busy threads on two cores.
  ``tests/conftest.py`` now sets ``TF_NUM_INTRAOP_THREADS``,
  ``TF_NUM_INTEROP_THREADS`` and ``OMP_NUM_THREADS`` to 1 in the workers
  (TensorFlow's alone, tried earlier over four files, measured 4.5% less,
  within the noise). The whole suite, twice in one hour on one machine
  (``-n 2``, ``--suite-profile``, ``compare``): 28.6 -> 22.1 minutes, user
  CPU 2,727 -> 2,105 s, system 481 -> 383 s, every large file faster (the
  notebooks 661 -> 473 test-seconds, the PyTorch reference files 95 -> 36).
  XLA's own flags for one thread (``--xla_cpu_multi_thread_eigen=false``)
  changed nothing for the JAX parity files pinned to one core (56.5 -> 54.7 s).
- A first ``predict`` on TensorFlow traces the model into a graph:
  Next-ViT-S at 64x96 2.4 s, against 0.3 s for calling the model (S at
  224: 2.4 against 0.6 s). Tests that check one batch call the model
  (``conftest.infer``; JAX keeps ``predict``, one compiled program):
  ``test_parity.py`` and ``test_reparam.py`` in one process 78 -> 41 s
  (2-core Xeon, family 6 model 207). Keras' variable initialisers cost
  little on TensorFlow (S builds in 1.3 s with them or with zeros) and
  much on JAX (S 3.9 -> 1.4 s, B 1.9 -> 0.5, L 2.6 -> 0.5 s with zeros,
  each in a fresh process). The JAX parity run's state-dict spec tests
  take ~37 s of its 114 (alone) building models to read their weights'
  names; building the segmenters' in a ``keras.StatelessScope`` (no
  initialiser runs) did not make them faster (28.9 -> 25.5 s, noise).
- Tried and left: ``jit_compile=True`` for the digits training (the XLA
  compile costs more than it saves: 63 s -> 109 s); TFLite's
  ``int8_float_attention`` without the quantization debugger's instrumented
  model (14.7 s -> 13.2 s, private API); converting from a concrete function
  instead of a SavedModel (its variables stay uninitialised: NaN outputs).
  An export of Next-ViT-S to TFLite at 64x96 is 1.5 s of merging, 9 s of
  writing the SavedModel the converter reads (Keras' ExportArchive: tracing,
  resource tracking, saving) and 10 s of converting. ONNX: tf2onnx rewrote
  every node's protobuf, weights included, after each of its ~50 optimizer
  steps, a quarter of Next-ViT-S's conversion; the exporter now skips those
  rewrites (the graph is the same, ``tests/test_export.py``).
- The whole suite's CPU under a sampler (``py-spy record --subprocesses -r
  20 -f raw`` around ``pytest -n 2``: every worker, kernel and subprocess,
  2,563 s sampled): TensorFlow tracing 433 s; creating Keras variables on
  TensorFlow 232 s, 135 of them the random initializers of models whose
  weights are loaded right after; imports 204 s over 42 processes
  (TensorFlow alone 3.5-4.3 s each); the synthetic checkpoints 105 s (now
  computed in cache-sized blocks, same bits: Next-ViT-L's 0.63 -> 0.43 s);
  TensorFlow's Python stack capture for every traced operation 81 s;
  h5py's dataset creation for checkpoints 30 s. XLA's compiles in the JAX
  processes do not show (the JAX parity run: 56 s sampled of 123-141 s).
  Exports of one model now share its merged form and the converter's
  SavedModels (``keras_nextvit/exporters/cache.py``): tutorial 03's seven
  exports 150 -> 135 s.
- The JAX processes, measured alone on a 2-core Xeon of model 167 (each
  with a cold compilation cache). The parity run spent 46% of its CPU in
  XLA's execution threads (``perf``: 32% in code XLA compiled at
  optimisation level 0, the rest YNNPACK's products) and a third of its
  Python time compiling Keras' initialisers, one program per weight shape,
  for models that only give their weights' names or load every weight next.
  Those now start at zero (``conftest.zero_initialised``): 88.7 -> 65.1 s,
  user CPU 115 -> 73 s. Other XLA settings measured on that run: level 1
  101 s, the default level without fusion emitters 115 s, level 0 with
  them 108 s, level 0 without them and with single-threaded execution
  87-89 s. The data-parallel test now compiles without fusion emitters
  too: 69 -> 46 s (its losses stay within 1e-7 and 4e-6 of one device's).
- Keras' PyTorch backend runs ``ops.scatter`` as a Python loop over the
  rows; the detector's batched NMS places its boxes with
  ``ops.scatter_update`` (same values): the PyTorch parity run 39.2 ->
  34.8 s.
- Measured and left: without grappler the tiny Next-ViT's first training
  step takes 4.2 s instead of 5.9 (its passes take 20-220 ms each, none
  dominant); without TensorFlow's per-operation Python stack capture the
  same step took 5.5-5.8 s either way. A whole run under ``-n 2`` keeps the
  two cores 95% busy (user + system CPU 2,341 s of 2,456 core-seconds).
"""

import argparse
import collections
import json
import os
import signal
import subprocess
import sys


def load(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def by_file(records):
    """Per file: summed seconds, tests, RSS grown while it ran, largest peak."""
    files = collections.OrderedDict()
    for record in records:
        entry = files.setdefault(
            record["file"], {"seconds": 0.0, "tests": 0, "grown_mib": 0.0, "peak_mib": 0.0,
                             "children_peak_mib": 0.0, "workers": set()}
        )
        entry["seconds"] += record["seconds"]
        entry["tests"] += 1
        if record["rss_before_mib"] is not None and record["rss_after_mib"] is not None:
            entry["grown_mib"] += record["rss_after_mib"] - record["rss_before_mib"]
        entry["peak_mib"] = max(entry["peak_mib"], record["peak_mib"] or 0.0)
        entry["children_peak_mib"] = max(entry["children_peak_mib"], record["children_peak_mib"] or 0.0)
        entry["workers"].add(record["worker"])
    return files


def show(records, top=25):
    files = by_file(records)
    total = sum(entry["seconds"] for entry in files.values())
    workers = sorted({record["worker"] for record in records})
    print(f"{len(records)} tests, {total / 60:.1f} test-minutes in all, workers: {', '.join(workers)}")
    for worker in workers:
        mine = [record for record in records if record["worker"] == worker]
        print(
            f"  {worker}: {len(mine)} tests, {sum(r['seconds'] for r in mine) / 60:.1f} min, "
            f"peak RSS {max(r['peak_mib'] or 0 for r in mine) / 1024:.2f} GiB, "
            f"largest subprocess {max(r['children_peak_mib'] or 0 for r in mine) / 1024:.2f} GiB"
        )
    failed = [r["test"] for r in records if r.get("outcome") not in (None, "passed", "skipped")]
    skipped = [r["test"] for r in records if r.get("outcome") == "skipped"]
    print(f"  {len(failed)} failed, {len(skipped)} skipped")
    for name in failed:
        print(f"  failed: {name}")
    print("\nper file (by time):")
    print(f"  {'seconds':>8} {'tests':>5} {'grown MiB':>9} {'peak MiB':>8}  file")
    for name, entry in sorted(files.items(), key=lambda item: -item[1]["seconds"]):
        print(
            f"  {entry['seconds']:8.1f} {entry['tests']:5d} {entry['grown_mib']:9.0f} "
            f"{entry['peak_mib']:8.0f}  {name}"
        )
    print(f"\nslowest {top} tests:")
    for record in sorted(records, key=lambda r: -r["seconds"])[:top]:
        print(f"  {record['seconds']:8.1f}s  {record['test']}")
    print(f"\n{top} tests that grew their process most:")
    grown = [r for r in records if r["rss_before_mib"] is not None and r["rss_after_mib"] is not None]
    for record in sorted(grown, key=lambda r: r["rss_before_mib"] - r["rss_after_mib"])[:top]:
        print(
            f"  {record['rss_after_mib'] - record['rss_before_mib']:+8.0f} MiB "
            f"(to {record['rss_after_mib']:.0f})  {record['test']}"
        )


def compare(before, after):
    old, new = by_file(before), by_file(after)
    print(f"  {'before s':>8} {'after s':>8} {'tests':>11}  file")
    for name in sorted(set(old) | set(new), key=lambda n: -(old.get(n, {}).get("seconds", 0))):
        a, b = old.get(name, {}), new.get(name, {})
        print(
            f"  {a.get('seconds', 0):8.1f} {b.get('seconds', 0):8.1f} "
            f"{a.get('tests', 0):5d}->{b.get('tests', 0):<5d}  {name}"
        )
    print(
        f"  {sum(e['seconds'] for e in old.values()):8.1f} {sum(e['seconds'] for e in new.values()):8.1f} "
        f"{len(before):5d}->{len(after):<5d}  (all; test-seconds, summed over workers)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run pytest with the profile plugin, then show")
    run.add_argument("profile")
    run.add_argument("pytest_args", nargs=argparse.REMAINDER)
    view = sub.add_parser("show", help="summarise a profile")
    view.add_argument("profile")
    view.add_argument("--top", type=int, default=25)
    both = sub.add_parser("compare", help="two profiles' per-file times")
    both.add_argument("before")
    both.add_argument("after")
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGPIPE"):  # quiet under `| head`
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.command == "run":
        if os.path.exists(args.profile):
            os.remove(args.profile)
        extra = [a for a in args.pytest_args if a != "--"]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "--suite-profile", os.path.abspath(args.profile), *extra],
            cwd=root,
        )
        if os.path.exists(args.profile):
            show(load(args.profile))
        return code
    if args.command == "show":
        show(load(args.profile), args.top)
        return 0
    compare(load(args.before), load(args.after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
