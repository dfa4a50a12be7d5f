#!/usr/bin/env python
"""Check the CoreML exports on a Mac, where CoreML runs them.

Two steps, because coremltools runs predictions on macOS only (its Linux
wheel converts but has no runtime), and the Mac need not have TensorFlow:

    # here (TensorFlow): the packages and the Keras model's outputs on golden inputs
    python tools/coreml_check.py prepare --out out/coreml --variant small --size 224

    # on a Mac (coremltools, numpy, pillow; no TensorFlow, no Keras)
    python tools/coreml_check.py check --dir out/coreml --json out/coreml/report.json

``prepare`` writes ``model_<quantize>.mlpackage`` for each ``--quantize``
mode (default ``float16 none int8``: the same packages
``keras_nextvit.export(format="coreml")`` writes and checks on Linux) and
``reference.npz``: golden images (uint8 pixels, and the same images
normalised), the names of the model's outputs and the Keras outputs on
them (``output_0``, ...). ``--head fpn|upernet`` prepares a segmenter
instead of the classifier, ``--uint8-input`` packages that take RGB images.

``check`` loads ``keras_nextvit/exporters/coreml.py`` and ``verify.py``
without the package (which needs TensorFlow), runs every package on each
``--compute-units`` (``CPU_ONLY``, ``CPU_AND_GPU``, ``CPU_AND_NE``,
``ALL``), compares each output with the Keras outputs through the
``compare`` every export report uses (max abs error, cosine, cosine of the
input-dependent part, top-1 agreement), times batch 1 (median after
warm-up) and holds each package to a bar: ``none`` (float32) on
``CPU_ONLY`` max abs error <= 1e-4 x max |Keras| and cosine >= 0.9999
elsewhere; ``float16`` cosine >= 0.999; ``int8`` (int8 weights) cosine >=
0.99. It prints a table (and ``--json``), and, where coremltools and macOS
have ``MLComputePlan`` (coremltools 8, macOS 14.4 and later), on which
device Core ML plans each operator of each package. It exits 1 when a bar
is missed. These bars are the other exports' (see tools/tensorrt_check.py);
how well float16 and int8 do on the Neural Engine has not been measured:
this has not yet run on a Mac.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # tools/exporters_alone.py, also when this file is loaded by its path
try:
    import exporters_alone
finally:
    sys.path.remove(HERE)
ROOT = os.path.dirname(HERE)
QUANTIZE = ("float16", "none", "int8")

# quantize -> (field, op, bar) on CPU_ONLY, and on the other compute units
BARS = {
    "none": (("relative_error", "<=", 1e-4), ("cosine", ">=", 0.9999)),
    "float16": (("cosine", ">=", 0.999), ("cosine", ">=", 0.999)),
    "int8": (("cosine", ">=", 0.99), ("cosine", ">=", 0.99)),
}


# ------------------------------------------------------------------ prepare
def parse_variant(text):
    """``small``/``base``/``large``, or four stage depths such as ``1,1,5,1``."""
    if "," in text:
        return tuple(int(d) for d in text.split(","))
    return text


def build_model(args):
    import keras

    import keras_nextvit
    from keras_nextvit.presets import VARIANTS

    keras.utils.set_random_seed(args.seed)
    variant = parse_variant(args.variant)
    shape = (args.size, args.size, 3)
    if args.head:
        return keras_nextvit.NextViTSegmenter(variant, args.head, num_classes=args.num_classes, input_shape=shape)
    depths = variant if isinstance(variant, tuple) else VARIANTS[variant]["depths"]
    name = "nextvit_custom" if isinstance(variant, tuple) else f"nextvit_{variant}"
    return keras_nextvit.NextViT(depths=depths, input_shape=shape, name=name)


def prepare(args):
    import numpy as np

    sys.path.insert(0, ROOT)
    import keras_nextvit
    from keras_nextvit.exporters import _to_uint8, coreml, default_inputs
    from keras_nextvit.preprocessing import preprocess_input

    model = build_model(args)
    pixels = _to_uint8(default_inputs((args.size, args.size, 3), args.images, args.seed + 1))
    images = preprocess_input(pixels)  # what the pixels are, normalised: both inputs give the same outputs
    os.makedirs(args.out, exist_ok=True)
    for quantize in args.quantize:
        path = os.path.join(args.out, f"model_{quantize}.mlpackage")
        report = keras_nextvit.export(model, path, format="coreml", quantize=quantize,
                                      uint8_input=args.uint8_input, verification_data=images)
        print(report, flush=True)
    outputs = model.predict(images, verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    names = [o.name for o in coreml.load_spec(path).description.output]  # as the packages name them
    np.savez(
        os.path.join(args.out, "reference.npz"),
        images=images.astype(np.float32),
        pixels=pixels,
        names=np.array(names),
        per_pixel=bool(args.head),
        variant=str(args.variant) + (f" + {args.head}" if args.head else ""),
        **{f"output_{i}": np.asarray(o, np.float32) for i, o in enumerate(outputs)},
    )
    print(f"wrote {', '.join(f'model_{q}.mlpackage' for q in args.quantize)} and reference.npz to {args.out}")


# ------------------------------------------------------------------ check
def load_exporters():
    """``coreml`` and ``verify`` from keras_nextvit/exporters, without
    TensorFlow or Keras (``tools/exporters_alone.py``)."""
    return exporters_alone.load("coreml", "verify")


def bar_for(quantize, compute_units):
    on_cpu, elsewhere = BARS[quantize]
    return on_cpu if compute_units == "CPU_ONLY" else elsewhere


def meets(check, bar):
    field, op, value = bar
    got = getattr(check, field)
    return got <= value if op == "<=" else got >= value


def package_quantize(runner, path):
    """The ``quantize`` mode a package was written with (its metadata, else its name)."""
    metadata = runner.model.get_spec().description.metadata.userDefined
    if "keras_nextvit.quantize" in metadata:
        return metadata["keras_nextvit.quantize"]
    stem = os.path.basename(path)[: -len(".mlpackage")]
    return stem.rsplit("_", 1)[-1]


def compute_plan(ct, runner):
    """``{device: {operator: count}}`` of Core ML's plan for ``runner``'s
    package on all compute units, or a string saying why there is none."""
    try:
        from coremltools.models.compute_plan import MLComputePlan

        plan = MLComputePlan.load_from_path(path=runner.model.get_compiled_path(), compute_units=ct.ComputeUnit.ALL)
        program = plan.model_structure.program
        if program is None:
            return "not an ML Program"
        devices = {}
        for function in program.functions.values():
            for op in function.block.operations:
                if op.operator_name == "const":
                    continue
                usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
                device = "unknown" if usage is None else type(usage.preferred_compute_device).__name__
                device = device.replace("ML", "").replace("ComputeDevice", "") or device
                ops = devices.setdefault(device, {})
                ops[op.operator_name] = ops.get(op.operator_name, 0) + 1
        return devices
    except Exception as error:  # noqa: BLE001 - older macOS or coremltools: reported, not fatal
        return f"unavailable ({type(error).__name__}: {error})"


def format_plan(plan):
    if isinstance(plan, str):
        return plan
    parts = []
    for device, ops in sorted(plan.items(), key=lambda kv: -sum(kv[1].values())):
        detail = "" if device == "NeuralEngine" else f" ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))})"
        parts.append(f"{device} {sum(ops.values())}{detail}")
    return "; ".join(parts)


TABLE = [
    ("package", "{package}", 22), ("units", "{compute_units}", 12), ("load s", "{load_s:.1f}", 7),
    ("max abs err", "{max_abs_error:.3g}", 12), ("rel err", "{relative_error:.2g}", 9),
    ("cosine", "{cosine:.6f}", 9), ("input-dep", "{cosine_input_dependent}", 10), ("top-1", "{top1}", 7),
    ("batch 1 ms", "{batch1_ms:.2f}", 11), ("bar", "{bar}", 24), ("", "{verdict}", 7),
]


def format_row(row):
    values = dict(row)
    values["top1"] = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.0%}"
    varying = row["cosine_input_dependent"]
    values["cosine_input_dependent"] = "-" if varying is None else f"{varying:.4f}"
    values["verdict"] = "meets" if row["meets"] else "MISSES"
    return "".join(template.format(**values).ljust(width) for _, template, width in TABLE).rstrip()


def check(args):
    import numpy as np

    coreml, verify = load_exporters()
    ct = coreml.require()
    reference = np.load(os.path.join(args.dir, "reference.npz"))
    images, pixels = reference["images"], reference["pixels"]
    names = [str(n) for n in reference["names"]]
    expected = [reference[f"output_{i}"] for i in range(len(names))]
    per_pixel = bool(reference["per_pixel"])
    packages = coreml.package_files(args.dir)
    if not packages:
        raise SystemExit(f"No .mlpackage in {args.dir}: run `prepare` first.")
    print(f"{coreml.runtime_versions()}; {reference['variant']}, images {images.shape}", flush=True)
    rows, plans, ok = [], {}, True
    for path in packages:
        package = os.path.basename(path)
        for units in args.compute_units:
            start = time.perf_counter()
            runner = coreml.CoreMLRunner(path, units)
            load_s = time.perf_counter() - start
            inputs = pixels if runner.image else images
            quantize = package_quantize(runner, path)
            actual = runner(inputs)
            checks = [verify.compare(n, a, e, per_pixel) for n, a, e in zip(names, actual, expected)]
            first = checks[0]
            timing = verify.latency_ms(runner, inputs[:1], warmup=args.warmup, repeats=args.repeats)
            bar = bar_for(quantize, units)
            passed = all(meets(c, bar) for c in checks)
            ok &= passed
            field, op, value = bar
            row = {
                "package": package, "quantize": quantize, "compute_units": units, "load_s": load_s,
                "max_abs_error": first.max_abs_error, "relative_error": first.relative_error,
                "cosine": first.cosine, "cosine_input_dependent": first.cosine_input_dependent,
                "top1_agreement": first.top1_agreement, "batch1_ms": timing["median_ms"],
                "batch1_min_ms": timing["min_ms"], "bar": f"{field} {op} {value}", "meets": passed,
                "outputs": [dict(vars(c), relative_error=c.relative_error) for c in checks],
            }
            rows.append(row)
            print(format_row(row), flush=True)
            if units == "ALL" and args.compute_plan:
                plans[package] = compute_plan(ct, runner)
            del runner
    print()
    print("".join(title.ljust(width) for title, _, width in TABLE).rstrip())
    for row in rows:
        print(format_row(row))
    for package, plan in plans.items():
        print(f"{package}: Core ML's plan on ALL: {format_plan(plan)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"runtime": coreml.runtime_versions(), "variant": str(reference["variant"]),
                       "rows": rows, "compute_plans": plans}, handle, indent=2)
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="export the packages and the Keras reference outputs (TensorFlow)")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", default="small", help="small, base, large, or four depths such as 1,1,5,1")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--head", choices=["fpn", "upernet"], help="a segmenter instead of the classifier")
    p.add_argument("--num-classes", type=int, default=150, help="segmenter classes (with --head)")
    p.add_argument("--quantize", nargs="+", default=list(QUANTIZE), choices=QUANTIZE)
    p.add_argument("--uint8-input", action="store_true", help="packages with an RGB image input")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check", help="run the packages with CoreML and compare (macOS: coremltools, numpy)")
    c.add_argument("--dir", required=True)
    c.add_argument("--compute-units", nargs="+", default=["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"],
                   choices=["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"])
    c.add_argument("--warmup", type=int, default=10)
    c.add_argument("--repeats", type=int, default=50)
    c.add_argument("--no-compute-plan", dest="compute_plan", action="store_false",
                   help="skip Core ML's per-operator device plan")
    c.add_argument("--json")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
