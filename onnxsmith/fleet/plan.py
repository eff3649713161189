"""What a compare hands its executor (the local one, the Ray one): the :class:`Plan` of cells and the requests of
their stages, and the :class:`CellOutcome` each cell comes back as. Its own module so that :mod:`onnxsmith.fleet.compare`
imports the executors and the executors import only this (no cycle)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxsmith.fleet.cells import CellSpec


@dataclasses.dataclass
class CellOutcome:
    """What happened to one cell; ``status`` is ``measured``, ``compiled`` (not measured: ``reason`` says why) or
    ``failed`` (``reason``: the one-line error)."""

    spec: CellSpec
    status: str = "pending"
    reason: str = ""
    worker: str | None = None
    device: str | None = None
    emulated: bool = False
    attempts: int = 0
    compile: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    transfers: dict[str, str] = dataclasses.field(default_factory=dict)
    failed_attempts: list[str] = dataclasses.field(default_factory=list)
    rank: int | None = None

    def fail(self, outcome: dict[str, Any], stage: str) -> None:
        self.status = "failed" if stage == "compile" or self.compile is None else "compiled"
        self.reason = f"{stage} failed: {outcome.get('message', 'no message')}"

    def summary(self) -> dict[str, Any]:
        """The figures the table and the plots show (taken from the cell's own profile and validation records)."""
        p, v = self.profile or {}, self.validation or {}
        lat, base = p.get("latency_ms") or {}, (p.get("baseline") or {}).get("latency_ms") or {}
        return {
            "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"), "mean_ms": lat.get("mean"),
            "baseline_p50_ms": base.get("p50"), "speedup_vs_baseline": p.get("speedup_vs_baseline"),
            "throughput_per_s": p.get("throughput_per_s"), "achieved_tflops": p.get("achieved_tflops"),
            "peak_tflops": p.get("peak_tflops"), "efficiency": p.get("efficiency"),
            "measured_peak_tflops": p.get("measured_peak_tflops"),
            "efficiency_of_measured_peak": p.get("efficiency_of_measured_peak"),
            "peak_rss_mb": p.get("peak_rss_mb"),
            "validation_passed": v.get("passed"), "cosine_min": v.get("cosine_min"),
            "max_abs_error": v.get("max_abs_error"), "accuracy": v.get("accuracy"),
            "reference_accuracy": v.get("reference_accuracy"), "top1_agreement": v.get("top1_agreement"),
        }

    def to_json(self) -> dict[str, Any]:
        c = self.compile or {}
        return {
            "cell": self.spec.label, "slug": self.spec.slug, "target": self.spec.target,
            "backend": c.get("backend") or self.spec.backend, "precision": c.get("precision") or self.spec.precision,
            "precision_used": c.get("precision_used"), "requested": dataclasses.asdict(self.spec),
            "status": self.status, "reason": self.reason, "worker": self.worker, "device": self.device,
            "emulated": self.emulated, "ranked": self.rank is not None, "rank": self.rank,
            "attempts": self.attempts, "failed_attempts": self.failed_attempts,
            "compile_seconds": c.get("compile_seconds"), "cache_hit": c.get("cache_hit"),
            "artifact_size_bytes": c.get("artifact_size_bytes"), "backend_version": c.get("backend_version"),
            "bundle": f"cells/{self.spec.slug}" if self.compile is not None else None,
            **self.summary(), "stage_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "transfers": self.transfers,
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a cell's stages need besides the cell itself (paths as the driver sees them)."""

    model: Path
    shapes: dict[str, list[int]]
    cells: tuple[CellSpec, ...]
    profile: str
    data: Path | None
    labels: str | None
    calibration: Path | None
    samples: int
    options: dict[str, str]
    """The options every cell compiles with (``compile --cluster``'s one cell), unless :attr:`cell_options` has
    the cell's own."""
    stages: tuple[str, ...] = ("compile", "measure")
    """``compile --cluster`` stops after compile."""
    measure_parts: tuple[str, ...] = ("profile", "validate")
    bundle: Path | None = None
    """``profile/validate --cluster``: measure this existing bundle instead of compiling the model."""
    cell_options: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    """Per cell label: the options that apply to that cell's backend (see :func:`cell_options`)."""

    def compile_request(self, spec: CellSpec, output: Path, model: Path | None = None,
                        calibration: Path | None = None) -> dict[str, Any]:
        calib = calibration or self.calibration or self.data
        return {"model": str(model or self.model), "shapes": self.shapes, "target": spec.target,
                "backend": spec.backend, "precision": spec.precision, "profile": self.profile,
                "calibration": None if calib is None else str(calib), "output": str(output),
                "options": self.cell_options.get(spec.label, self.options)}

    def measure_request(self, bundle: Path, remote: str | None, emulated: bool,
                        data: Path | None = None) -> dict[str, Any]:
        data = data or self.data
        return {"bundle": str(bundle), "profile": self.profile, "data": None if data is None else str(data),
                "labels": self.labels, "samples": self.samples, "remote": remote, "emulated": emulated,
                "do": list(self.measure_parts)}


Progress = Callable[[CellOutcome, str], None]
