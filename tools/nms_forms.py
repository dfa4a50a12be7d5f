#!/usr/bin/env python
"""Which NMS forms compute mmcv's NMS, and how fast: measured, not guessed.

    python tools/nms_forms.py            # 1000 and 4000 boxes, IoU 0.7 and 0.5

On clustered random boxes with equal scores and duplicate boxes, each form's
kept indices (in order) are compared with the PyTorch reference's
transcription of mmcv's ``nms_cpu`` (tools/torch_reference_detection.py),
and timed (median of 5 after a warm-up) on the TensorFlow backend:

* ``keras_nextvit`` -- :func:`keras_nextvit.detection.nms.nms` (the keras.ops
  fixed-point form, eager, as the detector runs it);
* ``tf.image.non_max_suppression`` -- TensorFlow's own kernel;
* ``onnxruntime NonMaxSuppression`` -- the operator the detector's ONNX
  export uses (one class, all boxes).

Prints one line per form and case: exact or how many kept indices differ.
The three forms run in one process (ONNX Runtime's threads may take cycles
from the others), so the timings are indicative; the agreement is the point.
"""

import importlib.util
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _reference():
    spec = importlib.util.spec_from_file_location("nms_forms_reference", os.path.join(HERE, "torch_reference_detection.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def boxes_case(n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.uniform(50, 750, (max(4, n // 50), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 10, (n, 2))
    wh = rng.uniform(10, 80, (n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    boxes[n // 2: n // 2 + 10] = boxes[:10]
    scores = rng.uniform(0, 1, n).astype(np.float32)
    scores[::9] = scores[0]
    return boxes, scores


def _timed(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf
    import torch
    from keras import ops
    from onnx import TensorProto, helper

    from keras_nextvit.detection.nms import nms

    ref = _reference()
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["b", "s", "m", "i"], ["k"])], "nms",
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, None]),
         helper.make_tensor_value_info("m", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("i", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("k", TensorProto.INT64, [None, 3])],
    )
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    print(f"{'boxes':>6} {'IoU':>4}  {'form':<32}{'ms':>9}  agreement with mmcv's nms_cpu")
    for n in (1000, 4000):
        boxes, scores = boxes_case(n)
        for iou in (0.7, 0.5):
            _, expected = ref.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou)
            expected = expected.numpy()
            forms = {
                "keras_nextvit (keras.ops)": lambda: ops.convert_to_numpy(nms(boxes, scores, iou)),
                "tf.image.non_max_suppression": lambda: tf.image.non_max_suppression(
                    boxes[:, [1, 0, 3, 2]], scores, n, iou).numpy(),
                "onnxruntime NonMaxSuppression": lambda: session.run(None, {
                    "b": boxes[None], "s": scores[None, None], "m": np.array([n], np.int64),
                    "i": np.array([iou], np.float32)})[0][:, 2],
            }
            for name, form in forms.items():
                kept = np.asarray(form())
                if kept.shape == expected.shape and (kept == expected).all():
                    verdict = f"exact ({len(kept)} kept)"
                else:
                    common = len(set(kept.tolist()) & set(expected.tolist()))
                    verdict = (f"DIFFERS: {len(kept)} kept vs {len(expected)}, {common} in common, "
                               f"order {'equal' if common == len(kept) == len(expected) else 'n/a'}")
                print(f"{n:>6} {iou:>4}  {name:<32}{_timed(form):>9.1f}  {verdict}")


if __name__ == "__main__":
    main()
