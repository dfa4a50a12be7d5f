"""The verification report every export ends with.

An exported artifact is run beside the Keras model on the same inputs; the
report gives, per output, the max abs error (absolute and relative to the
largest reference value), the cosine similarity, the cosine of the
input-dependent part, the top-1 agreement (for class scores), and for the
artifact its file size and median latency.

The input-dependent part is each output minus the Keras outputs' mean over
the batch. A network whose outputs barely change from image to image (random
or synthetic weights do this: their logits for different images have a
cosine of ~0.999 with each other) passes a plain cosine bar even when the
artifact ignores its input; the input-dependent cosine does not.
"""

from __future__ import annotations  # the report also loads on Python 3.9 (tools/tensorrt_check.py)

import dataclasses
import os
import statistics
import time

import numpy as np


@dataclasses.dataclass
class OutputCheck:
    name: str
    max_abs_error: float
    max_abs_reference: float
    cosine: float
    top1_agreement: float | None
    cosine_input_dependent: float | None = None  # needs a batch of two or more
    per_pixel: bool = False  # top-1 of every pixel (segmentation logits)

    @property
    def relative_error(self):
        return self.max_abs_error / max(self.max_abs_reference, 1e-30)


@dataclasses.dataclass
class ExportReport:
    format: str
    quantize: str
    path: str
    file_size_bytes: int
    batch_size: int
    latency_ms: float
    keras_latency_ms: float
    outputs: list
    # the same artifact run another way (OpenVINO: "bf16" arithmetic)
    variants: dict = dataclasses.field(default_factory=dict)
    # why the artifact's numbers were not verified (no runtime here: CoreML off macOS); then
    # ``outputs`` is empty and the latencies are NaN
    unverified: str | None = None
    # what was checked without running it (CoreML: operators, inputs and outputs, size)
    checks: list = dataclasses.field(default_factory=list)

    def output(self, name=None):
        """The check of output ``name`` (default: the first)."""
        if not self.outputs:
            raise ValueError(f"No output of {self.path} was compared with Keras: {self.unverified}.")
        if name is None:
            return self.outputs[0]
        for check in self.outputs:
            if check.name == name:
                return check
        raise KeyError(f"No output {name!r}; outputs are {[c.name for c in self.outputs]}.")

    @property
    def max_abs_error(self):
        return self.output().max_abs_error

    @property
    def cosine(self):
        return self.output().cosine

    @property
    def top1_agreement(self):
        return self.output().top1_agreement

    def __str__(self):
        lines = [f"{self.format} ({self.quantize}) -> {self.path}"]
        if self.unverified:
            lines.append(f"  size {self.file_size_bytes / 2**20:.1f} MiB; numbers {self.unverified}")
        else:
            lines.append(
                f"  size {self.file_size_bytes / 2**20:.1f} MiB; latency (batch {self.batch_size}, "
                f"median) {self.latency_ms:.1f} ms vs Keras {self.keras_latency_ms:.1f} ms"
            )
        lines += [f"  checked: {line}" for line in self.checks]
        for c in self.outputs:
            kind = "per-pixel top-1" if c.per_pixel else "top-1"
            top1 = "" if c.top1_agreement is None else f", {kind} agreement {c.top1_agreement:.2%}"
            if c.cosine_input_dependent is not None:
                top1 = f" (input-dependent part {c.cosine_input_dependent:.4f}){top1}"
            lines.append(
                f"  {c.name}: max abs error {c.max_abs_error:.3g} "
                f"({c.relative_error:.2g} of max |Keras| {c.max_abs_reference:.3g}), "
                f"cosine {c.cosine:.6f}{top1}"
            )
        for name, variant in self.variants.items():
            c = variant.output()
            top1 = "" if c.top1_agreement is None else f", top-1 agreement {c.top1_agreement:.2%}"
            varying = "" if c.cosine_input_dependent is None else f" (input-dependent part {c.cosine_input_dependent:.4f})"
            lines.append(
                f"  in {name} arithmetic: latency {variant.latency_ms:.1f} ms; {c.name}: cosine "
                f"{c.cosine:.6f}{varying}{top1}"
            )
        return "\n".join(lines)

    def to_dict(self):
        data = dataclasses.asdict(self)
        for check, out in zip(self.outputs, data["outputs"]):
            out["relative_error"] = check.relative_error
        data["variants"] = {name: variant.to_dict() for name, variant in self.variants.items()}
        return data


