"""A synthetic optimization record for renderer tests (the renderer is under test, not the measurements)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from onnxsmith.data.dataset import save_npz
from onnxsmith.serving.batching import BatchPoint, BatchSweep, plan_batching
from onnxsmith.optimize.plots import input_png
from onnxsmith.optimize.record import Card, Constraints, Example, Step, compare
from onnxsmith.optimize.selection import select

STEP_NAMES = ("baseline", "simplify", "onnxruntime-int8", "openvino-fp32", "openvino-int8", "prune-2:4")


def _examples(directory: Path, step: str, count: int = 3) -> tuple[Example, ...]:
    rng = np.random.default_rng(len(step))
    out = []
    for i in range(count):
        image = rng.random((1, 1, 8, 8)).astype(np.float32)
        npz = f"examples/{step}/worst-{i:02d}.npz"
        png = f"examples/{step}/worst-{i:02d}.png"
        save_npz(directory / npz, {"input.image": image})
        data = input_png(image)
        assert data is not None
        (directory / png).write_bytes(data)
        out.append(Example(index=10 * i + 3, cosine=0.97 - 0.01 * i, max_abs_error=0.2, label=i, prediction=i + 1,
                           reference_prediction=i, npz=npz, png=png))
    return tuple(out)


def synthetic_card(directory: Path) -> Card:
    """Six steps with plausible figures, judged by the real selection code, with a batching plan."""
    raw = [
        Step("baseline", None, "ONNX Runtime fp32 on the original model", "onnxruntime", "fp32",
             latency_p50_ms=2.0, latency_p90_ms=2.2, latency_p99_ms=2.6, throughput_per_s=500, peak_memory_mb=80,
             size_bytes=160_000, accuracy=0.9833, agreement=1.0, cosine_min=1.0, samples_checked=360,
             checked="all 360 samples of validation.npz"),
        Step("simplify", "baseline", "onnxslim: 12 -> 10 nodes", "onnxruntime", "fp32", latency_p50_ms=1.9,
             latency_p90_ms=2.1, latency_p99_ms=2.4, throughput_per_s=520, peak_memory_mb=80, size_bytes=158_000,
             accuracy=0.9833, agreement=1.0, cosine_min=0.999999, samples_checked=360,
             checked="all 360 samples of validation.npz",
             pass_record={"name": "simplify", "tool": "onnxslim 0.1.98", "summary": "12 -> 10 nodes",
                          "nodes_before": 12, "nodes_after": 10, "size_before": 160_000, "size_after": 158_000,
                          "details": {}, "notes": []}),
        Step("onnxruntime-int8", "simplify", "precision fp32 -> int8 (QDQ)", "onnxruntime", "int8",
             latency_p50_ms=1.1, latency_p90_ms=1.3, latency_p99_ms=1.6, throughput_per_s=900, peak_memory_mb=70,
             size_bytes=50_000, accuracy=0.9806, agreement=0.994, cosine_min=0.97, samples_checked=360,
             checked="all 360 samples of validation.npz", worst=_examples(directory, "onnxruntime-int8"),
             risky=("cosine 0.97000 on sample 3 below 0.98",)),
        Step("openvino-fp32", "simplify", "backend onnxruntime -> openvino", "openvino", "fp32",
             latency_p50_ms=1.5, latency_p90_ms=1.6, latency_p99_ms=1.9, throughput_per_s=650, peak_memory_mb=120,
             size_bytes=170_000, accuracy=0.9833, agreement=1.0, cosine_min=0.99999, samples_checked=360,
             checked="all 360 samples of validation.npz"),
        Step("openvino-int8", "openvino-fp32", "precision fp32 -> int8 (NNCF)", "openvino", "int8",
             latency_p50_ms=0.9, latency_p90_ms=1.0, latency_p99_ms=1.2, throughput_per_s=1100, peak_memory_mb=110,
             size_bytes=60_000, accuracy=0.9611, agreement=0.975, cosine_min=0.93, samples_checked=360,
             checked="all 360 samples of validation.npz", worst=_examples(directory, "openvino-int8", 2)),
        Step("prune-2:4", "openvino-fp32", "weights 2:4 pruned", "openvino", "fp32", status="failed",
             reason="compile failed: synthetic failure for the renderer test"),
    ]
    steps = []
    by_name = {s.name: s for s in raw}
    for step in raw:
        if step.parent and step.measured:
            improved, worse = compare(step, by_name[step.parent])
            step = dataclasses.replace(step, improved=improved, worse=worse)
        steps.append(step)
    constraints = Constraints(max_accuracy_drop=0.01, latency_budget_ms=5.0, metric="accuracy")
    selection = select(steps, constraints, "baseline")
    sweep = BatchSweep((BatchPoint(1, 1.1, 1.6), BatchPoint(4, 2.5, 3.0), BatchPoint(8, 4.0, 4.6)),
                       step=selection.chosen or "")
    batching = plan_batching(sweep, rate_per_s=600, p99_budget_ms=10.0, requests=3000)
    return Card(model="digits_cnn", model_fingerprint="0123456789abcdef", target="host", profile="balanced",
                constraints=constraints, reference="baseline", steps=selection.steps, chosen=selection.chosen,
                failure=selection.failure, validation="validation.npz (360 samples, labels 'label')",
                batching=batching.to_json(), created="2026-01-01T00:00:00+00:00", host="test-host x86_64",
                onnxsmith_version="0.1.0", notes=("synthetic record for the renderer test",))
