#!/usr/bin/env python
"""Check the ONNX -> TensorRT route on a GPU machine that has no TensorFlow.

Two steps, because the machines with TensorRT rarely have TensorFlow and the
other way round:

    # here (TensorFlow): the merged ONNX export and the Keras model's outputs
    python tools/tensorrt_check.py prepare --out out/trt --variant small --size 224

    # on the GPU machine (numpy, tensorrt, cuda-python; no TensorFlow, no Keras)
    python tools/tensorrt_check.py check --dir out/trt --json out/trt/report.json

``prepare`` writes ``model.onnx`` (BatchNorm merged, dynamic batch, the same
file ``keras_nextvit.export(format="onnx")`` writes and verifies) and
``reference.npz`` (verification images, the Keras model's logits on them, and
other images to calibrate INT8 on). ``check`` builds an engine per precision
with ``keras_nextvit/exporters/tensorrt.py`` (``build_engine`` and
``EngineRunner``, loaded without the package, which needs TensorFlow), runs
it on the images, compares with the Keras logits through the same
``compare`` every export report uses, times batch 1 and batch 8 (median after
warm-up, host <-> device copies included), and holds each precision to the
bar the other exports meet: FP32 max abs error <= 1e-4 x max |logits|, FP16
cosine >= 0.999, INT8 cosine >= 0.98. It exits 1 when a bar is missed.

TensorRT 11 builds strongly typed networks only: it has no FP16 or INT8
builder flags and no INT8 calibration, so its FP16 and INT8 engines need an
ONNX that declares the precision (see keras_nextvit/exporters/tensorrt.py).
``check`` builds precision P from ``model_P.onnx`` where the directory has
one (``model_fp16.onnx``, ``model_int8.onnx``, made with NVIDIA ModelOpt from
``model.onnx``), else from ``model.onnx``; a precision that this TensorRT
cannot build from the file it has is reported with the commands that make
the right file, and the check goes on with the next precision (exit 1).
TensorRT 8.6 and 10.x build all three from ``model.onnx``. ModelOpt's INT8
calibration takes the images as one float32 array, in the directory:

    python -c "import numpy as np; np.save('calib.npy', np.load('reference.npz')['calibration'].astype('f4'))"

``--coarse-weights`` (prepare) draws the weights on a coarse grid (kernels
keep 3 mantissa bits, BatchNorms are exact identities up to a shift) so the
ONNX file compresses about 5x for a machine that can only be sent small
files. The check compares the same two functions either way.
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

BARS = {
    "fp32": ("relative_error", "<=", 1e-4),
    "fp16": ("cosine", ">=", 0.999),
    "int8": ("cosine", ">=", 0.98),
}


# ------------------------------------------------------------------ prepare
def coarsen_weights(model, seed=0, mantissa_bits=3):
    """Put every weight of ``model`` on a coarse grid (see the module doc)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    eps = np.float32(1e-5)
    var = np.float32(1) - eps  # var + eps == 1 exactly: the BatchNorm scale is 1
    while np.float32(var + eps) != np.float32(1):
        var = np.nextafter(var, np.float32(2), dtype=np.float32)
    mask = np.uint32((0xFFFFFFFF << (23 - mantissa_bits)) & 0xFFFFFFFF)
    for variable in model.weights:
        value = np.asarray(variable.numpy(), np.float32)
        name = variable.path
        if name.endswith("moving_variance"):
            value = np.full_like(value, var)
        elif name.endswith("moving_mean"):
            value = np.zeros_like(value)
        elif name.endswith("gamma"):
            value = np.ones_like(value)
        elif name.endswith("beta"):
            value = rng.integers(-4, 5, value.shape).astype(np.float32) / 64
        elif name.endswith("bias"):
            value = np.zeros_like(value)
        else:
            value = (value.view(np.uint32) & mask).view(np.float32)
        variable.assign(value)


def prepare(args):
    import numpy as np

    sys.path.insert(0, ROOT)
    import keras_nextvit
    from keras_nextvit.presets import VARIANTS
    from keras_nextvit.exporters import default_inputs

    import keras

    keras.utils.set_random_seed(args.seed)
    size = args.size
    model = keras_nextvit.NextViT(
        depths=VARIANTS[args.variant]["depths"], input_shape=(size, size, 3), name=args.variant
    )
    if args.coarse_weights:
        coarsen_weights(model, args.seed)
    images = default_inputs((size, size, 3), args.images, args.seed + 1)
    calibration = default_inputs((size, size, 3), args.calibration, args.seed + 2)
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "model.onnx")
    report = keras_nextvit.export(model, onnx_path, format="onnx", batch_size=None, verification_data=images)
    print(report)
    logits = np.asarray(model.predict(images, verbose=0), np.float32)
    np.savez(
        os.path.join(args.out, "reference.npz"),
        images=images,
        logits=logits,
        calibration=calibration.astype(np.float16),  # calibration needs no more; the file travels
        variant=args.variant,
    )
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path) / 2**20:.1f} MiB) and reference.npz")