THREADS_VARIABLE = "KERAS_NEXTVIT_NUM_THREADS"


def runtime_threads(requested=None):
    """Threads for an artifact's runtime (TFLite, ONNX Runtime, OpenVINO):
    ``requested`` if given, else the ``KERAS_NEXTVIT_NUM_THREADS``
    environment variable, else ``None`` (the runner's default: every core).
    Set the variable where processes share the cores (several exports or
    test workers at once), so that each runtime's pool does not take the
    others' cores."""
    if requested:
        return int(requested)
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_VARIABLE} must be a whole number of threads (1 or more), got {value!r}.")
    return int(value)


def run_in_batches(run, images, batch):
    """``run`` on ``images`` in chunks of ``batch`` rows (``None``: at once),
    for artifacts exported with a fixed batch size; a last, shorter chunk
    is padded with copies of its last image and its outputs cut back."""
    if not batch or len(images) == batch:
        return run(images)
    parts = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        short = batch - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
        parts.append([out[: batch - short] for out in run(chunk)])
    return [np.concatenate(p, axis=0) for p in zip(*parts)]


def _cosine(a, b):
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(num / np.maximum(den, 1e-30)))


def compare(name, actual, expected, per_pixel=False):
    """The check of one output. ``per_pixel``: the output is NHWC class
    scores, and top-1 agreement is counted per pixel."""
    actual = np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    if actual.shape != expected.shape:
        raise ValueError(f"Output {name!r}: exported shape {actual.shape} != Keras shape {expected.shape}.")
    top1 = None
    if (expected.ndim == 2 or per_pixel) and expected.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(actual, -1) == np.argmax(expected, -1)))
    varying = None
    if len(expected) > 1:
        centre = expected.mean(axis=0, keepdims=True, dtype=np.float64)
        varying = _cosine(actual - centre, expected - centre)
    return OutputCheck(
        name=name,
        max_abs_error=float(np.max(np.abs(actual - expected))),
        max_abs_reference=float(np.max(np.abs(expected))),
        cosine=_cosine(actual, expected),
        top1_agreement=top1,
        cosine_input_dependent=varying,
        per_pixel=bool(per_pixel and top1 is not None),
    )


def latency_ms(fn, x, warmup=2, repeats=5):
    """``{"median_ms", "min_ms"}`` of ``fn(x)`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def file_size(path):
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
        )
    return os.path.getsize(path)


def verify(
    keras_fn, runner, inputs, output_names, fmt, quantize, path, repeats=5, per_pixel=False,
    expected=None, keras_latency_ms=None,
):
    """Run ``runner`` and ``keras_fn`` on ``inputs`` and report.

    ``keras_fn`` and ``runner`` map an NHWC float batch to a list of arrays
    in ``output_names`` order. ``per_pixel``: the outputs are segmentation
    logits (top-1 agreement per pixel). ``expected`` (``keras_fn(inputs)``)
    and ``keras_latency_ms``: given when already measured (another runner of
    the same artifact), computed otherwise.
    """
    if expected is None:
        expected = keras_fn(inputs)
    actual = runner(inputs)
    checks = [
        compare(n, a, e, per_pixel) for n, a, e in zip(output_names, actual, expected, strict=True)
    ]
    one = inputs[:1]
    return ExportReport(
        format=fmt,
        quantize=quantize,
        path=str(path),
        file_size_bytes=file_size(path),
        batch_size=1,
        latency_ms=latency_ms(runner, one, repeats=repeats)["median_ms"],
        keras_latency_ms=(
            latency_ms(keras_fn, one, repeats=repeats)["median_ms"]
            if keras_latency_ms is None
            else keras_latency_ms
        ),
        outputs=checks,
    )
