#!/usr/bin/env python
"""Why the int8 exports are built as they are: the measurements behind them.

    python tools/int8_study.py recipes     # NNCF settings: accuracy on digits, speed on Next-ViT-S
    python tools/int8_study.py attention   # E-MHSA alone in TFLite: float32 vs full-integer int8
    python tools/int8_study.py ops         # where the int8 TFLite models' time goes, operator by operator

``recipes``: a small Next-ViT trained on scikit-learn's digits (the model
of ``tests/conftest.py``'s ``digits`` fixture, built by :func:`train_digits`)
is quantized by NNCF with each setting below, calibrated on 64 training
digits and checked on 96 held-out ones (input-dependent cosine, top-1
agreement with the float model); then Next-ViT-S at 224 (random weights,
latency only) is quantized the same way and timed, batch 1, each recipe in
a process of its own. ``attention``: E-MHSA's attention (two products and
the softmax) at stage 2's shapes at 224 (6 heads, 784 queries, 49 keys, 32
channels), as one batched product (the float and int8_float_attention
exports' form), per head as 2-D products of head slices, and by head
(channel slices of the projections' outputs, 2-D products with a
transposed right operand: ``p = softmax(q_h k_h^T)``, ``out_h = (v_h^T
p^T)^T``, which the converter writes as FULLY_CONNECTED, whose int8
kernel is much faster than BATCH_MATMUL's), converted to TFLite float32 and
full-integer int8 and timed with ai-edge-litert, each in a process of its
own. Its int8 products take q, k and v as model inputs with their calibrated
ranges, so the batched int8 row is TFLite's builtin kernel: the export's
``int8`` no longer runs that one, since it gives keys and values zero point
0 and XNNPACK takes the products (``ops`` shows both).

``ops``: Next-ViT-S at 224 (random weights, latency only) exported to
TFLite ``int8`` and ``int8_float_attention``, and ``int8`` as the
converter writes it (without :func:`~keras_nextvit.exporters.tflite.
symmetric_matmul_operands`), each timed whole and operator by operator:
every operator is cut out into a model of its own (its constant inputs
kept, its other inputs fed with random values; eight copies of it per
model, so that one call's overhead is spread over eight) and timed with
ai-edge-litert as the whole model runs (XNNPACK where it takes the
operator), each export in a process of its own. Per operator type: count,
how many XNNPACK took, total ms; then the slowest operators. The operators'
times add up to within about 10% of the whole model's. Alone, an operator
misses what XNNPACK fuses in the whole model: a PAD before a convolution
(the stem's) is folded into the convolution there, so its time alone
overstates what it costs in the model.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# name -> keras_nextvit.exporters.openvino.quantize_int8 keyword arguments
RECIPES = {
    "export (MINMAX ranges, full bias correction)": {},
    "with fast bias correction": {"bias_correction": "fast"},
    "without bias correction": {"bias_correction": "none"},
    "NNCF transformer model type": {"model_type": "transformer"},
}
NNCF_DEFAULTS = "NNCF defaults (mean min/max, fast bias correction)"


def digits_data():
    """scikit-learn's digits as 32x32x3 normalised images, with the labels
    and the fixed training and held-out indices: ``(images, labels, train,
    held_out)``."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.kron(data.images.astype("float32") / 16.0, np.ones((4, 4), "float32"))
    images = (np.repeat(images[..., None], 3, axis=-1) - 0.5) / 0.25  # 32x32x3
    order = np.random.default_rng(0).permutation(len(images))
    train, held_out = order[:1400], order[1400:1496]
    return images, data.target, train, held_out


def digits_model():
    """The small Next-ViT (depths 1/1/5/1, 32x32, 10 classes) that
    ``train_digits`` trains, untrained (seeded)."""
    import keras

    import keras_nextvit

    keras.utils.set_random_seed(0)
    return keras_nextvit.NextViT(depths=(1, 1, 5, 1), input_shape=(32, 32, 3), classes=10)


