"""Timing a TensorRT engine the way ``trtexec`` does, with CUDA events on the GPU beside the host clock.

Matches trtexec 11's defaults (TensorRT 11.0, ``samples/common/sampleOptions.cpp`` / ``sampleInference.cpp``):
warm-up by time (200 ms), then at least 3 s *and* at least 10 iterations, percentiles 90/95/99 picked by trtexec's
rule (sorted ascending, index ``max(n - 1 - int((1 - p/100) * n), 0)``, no interpolation) and its median (the mean
of the two middle values for an even count), CUDA graphs on (``--noCudaGraph`` in trtexec; here
``--option cuda_graph=off``; a capture that fails falls back to plain enqueues and says so), blocking
synchronization on the events (trtexec's default; ``--useSpinWait`` there, ``--option spin_wait=on`` here).
trtexec 11 leaves host-device copies out of its loop by default; here they are timed separately on the same
stream each iteration (H2D and D2H with their own events), so the record holds what ``--includeDataTransfers``
would add. trtexec 10 differed in two defaults: CUDA graphs off, data transfers in the loop.

Each iteration is one request in flight (H2D, compute, D2H, then wait), trtexec's ``--streams=1`` latency;
throughput with several requests in flight is :func:`parallel_throughput`, contexts on independent streams.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

TRTEXEC_VERSION = "11.0"
WARMUP_MS = 200.0
DURATION_S = 3.0
MIN_ITERATIONS = 10
PERCENTILES = (90.0, 95.0, 99.0)


def trtexec_percentile(sorted_ms: Sequence[float], percentile: float) -> float:
    """trtexec's ``findPercentile``: no interpolation, the value ``int((1 - p/100) * n)`` places from the top
    (computed in float32, as trtexec's C++ does)."""
    if not sorted_ms:
        return float("inf")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError("percentile is not in [0, 100]")
    import numpy as np

    count = len(sorted_ms)
    # in float32 as trtexec computes it: (1 - 90/100) * 10 is 1.0000002 there, 0.9999999999999998 in float64
    f32 = np.float32
    exclude = int(f32(f32(1) - f32(percentile) / f32(100)) * f32(count))
    return float(sorted_ms[max(count - 1 - exclude, 0)])


def trtexec_median(sorted_ms: Sequence[float]) -> float:
    """trtexec's ``findMedian``: the middle value, or the mean of the two middle values for an even count."""
    if not sorted_ms:
        return float("inf")
    middle = len(sorted_ms) // 2
    if len(sorted_ms) % 2:
        return float(sorted_ms[middle])
    return (float(sorted_ms[middle - 1]) + float(sorted_ms[middle])) / 2


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """min/max/mean/median and the p90/p95/p99 of trtexec's summary, in ms."""
    ordered = sorted(float(s) for s in samples_ms)
    out = {"min": ordered[0], "max": ordered[-1], "mean": sum(ordered) / len(ordered),
           "median": trtexec_median(ordered)}
    for p in PERCENTILES:
        out[f"p{int(p)}"] = trtexec_percentile(ordered, p)
    return {k: round(v, 5) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class TimingSettings:
    """How :func:`measure` times; the defaults are trtexec 11's."""

    warmup_ms: float = WARMUP_MS
    duration_s: float = DURATION_S
    min_iterations: int = MIN_ITERATIONS
    cuda_graph: bool = True
    spin_wait: bool = False


class Events:
    """CUDA events on one stream through cuda-python (created blocking-sync unless spin-waiting)."""

    def __init__(self, rt: Any, stream: Any, spin_wait: bool, check: Callable[..., Any]) -> None:
        self.rt, self.stream, self.check = rt, stream, check
        flags = 0 if spin_wait else int(getattr(rt, "cudaEventBlockingSync", 1))
        self.events = {name: check(rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
                       for name in ("in_start", "compute_start", "compute_end", "out_end")}

    def record(self, name: str) -> None:
        self.check(self.rt.cudaEventRecord(self.events[name], self.stream), "cudaEventRecord")

    def wait(self, name: str) -> None:
        self.check(self.rt.cudaEventSynchronize(self.events[name]), "cudaEventSynchronize")

    def elapsed(self, start: str, end: str) -> float:
        return float(self.check(self.rt.cudaEventElapsedTime(self.events[start], self.events[end]),
                                "cudaEventElapsedTime"))

    def destroy(self) -> None:
        for event in self.events.values():
            self.rt.cudaEventDestroy(event)
        self.events = {}


class Graph:
    """One enqueue captured as a CUDA graph (after a plain enqueue, as TensorRT asks), launched as a whole."""

    def __init__(self, rt: Any, stream: Any, enqueue: Callable[[], None], check: Callable[..., Any]) -> None:
        self.rt, self.stream, self.check = rt, stream, check
        self.exec: Any = None
        enqueue()  # TensorRT does its shape-dependent setup on the first enqueue, outside the capture
        check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            self.exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            rt.cudaGraphDestroy(graph)

    def launch(self) -> None:
        self.check(self.rt.cudaGraphLaunch(self.exec, self.stream), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self.exec is not None:
            self.rt.cudaGraphExecDestroy(self.exec)
            self.exec = None


def measure(ctx: Any, host: dict[str, Any], settings: TimingSettings, rt: Any, check: Callable[..., Any],
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """trtexec-style figures for one prepared execution context ``ctx`` (``stream.raw``, ``upload(host)``,
    ``enqueue()``, ``download()``): GPU compute, H2D, D2H and host latency per iteration, and enqueue time."""
    stream = ctx.stream.raw
    events = Events(rt, stream, settings.spin_wait, check)
    graph, graph_note = None, ""
    if settings.cuda_graph:
        try:
            graph = Graph(rt, stream, ctx.enqueue, check)
        except Exception as exc:  # trtexec: "this flag may be ignored if the graph capture fails"
            graph_note = f"CUDA graph capture failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
    launch = graph.launch if graph is not None else ctx.enqueue
    compute: list[float] = []
    h2d: list[float] = []
    d2h: list[float] = []
    latency: list[float] = []
    enqueue: list[float] = []
    try:
        def iteration() -> None:
            events.record("in_start")
            ctx.upload(host)
            events.record("compute_start")
            t0 = clock()
            launch()
            enqueue.append((clock() - t0) * 1000)
            events.record("compute_end")
            ctx.download()
            events.record("out_end")
            events.wait("out_end")
            h2d.append(events.elapsed("in_start", "compute_start"))
            compute.append(events.elapsed("compute_start", "compute_end"))
            d2h.append(events.elapsed("compute_end", "out_end"))
            latency.append(events.elapsed("in_start", "out_end"))

        start = clock()
        while (clock() - start) * 1000 < settings.warmup_ms:
            iteration()
        warmups = len(compute)
        for series in (compute, h2d, d2h, latency, enqueue):
            del series[:]
        start = clock()
        while len(compute) < settings.min_iterations or clock() - start < settings.duration_s:
            iteration()
        seconds = clock() - start
    finally:
        if graph is not None:
            graph.destroy()
        events.destroy()
    method = (f"trtexec {TRTEXEC_VERSION} defaults: {settings.warmup_ms:g} ms warm-up, >= {settings.duration_s:g} s "
              f"and >= {settings.min_iterations} iterations, trtexec percentiles, CUDA graph "
              f"{'on' if graph is not None else 'off'}, {'spin-wait' if settings.spin_wait else 'blocking'} "
              "sync on CUDA events; H2D and D2H timed separately (trtexec 11 leaves them out by default)")
    return {
        "method": method, "tool": f"trtexec {TRTEXEC_VERSION}", "iterations": len(compute),
        "warmup_iterations": warmups, "seconds": round(seconds, 3), "cuda_graph": graph is not None,
        "sync": "spin-wait" if settings.spin_wait else "blocking", "note": graph_note,
        "gpu_compute_ms": summarize(compute), "h2d_ms": summarize(h2d), "d2h_ms": summarize(d2h),
        "host_latency_ms": summarize(latency), "enqueue_ms": summarize(enqueue),
        "throughput_per_s": round(len(compute) / seconds, 3) if seconds > 0 else None,
    }


def parallel_throughput(contexts: Sequence[Any], seconds: float, rt: Any, check: Callable[..., Any],
                        clock: Callable[[], float] = time.perf_counter) -> tuple[float, int]:
    """Inferences/s with every context on its own stream, each re-enqueued as soon as *its own* previous request
    finished (polled with ``cudaStreamQuery``), so a slow stream never holds the others back (no lock-step)."""
    not_ready = rt.cudaError_t.cudaErrorNotReady
    for ctx in contexts:  # warm-up
        ctx.enqueue()
    for ctx in contexts:
        ctx.stream.synchronize()
    done = 0
    start = clock()
    for ctx in contexts:
        ctx.enqueue()
    busy = list(contexts)
    while busy:
        for ctx in list(busy):
            status = rt.cudaStreamQuery(ctx.stream.raw)
            status = status[0] if isinstance(status, tuple) else status
            if status == not_ready:
                continue
            check((status,), "cudaStreamQuery")
            done += 1
            if clock() - start < seconds:
                ctx.enqueue()
            else:
                busy.remove(ctx)
    elapsed = clock() - start
    return (done / elapsed if elapsed > 0 else 0.0), len(contexts)
