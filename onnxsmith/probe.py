"""``onnxsmith probe``: measure this device's peaks through its backend and keep them per device fingerprint.

Dense GEMM throughput per precision the device and its backend run (fp32, bf16, fp16, int8): the best of several
MatMul shapes and a 3x3 convolution, each compiled and profiled like any bundle (one shape underestimates: a
backend's kernels reach their peak on some shapes only). Memory bandwidth: the best of several copies of a 256 MiB
array (read + write counted). Stored in ``<cache>/peaks/<fingerprint>.json``; profiles then give efficiency both
"of measured peak" and "of nominal peak" (the target file's), and ``doctor`` and ``targets show host`` print them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxsmith.precisions import PRECISIONS, offered_precisions
from onnxsmith.profiling.peaks import describe, host_fingerprint, load_peaks, measured_peak, peaks_path

__all__ = ["describe", "host_fingerprint", "load_peaks", "measured_peak", "peaks_path", "probe_host"]

# (name, M, K, N) for MatMul; the conv is (name, C_in, H, W, C_out, kernel)
GEMM_SHAPES = (("matmul 256x2048x2048", 256, 2048, 2048), ("matmul 512x4096x4096", 512, 4096, 4096),
               ("matmul 1024x1024x1024", 1024, 1024, 1024))
CONV_SHAPES = (("conv 256x56x56 3x3 256", 256, 56, 56, 256, 3),)
COPY_BYTES = 256 * 2**20


def _matmul(path: Path, m: int, k: int, n: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32) * 0.02, "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def _conv(path: Path, c: int, h: int, w: int, out: int, kernel: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((out, c, kernel, kernel), dtype=np.float32) * 0.02, "W")
    pad = kernel // 2
    graph = helper.make_graph([helper.make_node("Conv", ["X", "W"], ["Y"], pads=[pad] * 4)], "conv",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, out, h, w])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def memory_bandwidth_gbps(repeats: int = 5) -> float:
    """Best of ``repeats`` copies of a 256 MiB array, counting the bytes read and written."""
    import numpy as np

    src = np.ones(COPY_BYTES // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return round(2 * COPY_BYTES / best / 1e9, 2)


def probe_host(backend: str | None = None, progress: Callable[[str], None] | None = None,
               quick: bool = False) -> dict[str, Any]:
    """Measure this machine's peaks through ``backend`` (default: the host target's first usable backend), store
    them in the cache and return the record."""
    import tempfile

    from onnxsmith.analysis import count_flops
    from onnxsmith.build.compile import choose_backend, compile_model
    from onnxsmith.data.dataset import synthetic
    from onnxsmith.model import load_model
    from onnxsmith.profiles import load_profile
    from onnxsmith.profiling.run import profile_bundle
    from onnxsmith.targets.host import detect_host

    say = progress or (lambda message: None)
    target = detect_host()
    chosen = choose_backend(target, backend)
    offered = offered_precisions(chosen, target)
    precisions = [p for p in PRECISIONS if p in offered]
    base = load_profile("quick")
    profile = dataclasses.replace(base, measure=dataclasses.replace(
        base.measure, warmup_iterations=2, min_iterations=5, min_seconds=0.5, max_seconds=10.0,
        throughput_seconds=0.0))
    shapes: list[tuple[str, Callable[[Path], None]]] = [
        (name, lambda p, m=m, k=k, n=n: _matmul(p, m, k, n)) for name, m, k, n in GEMM_SHAPES[: 1 if quick else None]]
    shapes += [(name, lambda p, a=a: _conv(p, *a)) for name, *a in CONV_SHAPES]
    peaks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxsmith-probe-") as tmp:
        for shape_name, build in shapes:
            path = Path(tmp) / f"{shape_name.replace(' ', '_')}.onnx"
            build(path)
            model = load_model(path)
            flops = count_flops(model.proto)[0]
            for precision in precisions:
                say(f"{chosen.name} {precision}: {shape_name}")
                calibration = synthetic(model, 8, 0) if chosen.needs_calibration(precision, model) else None
                bundle = compile_model(model, target, profile=profile, output=Path(tmp) / f"b-{path.stem}-{precision}",
                                       backend=chosen.name, precision=precision, calibration=calibration)
                result = profile_bundle(bundle, profile, baseline=False)
                tflops = flops / (result.measurement.latency_ms.p50 / 1000) / 1e12
                entry = peaks.setdefault(precision, {"tflops": 0.0, "best": None, "shapes": []})
                entry["shapes"].append({"shape": shape_name, "tflops": round(tflops, 5),
                                        "p50_ms": result.measurement.latency_ms.p50,
                                        "precision_used": result.precision_used})
                if tflops > entry["tflops"]:
                    entry["tflops"], entry["best"] = round(tflops, 5), shape_name
    say("memory bandwidth: 256 MiB copies")
    record = {
        "fingerprint": host_fingerprint(), "device": target.name, "target": "host", "backend": chosen.name,
        "backend_version": chosen.version(), "peaks": peaks, "memory_bandwidth_gbps": memory_bandwidth_gbps(),
        "nominal": {"tflops": dict(target.peak.tflops), "source": target.peak.source},
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": f"best p50 of {', '.join(n for n, _ in shapes)} through {chosen.name}; bandwidth: best of 5 "
                  "256 MiB numpy copies (read + write)",
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    path = peaks_path(record["fingerprint"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = path.with_name(f".{path.name}.{os.getpid()}")
    tmp_file.write_text(json.dumps(record, indent=2))
    os.replace(tmp_file, path)
    record["file"] = str(path)
    return record
