"""Choose the best measured step under the constraints, and say why every other step lost."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from onnxsmith.optimize.record import Constraints, Step, fmt_ms, fmt_pct, Verdict

_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Selection:
    steps: tuple[Step, ...]
    """The steps with ``status`` and ``reason`` filled in."""
    chosen: str | None
    failure: str | None
    """When nothing met the constraints: which constraint failed and by how much."""


def _drop(step: Step, reference: Step, metric: str) -> float | None:
    ref, value = reference.quality(metric), step.quality(metric)
    if ref is None or value is None:
        return None
    return float(ref) - float(value)


def _score(step: Step, objective: str) -> tuple[float, float]:
    """Sort key, smaller is better."""
    size = float(step.size_bytes or 0)
    if objective == "throughput":
        return (-(step.throughput_per_s or 0.0), size)
    return (float(step.latency_p50_ms or float("inf")), size)


def _why_lost(step: Step, best: Step, objective: str) -> str:
    if objective == "throughput":
        return (f"lower throughput than {best.name}: {step.throughput_per_s or 0:,.1f}/s vs "
                f"{best.throughput_per_s or 0:,.1f}/s")
    a, b = step.latency_p50_ms or 0.0, best.latency_p50_ms or 0.0
    if abs(a - b) <= _EPS:
        return f"as fast as {best.name} (p50 {fmt_ms(a)} ms) but no smaller"
    slower = (a - b) / b * 100 if b else 0.0
    return f"slower than {best.name}: p50 {fmt_ms(a)} ms vs {fmt_ms(b)} ms (+{slower:.1f} %)"


def select(steps: Sequence[Step], constraints: Constraints, reference: str) -> Selection:
    """Judge every measured candidate against ``constraints``; the best by the objective is chosen."""
    by_name = {s.name: s for s in steps}
    ref = by_name[reference]
    metric = constraints.metric
    budget = constraints.latency_budget_ms
    verdicts: dict[str, str] = {}
    meets_accuracy: list[Step] = []
    meets_latency: list[Step] = []
    passing: list[Step] = []
    for step in steps:
        if step.status == "failed" or not step.measured or step.screened:
            continue
        problems = []
        drop = _drop(step, ref, metric)
        if drop is None:
            problems.append(f"{metric} was not measured")
        elif drop > constraints.max_accuracy_drop + _EPS:
            problems.append(f"{metric} drop {fmt_pct(drop)} exceeds the {fmt_pct(constraints.max_accuracy_drop)} "
                            f"allowed by {fmt_pct(drop - constraints.max_accuracy_drop)}")
        else:
            meets_accuracy.append(step)
        if budget is not None and (step.latency_p50_ms or 0.0) > budget + _EPS:
            over = (step.latency_p50_ms or 0.0) - budget
            problems.append(f"p50 {fmt_ms(step.latency_p50_ms)} ms is {fmt_ms(over)} ms over the "
                            f"{fmt_ms(budget)} ms budget")
        else:
            meets_latency.append(step)
        if not step.candidate:
            problems.insert(0, f"not a candidate under the {constraints.objective} objective (batch sweep)")
        if problems:
            verdicts[step.name] = "; ".join(problems)
        else:
            passing.append(step)
    chosen = min(passing, key=lambda s: _score(s, constraints.objective)) if passing else None
    out = []
    for step in steps:
        if step.status == "failed" or not step.measured:
            out.append(dataclasses.replace(step, status="failed", reason=step.reason or "not measured",
                                           verdict=Verdict.FAILED.value))
        elif step.screened:
            out.append(dataclasses.replace(step, status="rejected", verdict=Verdict.SCREENED.value))
        elif chosen is not None and step.name == chosen.name:
            why = (f"highest throughput ({step.throughput_per_s or 0:,.1f}/s)" if constraints.objective == "throughput"
                   else f"lowest p50 latency ({fmt_ms(step.latency_p50_ms)} ms)")
            drop = _drop(step, ref, metric)
            out.append(dataclasses.replace(step, status="chosen", reason=f"{why} among the steps that meet the "
                                           f"constraints ({metric} drop {fmt_pct(drop)})", verdict=Verdict.CHOSEN.value))
        elif step.name in verdicts:
            code = Verdict.NOT_CANDIDATE if not step.candidate else Verdict.CONSTRAINT
            out.append(dataclasses.replace(step, status="rejected", reason=verdicts[step.name], verdict=code.value))
        else:
            assert chosen is not None
            out.append(dataclasses.replace(step, status="rejected", verdict=Verdict.LOST.value,
                                           reason=_why_lost(step, chosen, constraints.objective)))
    failure = None if chosen else _failure(steps, ref, constraints, meets_accuracy, meets_latency)
    return Selection(tuple(out), chosen.name if chosen else None, failure)


def _failure(steps: Sequence[Step], ref: Step, constraints: Constraints, meets_accuracy: list[Step],
             meets_latency: list[Step]) -> str:
    metric = constraints.metric
    measured = [s for s in steps if s.status != "failed" and s.measured]
    if not measured:
        return "no step could be measured (see each step's reason)"
    parts = []
    if not meets_accuracy:
        drops = [(d, s) for s in measured if (d := _drop(s, ref, metric)) is not None]
        if drops:
            drop, best = min(drops, key=lambda x: x[0])
            parts.append(f"{metric}: the smallest drop, {fmt_pct(drop)} ({best.name}), is "
                         f"{fmt_pct(drop - constraints.max_accuracy_drop)} over the "
                         f"{fmt_pct(constraints.max_accuracy_drop)} allowed")
        else:
            parts.append(f"{metric}: not measured on any step (give validation data with --data)")
    budget = constraints.latency_budget_ms
    if budget is not None:
        pool = meets_accuracy or measured
        fastest = min(pool, key=lambda s: s.latency_p50_ms or float("inf"))
        p50 = fastest.latency_p50_ms or 0.0
        if p50 > budget:
            which = "the fastest step that meets the accuracy constraint" if meets_accuracy else "the fastest step"
            parts.append(f"latency: {which}, {fastest.name}, has p50 {fmt_ms(p50)} ms, {fmt_ms(p50 - budget)} ms "
                         f"({(p50 - budget) / budget * 100:.1f} %) over the {fmt_ms(budget)} ms budget")
    if not parts:
        parts.append("only batch-sweep steps meet the constraints, and they are not candidates under the "
                     f"{constraints.objective} objective")
    return "; ".join(parts)