def train_digits(epochs=4):
    """The small Next-ViT (depths 1/1/5/1, 32x32) trained on digits, with its
    data: ``(model, images, labels, train, held_out)``."""
    import keras

    import keras_nextvit
    from keras_nextvit import training

    images, labels, train, held_out = digits_data()
    model = digits_model()
    steps = epochs * -(-len(train) // 64)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps - 10, warmup_target=1e-3, warmup_steps=10)
    model.compile(
        optimizer=keras_nextvit.AdamW(learning_rate=schedule, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    training.build_optimizer_variables(model)  # with the metric object: one trace of the step, not two
    model.fit(images[train], labels[train], batch_size=64, epochs=epochs, verbose=0)
    return model, images, labels, train, held_out


def _quantize(converted, calibration, recipe):
    import nncf

    from keras_nextvit.exporters import openvino

    if recipe == NNCF_DEFAULTS:
        with openvino.no_telemetry():
            return nncf.quantize(converted, nncf.Dataset(calibration), subset_size=len(calibration))
    return openvino.quantize_int8(converted, calibration, **RECIPES[recipe])


def work_recipe_accuracy(args):
    import numpy as np
    import openvino as ov

    from keras_nextvit import merge_batchnorm
    from keras_nextvit.exporters import openvino
    from keras_nextvit.exporters.verify import compare

    model, images, _, train, held_out = train_digits(args.epochs)
    calibration = [images[train[i : i + 1]] for i in range(64)]
    expected = np.asarray(model(images[held_out]))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        float32 = os.path.join(tmp, "float32.xml")
        ov.save_model(openvino.to_openvino(merge_batchnorm(model)), float32, compress_to_fp16=False)
        for recipe in [*RECIPES, NNCF_DEFAULTS]:
            path = os.path.join(tmp, "int8.xml")
            # a fresh copy per recipe, read from disk: quantizing .clone()s of
            # one in-memory model gave meaningless outputs here (OpenVINO 2026.4)
            quantized = _quantize(ov.Core().read_model(float32), calibration, recipe)
            ov.save_model(quantized, path, compress_to_fp16=False)
            check = compare("logits", openvino.OpenVINORunner(path)(images[held_out])[0], expected)
            results[recipe] = {
                "cosine_input_dependent": check.cosine_input_dependent,
                "top1": check.top1_agreement,
            }
    return results


def work_recipe_build(args, recipe, path):
    import numpy as np
    import openvino as ov

    import keras_nextvit
    from keras_nextvit.exporters import openvino

    model = keras_nextvit.merge_batchnorm(keras_nextvit.NextViTSmall(input_shape=(224, 224, 3)))
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(-2, 2, (1, 224, 224, 3)).astype("float32") for _ in range(16)]
    ov.save_model(_quantize(openvino.to_openvino(model), calibration, recipe), path, compress_to_fp16=False)
    return {}


def _time(fn, x):
    from keras_nextvit.exporters.verify import latency_ms

    return latency_ms(fn, x, warmup=5, repeats=30)


def work_recipe_time(args, path):
    import numpy as np

    from keras_nextvit.exporters import openvino

    x = np.random.default_rng(0).uniform(-2, 2, (1, 224, 224, 3)).astype("float32")
    return _time(openvino.OpenVINORunner(path), x)


HEADS, QUERIES, KEYS, CHANNELS = 6, 784, 49, 32


def work_attention(args, form, quantize):
    import keras
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from keras import ops

    def attention(q, k, v):  # [heads, tokens, channels] each
        scores = ops.matmul(q, ops.transpose(k, (0, 2, 1)))
        return ops.matmul(ops.softmax(scores, -1), v)

    def per_head(q, k, v):
        return ops.stack([
            ops.matmul(ops.softmax(ops.matmul(q[h], ops.transpose(k[h])), -1), v[h]) for h in range(HEADS)
        ])

    def by_head(q, k, v):  # on [1, tokens, heads * channels], as the Dense layers give them
        heads = []
        for qh, kh, vh in zip(*(ops.split(t[0], HEADS, axis=-1) for t in (q, k, v))):
            p = ops.softmax(ops.matmul(qh, ops.transpose(kh)), axis=-1)
            heads.append(ops.transpose(ops.matmul(ops.transpose(vh), ops.transpose(p))))
        return ops.concatenate(heads, axis=-1)[None]

    form_fn = {"batched": attention, "per-head": per_head, "by-head": by_head}[form]
    if form == "by-head":
        shapes = [(1, QUERIES, HEADS * CHANNELS), (1, KEYS, HEADS * CHANNELS), (1, KEYS, HEADS * CHANNELS)]
    else:
        shapes = [(HEADS, QUERIES, CHANNELS), (HEADS, KEYS, CHANNELS), (HEADS, KEYS, CHANNELS)]
    fn = tf.function(lambda q, k, v: form_fn(q, k, v)).get_concrete_function(
        *[tf.TensorSpec(s, tf.float32) for s in shapes]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    if quantize == "int8":
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.standard_normal(s).astype("float32") for s in shapes] for _ in range(8)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    keras.backend.clear_session()
    interpreter = Interpreter(model_content=converter.convert(), num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    result = _time(lambda _: interpreter.invoke(), None)
    result["operators"] = sorted({d["op_name"] for d in interpreter._get_ops_details()})
    return result


OP_COPIES = 8


def single_operator_model(model, index, copies=OP_COPIES):
    """TFLite bytes of a model that runs operator ``index`` of subgraph 0 of
    ``model`` (a ``ModelT``) ``copies`` times side by side: the same
    constant inputs, the other inputs and the outputs its own per copy."""
    import copy

    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    graph = model.subgraphs[0]
    op = graph.operators[index]

    def constant(t):
        data = model.buffers[graph.tensors[t].buffer].data
        return data is not None and len(data) > 0

    single = fb.ModelT()
    single.version, single.operatorCodes, single.buffers = model.version, model.operatorCodes, [fb.BufferT()]
    part = fb.SubGraphT()
    part.name, part.tensors, part.operators, part.inputs, part.outputs = "operator", [], [], [], []
    made = {}

    def tensor(t, n):
        """The new index of tensor ``t`` in copy ``n`` (constants: shared)."""
        key = t if constant(t) else (t, n)
        if key not in made:
            new = copy.copy(graph.tensors[t])
            new.buffer = 0
            if constant(t):
                single.buffers.append(model.buffers[graph.tensors[t].buffer])
                new.buffer = len(single.buffers) - 1
            made[key] = len(part.tensors)
            part.tensors.append(new)
        return made[key]

    for n in range(copies):
        twin = copy.copy(op)
        twin.inputs = [tensor(t, n) if t >= 0 else -1 for t in op.inputs]
        twin.outputs = [tensor(t, n) for t in op.outputs]
        fed = {tensor(t, n) for t in op.inputs if t >= 0 and not constant(t)}
        part.inputs.extend(sorted(fed))
        part.outputs.extend(twin.outputs)
        part.operators.append(twin)
    single.subgraphs = [part]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(single))


def _invoke_ms(content, repeats):
    """Median ms of one ``invoke`` on random inputs, and whether XNNPACK
    took (some of) the model."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from keras_nextvit.exporters.verify import latency_ms

    interpreter = Interpreter(model_content=content, num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        if np.issubdtype(detail["dtype"], np.integer):
            value = rng.integers(-100, 100, detail["shape"])
        else:
            value = rng.standard_normal(detail["shape"])
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    ms = latency_ms(lambda _: interpreter.invoke(), None, warmup=3, repeats=repeats)["median_ms"]
    delegated = any(d["op_name"] == "DELEGATE" for d in interpreter._get_ops_details())
    return ms, delegated


def profile_operators(content, repeats=20):
    """``(whole_ms, rows)`` for TFLite model bytes: the whole model's median
    time, and per operator of subgraph 0 ``(index, type, ms, delegated,
    output name)`` with ms per copy (see :func:`single_operator_model`)."""
    from ai_edge_litert.tools import flatbuffer_utils

    whole, _ = _invoke_ms(content, max(repeats, 30))
    model = flatbuffer_utils.read_model_from_bytearray(content)
    graph = model.subgraphs[0]
    rows = []
    for index, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        kind = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) or str(code.builtinCode)
        ms, delegated = _invoke_ms(single_operator_model(model, index), repeats)
        name = graph.tensors[op.outputs[0]].name
        name = name.decode() if isinstance(name, bytes) else str(name)
        rows.append((index, kind, ms / OP_COPIES, delegated, name))
    return whole, rows


OPS_FORMS = {
    "int8": ("int8", True),
    "int8 as converted (asymmetric products)": ("int8", False),
    "int8_float_attention": ("int8_float_attention", True),
}


def work_ops(args, form):
    import numpy as np

    import keras_nextvit
    from keras_nextvit.exporters import tflite

    quantize, symmetric = OPS_FORMS[form]
    if not symmetric:
        tflite.symmetric_matmul_operands = lambda flatbuffer: flatbuffer
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(-2, 2, (1, 224, 224, 3)).astype("float32") for _ in range(8)]
    model = keras_nextvit.NextViTSmall(input_shape=(224, 224, 3))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.tflite")
        keras_nextvit.export(model, path, format="tflite", quantize=quantize,
                             representative_data=calibration, batch_size=1, verify_export=False)
        with open(path, "rb") as f:
            content = f.read()
    whole, rows = profile_operators(content)
    return {"whole_ms": whole, "rows": rows}


WORKERS = {
    "recipe-accuracy": work_recipe_accuracy,
    "recipe-build": work_recipe_build,
    "recipe-time": work_recipe_time,
    "attention": work_attention,
    "ops": work_ops,
}


def run_worker(args, name, *params):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, *params, "--",
           "--epochs", str(args.epochs), "--rounds", str(args.rounds), "--top", str(args.top)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{name} {params} failed:\n{out.stderr[-2000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])


def _cpu():
    sys.path.insert(0, HERE)
    from benchmark import _cpu_model

    return _cpu_model()


def study_recipes(args):
    accuracy = run_worker(args, "recipe-accuracy")
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, recipe in enumerate(accuracy):
            paths[recipe] = os.path.join(tmp, f"recipe{i}.xml")
            run_worker(args, "recipe-build", recipe, paths[recipe])
        times = {recipe: [] for recipe in paths}
        for _ in range(args.rounds):  # interleaved, each run its own process
            for recipe, path in paths.items():
                times[recipe].append(run_worker(args, "recipe-time", path)["median_ms"])
    print(f"\nNNCF int8 recipes; accuracy: digits model ({args.epochs} epochs), 96 held-out images; "
          f"speed: Next-ViT-S 224 batch 1, median of {args.rounds} rounds, {_cpu()}")
    print(f"{'recipe':<52}{'input-dep. cosine':>18}{'top-1':>8}{'ms':>8}")
    for recipe, result in accuracy.items():
        print(f"{recipe:<52}{result['cosine_input_dependent']:>18.4f}{result['top1']:>8.3f}"
              f"{statistics.median(times[recipe]):>8.2f}")


def study_attention(args):
    rows = {(form, q): [] for form in ("batched", "per-head", "by-head") for q in ("float32", "int8")}
    for _ in range(args.rounds):
        for form, quantize in rows:
            rows[(form, quantize)].append(run_worker(args, "attention", form, quantize))
    print(f"\nE-MHSA attention alone ({HEADS} heads, {QUERIES} queries, {KEYS} keys, {CHANNELS} channels), "
          f"TFLite, median of {args.rounds} rounds, {_cpu()}")
    for (form, quantize), results in rows.items():
        ms = statistics.median(r["median_ms"] for r in results)
        print(f"{form:<10}{quantize:<9}{ms:>8.3f} ms  {', '.join(results[0]['operators'])}")


def study_ops(args):
    import collections

    print(f"\nNext-ViT-S 224 batch 1, TFLite, operator by operator (ms; each operator alone, "
          f"{OP_COPIES} copies per call), {_cpu()}")
    for form in OPS_FORMS:
        result = run_worker(args, "ops", form)
        rows = result["rows"]
        print(f"\n{form}: whole model {result['whole_ms']:.2f} ms, its {len(rows)} operators "
              f"{sum(r[2] for r in rows):.2f} ms")
        kinds = collections.defaultdict(lambda: [0, 0, 0.0])
        for _, kind, ms, delegated, _ in rows:
            kinds[kind][0] += 1
            kinds[kind][1] += delegated
            kinds[kind][2] += ms
        print(f"  {'operator':<20}{'count':>6}{'XNNPACK':>9}{'ms':>9}")
        for kind, (count, delegated, ms) in sorted(kinds.items(), key=lambda item: -item[1][2]):
            print(f"  {kind:<20}{count:>6}{delegated:>9}{ms:>9.3f}")
        print("  slowest:")
        for index, kind, ms, delegated, name in sorted(rows, key=lambda r: -r[2])[: args.top]:
            where = "XNNPACK" if delegated else "builtin"
            print(f"  {index:>5} {kind:<16}{ms:>7.3f} {where:<8} {name[:70]}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        split = argv.index("--")
        name, params = argv[1], argv[2:split]
        args = parse(argv[split + 1 :] + ["recipes"])
        print("RESULT " + json.dumps(WORKERS[name](args, *params)))  # NNCF's progress shares stdout
        return
    args = parse(argv)
    {"recipes": study_recipes, "attention": study_attention, "ops": study_ops}[args.study](args)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["recipes", "attention", "ops"])
    parser.add_argument("--epochs", type=int, default=4, help="digits training epochs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="ops: how many of the slowest operators to list")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
