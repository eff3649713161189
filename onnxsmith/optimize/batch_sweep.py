"""The ladder's batch sweep: the chosen step at the profile's other batch sizes (one dynamic-batch artifact where
the backend compiles shape ranges, else one artifact per size), and the dynamic-batching plan from those
latencies."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import UserInputError
from onnxsmith.optimize.record import Constraints, Step
from onnxsmith.optimize.steps import Recipe, StepRunner

if TYPE_CHECKING:
    from onnxsmith.profiles import Profile


def _batch_sweep(runner: StepRunner, steps: Sequence[Step], chosen: str, profile: Profile, constraints: Constraints,
                 latency_budget_ms: float | None, arrival_rate: float | None, notes: list[str]
                 ) -> tuple[list[Step], dict | None]:
    from onnxsmith.serving.batching import BatchPoint, BatchSweep, plan_batching

    best = next(s for s in steps if s.name == chosen)
    recipe = runner.recipes[chosen]
    out: list[Step] = []
    points = [BatchPoint(1, float(best.latency_p50_ms or 0.0), best.latency_p99_ms)]
    sizes = [b for b in profile.batch_sizes if b != 1]
    swept = _dynamic_sweep(runner, recipe, chosen, sizes, constraints, notes) if sizes else None
    if swept is not None:
        step, measured = swept
        out.append(step)
        points += measured
        sizes = []
    for batch in sizes:
        try:
            runner.base_model(batch)
        except UserInputError as exc:
            notes.append(f"batch sweep skipped: {exc.one_line()}")
            break
        step = runner.measure(dataclasses.replace(
            recipe, name=f"{chosen}@b{batch}", parent=chosen, change=f"batch 1 -> {batch}", batch=batch,
            candidate=constraints.objective == "throughput"))
        out.append(step)
        if step.measured:
            points.append(BatchPoint(batch, float(step.latency_p50_ms or 0.0), step.latency_p99_ms))
    if len(profile.batch_sizes) == 1:
        notes.append(f"batch sweep: the {profile.name} profile lists batch size 1 only (the throughput profile "
                     "sweeps up to 32)")
    report = plan_batching(BatchSweep(tuple(points), chosen), arrival_rate, latency_budget_ms)
    return out, report.to_json()


def _dynamic_sweep(runner: StepRunner, recipe: Recipe, chosen: str, sizes: Sequence[int], constraints: Constraints,
                   notes: list[str]) -> tuple[Step, list[Any]] | None:
    """The batch sweep on one artifact whose batch dim is dynamic from 1 to the largest size (tuned for it), where
    the chosen step's backend compiles shape ranges: one compile, profiled at every batch size. ``None`` (and a
    note) when the backend cannot, or the model has no dynamic batch: the sweep then compiles one artifact per
    batch size."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.errors import OnnxsmithError
    from onnxsmith.model.shapes import specs_at
    from onnxsmith.serving.batching import BatchPoint
    from onnxsmith.profiling.run import profile_bundle
    from onnxsmith.registry import get_backend

    top = max(sizes)
    batch_range = (1, top, top)
    try:
        model = runner.base_model(top, batch_range)
        support = get_backend(recipe.backend).dynamic_shapes(model, runner.target)
    except OnnxsmithError as exc:
        notes.append(f"batch sweep: one artifact per batch size ({exc.one_line()})")
        return None
    if not support:
        notes.append(f"batch sweep: one artifact per batch size, since {recipe.backend} cannot compile a batch range "
                     f"({support.reason})")
        return None
    step = runner.measure(dataclasses.replace(
        recipe, name=f"{chosen}@b1..{top}", parent=chosen, change=f"batch 1 -> dynamic 1..{top} (one artifact)",
        batch=top, batch_range=batch_range, candidate=constraints.objective == "throughput"))
    if not step.measured or not step.bundle:
        notes.append(f"batch sweep: the dynamic-batch artifact failed ({step.reason}); one artifact per batch size")
        return None
    bundle = Bundle.open(runner.output / step.bundle, verify=False)
    ranges = bundle.shape_ranges
    shaped = []
    for batch in sorted(sizes):
        scaled = {n: type(r)((batch, *r.min[1:]), (batch, *r.min[1:]), (batch, *r.min[1:])) for n, r in ranges.items()}
        shaped.append((f"b{batch}", specs_at(bundle.inputs, scaled, "opt")))
    runner.progress(f"profiling {step.name} at batch {', '.join(str(b) for b in sorted(sizes))}")
    try:
        record = profile_bundle(bundle, runner.profile, baseline=False, data=runner.data, points=shaped).to_json()
    except OnnxsmithError as exc:
        notes.append(f"batch sweep: profiling the dynamic-batch artifact failed ({exc.one_line()}); one artifact "
                     "per batch size")
        return None
    measured = [BatchPoint(p["batch"], float(p["latency_ms"]["p50"]), p["latency_ms"]["p99"]) for p in record["shapes"]]
    sweep_text = ", ".join(f"b{p.batch} {p.latency_p50_ms:.4g} ms" for p in measured)
    step = dataclasses.replace(step, notes=(*step.notes, f"one artifact for batch 1..{top}, profiled at each size "
                                            f"(p50 {sweep_text})"))
    return step, measured
