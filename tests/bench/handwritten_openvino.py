"""The hand-written OpenVINO (+ NNCF) script a user would write without onnxsmith: the peer for the overhead check.

    python -m tests.bench.handwritten_openvino MODEL.onnx CALIB.npz OUT.json [--fp32]

It times with the same protocol as `onnxsmith profile` (warm-up, then >= N iterations and >= T seconds of
synchronous `infer()` on one request with inputs set once), so the two p50s are comparable.
"""

from __future__ import annotations

import json
import sys
import time


def main(model_path: str, calib_path: str, out_path: str, fp32: bool = False, warmup: int = 20,
         iterations: int = 200, seconds: float = 10.0) -> None:
    import nncf
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model_path)
    start = time.perf_counter()
    if not fp32:
        with np.load(calib_path) as npz:
            images = npz["input"]
        dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
        model = nncf.quantize(model, dataset, subset_size=len(images))
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    compile_s = time.perf_counter() - start
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    request.set_input_tensor(ov.Tensor(x))
    for _ in range(warmup):
        request.infer()
    samples = []
    begin = time.perf_counter()
    while len(samples) < iterations or time.perf_counter() - begin < seconds:
        t0 = time.perf_counter()
        request.infer()
        samples.append((time.perf_counter() - t0) * 1000)
    result = {"p50_ms": float(np.percentile(samples, 50)), "p99_ms": float(np.percentile(samples, 99)),
              "iterations": len(samples), "compile_seconds": compile_s,
              "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], fp32="--fp32" in sys.argv)
