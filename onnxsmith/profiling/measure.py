"""The timed loop that runs inside a measuring process: latency statistics and per-layer precision shares."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from onnxsmith.profiling.stats import block_medians

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.profiles import Measure


PERCENTILES = (50, 90, 95, 99)
LAYER_PRECISIONS = ("int4", "fp8", "int8", "fp16", "bf16", "fp32", "fp64")
"""Precisions a per-layer profile names, narrowest first (integer index/shape work is ``int32``/``int64``)."""


def precision_shares(layers: list[Any]) -> dict[str, Any]:
    """How the profiled time splits over the precisions the layers ran in: ``{"percent": {"int8": 62.1, ...},
    "time_ms": {...}, "layers": {...}}``; layers whose precision the backend does not report count as
    ``unknown``."""
    time_ms: dict[str, float] = {}
    counts: dict[str, int] = {}
    for layer in layers:
        key = getattr(layer, "precision", "") or "unknown"
        time_ms[key] = time_ms.get(key, 0.0) + float(layer.time_ms)
        counts[key] = counts.get(key, 0) + 1
    total = sum(time_ms.values())
    order = [*LAYER_PRECISIONS, *sorted(k for k in time_ms if k not in LAYER_PRECISIONS)]
    keys = [k for k in order if k in time_ms]
    return {"percent": {k: round(100 * time_ms[k] / total, 2) if total else 0.0 for k in keys},
            "time_ms": {k: round(time_ms[k], 6) for k in keys}, "layers": {k: counts[k] for k in keys},
            "total_ms": round(total, 6)}


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    iterations: int
    seconds: float

    @classmethod
    def from_samples(cls, samples_ms: list[float], seconds: float) -> LatencyStats:
        import numpy as np

        arr = np.asarray(samples_ms, dtype=np.float64)
        p = np.percentile(arr, PERCENTILES)
        return cls(min=round(float(arr.min()), 4), mean=round(float(arr.mean()), 4), p50=round(float(p[0]), 4),
                   p90=round(float(p[1]), 4), p95=round(float(p[2]), 4), p99=round(float(p[3]), 4),
                   max=round(float(arr.max()), 4), std=round(float(arr.std()), 4), iterations=len(arr),
                   seconds=round(seconds, 3))


def measure_runner(runner: Any, feeds: dict[str, np.ndarray], measure: Measure, batch: int,
                   layers: bool = True) -> dict[str, Any]:
    """Time one loaded runner. Returns the measurement as a JSON-ready dict."""
    call = runner.bind(feeds)
    start = time.perf_counter()
    call()
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(measure.warmup_iterations):
        call()
    samples: list[float] = []
    clock = time.perf_counter
    loop_start = clock()
    while True:
        t0 = clock()
        call()
        samples.append((clock() - t0) * 1000)
        elapsed = clock() - loop_start
        if (len(samples) >= measure.min_iterations and elapsed >= measure.min_seconds) or elapsed >= measure.max_seconds:
            break
    loop_seconds = clock() - loop_start
    stats = LatencyStats.from_samples(samples, loop_seconds)
    result: dict[str, Any] = {
        "latency_ms": dataclasses.asdict(stats),
        "throughput_per_s": round(batch * len(samples) / loop_seconds, 3),
        "first_inference_ms": round(first_ms, 3),
        "parallel_throughput_per_s": None,
        "parallel_requests": None,
        "layers": None,
        "block_p50_ms": block_medians(samples),
    }
    if measure.throughput_seconds > 0:
        parallel = runner.parallel_throughput(feeds, measure.throughput_seconds)
        if parallel:
            result["parallel_throughput_per_s"] = round(parallel[0] * batch, 3)
            result["parallel_requests"] = parallel[1]
    if layers:
        try:
            profile = runner.layer_profile(feeds)
        except Exception as exc:  # per-layer profiling is a bonus; never fail the profile for it
            result["layers_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            profile = None
        if profile:
            result["layers"] = [dataclasses.asdict(layer) for layer in profile[:25]]
            result["layer_precision"] = precision_shares(profile)
        try:
            result["vendor_timing"] = runner.vendor_timing(feeds)
        except Exception as exc:  # like the layer profile: a bonus beside the host timing
            result["vendor_timing_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return result