# ------------------------------------------------------------------ check
def load_exporters():
    """``tensorrt`` and ``verify`` from keras_nextvit/exporters, without
    TensorFlow or Keras (``tools/exporters_alone.py``)."""
    return exporters_alone.load("tensorrt", "verify")


def precision_onnx(directory, precision):
    """``model_<precision>.onnx`` where ``directory`` has it (an FP16 or a
    Q/DQ ONNX for TensorRT 11), else ``model.onnx``."""
    typed = os.path.join(directory, f"model_{precision}.onnx")
    return typed if os.path.exists(typed) else os.path.join(directory, "model.onnx")


def _meets(check, precision):
    field, op, bar = BARS[precision]
    value = getattr(check, field)
    return value <= bar if op == "<=" else value >= bar


def check(args):
    import numpy as np
    import tensorrt as trt

    engines, verify = load_exporters()
    cudart = engines._cudart()  # cuda.bindings.runtime, or cuda.cudart before cuda-python 12.6.2
    reference = np.load(os.path.join(args.dir, "reference.npz"))
    images, logits = reference["images"], reference["logits"]
    calibration = reference["calibration"].astype(np.float32)
    props = engines._check_cuda(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    print(f"TensorRT {trt.__version__} on {gpu}; {str(reference['variant'])}, images {images.shape}")
    batch8 = np.concatenate([images] * (8 // len(images) + 1))[:8]
    rows, ok = [], True
    chunks = [calibration[i : i + 8] for i in range(0, len(calibration) - 7, 8)]
    for precision in args.precisions:
        engine_path = os.path.join(args.dir, f"model_{precision}.plan")
        onnx_path = precision_onnx(args.dir, precision)
        start = time.perf_counter()
        try:
            engines.build_engine(
                onnx_path,
                engine_path,
                precision,
                calibration_batches=chunks if precision == "int8" else None,
                opt_batch_size=args.opt_batch,
                max_batch_size=args.max_batch,
                optimization_level=args.optimization_level,
            )
        except ValueError as error:  # this TensorRT cannot build the precision from this file
            print(f"{precision}: not built from {os.path.basename(onnx_path)}: {error}", flush=True)
            rows.append({"precision": precision, "onnx": os.path.basename(onnx_path), "error": str(error)})
            ok = False
            continue
        build_s = time.perf_counter() - start
        runner = engines.EngineRunner(engine_path)
        result = verify.compare("logits", runner(images)[0], logits)
        centred = result.cosine_input_dependent
        b1 = verify.latency_ms(runner, images[:1], warmup=20, repeats=args.repeats)
        b8 = verify.latency_ms(runner, batch8, warmup=20, repeats=args.repeats)
        meets = _meets(result, precision)
        ok &= meets
        field, op, bar = BARS[precision]
        row = {
            "precision": precision,
            "onnx": os.path.basename(onnx_path),
            "build_s": round(build_s, 1),
            "engine_mib": round(os.path.getsize(engine_path) / 2**20, 2),
            "max_abs_error": result.max_abs_error,
            "relative_error": result.relative_error,
            "cosine": result.cosine,
            "cosine_input_dependent": centred,
            "top1_agreement": result.top1_agreement,
            "batch1_ms": b1["median_ms"],
            "batch8_ms": b8["median_ms"],
            "bar": f"{field} {op} {bar}",
            "meets": meets,
        }
        rows.append(row)
        print(
            f"{precision}: built in {build_s:.0f} s, {row['engine_mib']:.1f} MiB; max abs error "
            f"{result.max_abs_error:.3g} ({result.relative_error:.2g} of max |Keras|), cosine "
            f"{result.cosine:.6f} (input-dependent part {centred:.4f}), top-1 agreement {result.top1_agreement:.0%}; batch 1 "
            f"{b1['median_ms']:.2f} ms, batch 8 {b8['median_ms']:.2f} ms; bar {row['bar']}: "
            f"{'meets' if meets else 'MISSES'}",
            flush=True,
        )
        del runner
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"tensorrt": trt.__version__, "gpu": gpu, "rows": rows}, handle, indent=2)
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="export the merged ONNX and the Keras reference outputs (TensorFlow)")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", default="small", choices=["small", "base", "large"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--calibration", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coarse-weights", action="store_true")
    c = sub.add_parser("check", help="build and verify TensorRT engines (GPU, tensorrt, cuda-python)")
    c.add_argument("--dir", required=True)
    c.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"], choices=sorted(BARS))
    c.add_argument("--opt-batch", type=int, default=1)
    c.add_argument("--max-batch", type=int, default=8)
    c.add_argument("--repeats", type=int, default=50)
    c.add_argument("--optimization-level", type=int, help="TensorRT builder optimization level (default 3)")
    c.add_argument("--json")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
