"""The profile record (:class:`ProfileResult`, what ``--json`` prints), its efficiency against the peaks, and
what is said about it."""

from __future__ import annotations

import dataclasses
from typing import Any

from onnxsmith.profiling.measure import LatencyStats
from onnxsmith.profiling.stats import RatioCI


def precision_line(shares: dict[str, Any] | None) -> str:
    """``int8 62.1 % / bf16 30.2 % / fp32 7.7 %`` of the profiled time."""
    if not shares or not shares.get("percent"):
        return ""
    return " / ".join(f"{k} {v:.1f} %" for k, v in shares["percent"].items())


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One runner's figures."""

    latency_ms: LatencyStats
    throughput_per_s: float
    first_inference_ms: float
    load_seconds: float
    peak_rss_mb: float
    parallel_throughput_per_s: float | None = None
    parallel_requests: int | None = None
    layers: list[dict[str, Any]] | None = None
    rpc_round_trip_ms: LatencyStats | None = None
    """Remote profiles: the latency seen through RPC (``latency_ms`` is then timed on the device itself)."""
    layer_precision: dict[str, Any] | None = None
    """Share of the per-layer profiled time at each precision (:func:`onnxsmith.profiling.measure.precision_shares`)."""
    vendor_timing: dict[str, Any] | None = None
    """The runtime's own measurement in its vendor tool's method (:meth:`onnxsmith.plugin.Runner.vendor_timing`)."""
    block_p50_ms: list[float] | None = None
    """Medians of contiguous blocks of the timed loop (:func:`onnxsmith.profiling.stats.block_medians`)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        rpc = data.get("rpc_round_trip_ms")
        return cls(latency_ms=LatencyStats(**data["latency_ms"]), throughput_per_s=data["throughput_per_s"],
                   first_inference_ms=data["first_inference_ms"], load_seconds=data["load_seconds"],
                   peak_rss_mb=data["peak_rss_mb"], parallel_throughput_per_s=data.get("parallel_throughput_per_s"),
                   parallel_requests=data.get("parallel_requests"), layers=data.get("layers"),
                   rpc_round_trip_ms=None if rpc is None else LatencyStats(**rpc),
                   layer_precision=data.get("layer_precision"), vendor_timing=data.get("vendor_timing"),
                   block_p50_ms=data.get("block_p50_ms"))


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """The profile of one bundle, with the ONNX Runtime fp32 baseline measured in the same run."""

    backend: str
    backend_version: str
    target: str
    device: str
    precision_used: str
    batch: int
    inputs: str
    """Where the timed inputs came from."""
    measurement: Measurement
    baseline: Measurement | None
    compile_seconds: float | None
    artifact_size_bytes: int
    flops: int
    peak_tflops: float | None
    host: str
    remote: str | None
    measure: dict[str, Any]
    shapes: tuple[dict[str, Any], ...] = ()
    """A bundle compiled for a shape range: the figures at each of its ``min``, ``opt`` and ``max`` points (the
    main figures are those at ``opt``)."""
    environment: dict[str, Any] | None = None
    """CPU model, cores, governor, load before/after and other processes' CPU share during the run."""
    comparison: dict[str, Any] | None = None
    """The artifact against the baseline in interleaved runs: ``ratio_p50`` (a :class:`RatioCI` as JSON, artifact
    over baseline) and each side's per-run medians."""
    measured_peak_tflops: float | None = None
    """This machine's peak for the precision measured by ``onnxsmith probe`` (None: not probed, or remote)."""

    @property
    def efficiency_of_measured_peak(self) -> float | None:
        return self._share_of(self.measured_peak_tflops)

    @property
    def achieved_tflops(self) -> float | None:
        if not self.flops:
            return None
        return self.flops / (self.measurement.latency_ms.p50 / 1000) / 1e12

    @property
    def efficiency(self) -> float | None:
        return self._share_of(self.peak_tflops)

    def _share_of(self, peak: float | None) -> float | None:
        """The achieved throughput as a share of ``peak`` (None when either is unknown)."""
        achieved = self.achieved_tflops
        return None if achieved is None or not peak else achieved / peak

    @property
    def speedup_vs_baseline(self) -> float | None:
        if self.baseline is None:
            return None
        return self.baseline.latency_ms.p50 / self.measurement.latency_ms.p50

    def to_json(self) -> dict[str, Any]:
        m = dataclasses.asdict(self.measurement)
        data: dict[str, Any] = {
            "backend": self.backend, "backend_version": self.backend_version, "target": self.target,
            "device": self.device, "precision_used": self.precision_used, "batch": self.batch,
            "inputs": self.inputs, **m,
            "compile_seconds": self.compile_seconds, "artifact_size_bytes": self.artifact_size_bytes,
            "flops": self.flops,
            "achieved_tflops": None if self.achieved_tflops is None else round(self.achieved_tflops, 6),
            "peak_tflops": self.peak_tflops,
            "efficiency": None if self.efficiency is None else round(self.efficiency, 6),
            "measured_peak_tflops": self.measured_peak_tflops,
            "efficiency_of_measured_peak": None if self.efficiency_of_measured_peak is None
            else round(self.efficiency_of_measured_peak, 6),
            "speedup_vs_baseline": None if self.speedup_vs_baseline is None else round(self.speedup_vs_baseline, 4),
            "baseline": None,
            "host": self.host, "remote": self.remote, "measure": self.measure,
            "environment": self.environment, "comparison": self.comparison,
        }
        if self.shapes:
            data["shapes"] = list(self.shapes)
        if self.baseline is not None:
            data["baseline"] = {"backend": "onnxruntime", "precision_used": "fp32",
                                **dataclasses.asdict(self.baseline)}
        return data


def slower_than_baseline(record: dict[str, Any], manifest: dict[str, Any] | None = None) -> str | None:
    """When the artifact is significantly slower than its ONNX Runtime fp32 baseline (interleaved runs): what to
    say, naming the faster choice (with the command, given the bundle's ``manifest``); else None."""
    comparison = record.get("comparison") or {}
    ci = comparison.get("ratio_p50")
    if not ci:
        return None
    ratio = RatioCI.from_json(ci)
    if not (ratio.significant and ratio.ratio > 1):
        return None
    command = ""
    if manifest:
        source = (manifest.get("model") or {}).get("source") or "MODEL"
        target = (manifest.get("target") or {}).get("id") or "TARGET"
        command = f"onnxsmith compile {source} --target {target} --backend onnxruntime --precision fp32"
    if record["backend"] == "onnxruntime":
        faster = (f"the fp32 model on ONNX Runtime (this {record['precision_used']} graph costs more than it saves "
                  f"here): {command or 'compile with --precision fp32'}")
    else:
        faster = (f"ONNX Runtime fp32 ({command or 'compile with --backend onnxruntime'}), or let 'onnxsmith "
                  "optimize' measure every backend")
    return (f"the {record['backend']} {record['precision_used']} artifact is {ratio.ratio:.2f}x slower than ONNX "
            f"Runtime fp32 on this machine (p50 ratio {ratio.text()}); the faster choice here is {faster}")
