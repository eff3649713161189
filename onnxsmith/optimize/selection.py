"""Choose the best measured step under the constraints, and say why every other step lost.

Decisions survive noise: a step that meets the constraints but does not beat its parent *significantly* and by
at least :data:`MIN_WIN` (the confidence interval of the ratio of their per-run medians,
:func:`onnxsmith.optimize.record.runs_ratio`, lies wholly below ``1 - MIN_WIN`` for latency, above ``1 + MIN_WIN``
for throughput) is "no significant change": it is not chosen, so the simpler parent is kept in its place. Among the steps left, the best median of runs wins; when it does not beat the
runner-up significantly, its reason says so.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from onnxsmith.optimize.record import Constraints, Step, fmt_ms, fmt_pct, runs_ratio, Verdict
from onnxsmith.profiling.stats import RatioCI

_EPS = 1e-9
MIN_WIN = 0.05
"""The smallest win over its parent a step is kept for. The interleaved runs of one ladder measure each artifact in
one process; the same two artifacts loaded in fresh processes can differ by more than those runs' interval says:
on ResNet-50 (2-core Xeon, quiet) OpenVINO int8 with CPU pinning off beat int8 by 0.972 [0.935, 0.983] in the
ladder and lost by 1.068 [1.044, 1.186] in a head-to-head right after. Wins under 5 % keep the simpler parent."""


def objective_metric(objective: str) -> str:
    return "throughput_per_s" if objective == "throughput" else "latency_p50_ms"


def figure(step: Step, objective: str) -> float | None:
    """The objective's figure a step is ranked by: the median of its runs when it has runs of that metric, else
    the profile's p50 (or throughput)."""
    metric = objective_metric(objective)
    if step.runs and step.runs_metric == metric:
        return float(statistics.median(step.runs))
    return getattr(step, metric)


def _ratio(step: Step, other: Step, objective: str) -> Any:
    return runs_ratio(step, other, objective_metric(objective))


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
    value = figure(step, objective)
    if objective == "throughput":
        return (-(value or 0.0), size)
    return (float(value if value is not None else float("inf")), size)


def _why_lost(step: Step, best: Step, objective: str) -> str:
    ci = _ratio(step, best, objective)
    interval = f"; ratio {ci.text()}" if ci is not None else ""
    tie = " (within noise: the interval includes 1)" if ci is not None and not ci.significant else ""
    if objective == "throughput":
        return (f"lower throughput than {best.name}: {figure(step, objective) or 0:,.1f}/s vs "
                f"{figure(best, objective) or 0:,.1f}/s{interval}{tie}")
    a, b = figure(step, objective) or 0.0, figure(best, objective) or 0.0
    if abs(a - b) <= _EPS:
        return f"as fast as {best.name} (p50 {fmt_ms(a)} ms) but no smaller{interval}"
    slower = (a - b) / b * 100 if b else 0.0
    return f"slower than {best.name}: p50 {fmt_ms(a)} ms vs {fmt_ms(b)} ms (+{slower:.1f} %){interval}{tie}"


def _not_significant(step: Step, parent: Step, ci: Any, objective: str) -> str:
    what = "throughput" if objective == "throughput" else "p50"
    lower_is_better = objective != "throughput"
    if ci.significant and ci.verdict(lower_is_better) == "worse":
        return (f"{'lower throughput' if objective == 'throughput' else 'slower'} than its parent {parent.name} "
                f"({what} ratio {ci.text()}); the simpler parent is kept")
    if ci.significant:  # better, but by less than MIN_WIN
        return (f"{NO_CHANGE} against its parent {parent.name}: a win under the {MIN_WIN * 100:.0f} % a step must "
                f"win by ({what} ratio {ci.text()}); the simpler parent is kept")
    return (f"{NO_CHANGE} against its parent {parent.name} ({what} ratio {ci.text()}: the interval includes 1); "
            "the simpler parent is kept")


NO_CHANGE = "no significant change"


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
    objective = constraints.objective
    passing_names = {s.name for s in passing}
    vs_parent: dict[str, Any] = {}
    not_significant: dict[str, str] = {}
    for step in steps:
        parent = by_name.get(step.parent or "")
        if parent is None or step.status == "failed" or not step.measured or step.screened:
            continue
        ci = _ratio(step, parent, objective)
        if ci is None:
            continue
        vs_parent[step.name] = ci
        if step.name in passing_names and parent.name in passing_names:
            if ci.verdict(objective != "throughput", MIN_WIN) != "better":
                not_significant[step.name] = _not_significant(step, parent, ci, objective)
            elif step.replication and RatioCI.from_json(step.replication["ratio"]).verdict(
                    objective != "throughput", MIN_WIN) != "better":
                again = RatioCI.from_json(step.replication["ratio"])
                not_significant[step.name] = (
                    f"{NO_CHANGE} against its parent {parent.name}: its win ({ci.text()}) did not replicate when the "
                    f"two were timed again alone in fresh processes ({again.text()}); the simpler parent is kept")
    eligible = [s for s in passing if s.name not in not_significant]
    ranked = sorted(eligible, key=lambda s: _score(s, objective))
    chosen = ranked[0] if ranked else None
    out = []
    for step in steps:
        if step.status == "failed" or not step.measured:
            out.append(dataclasses.replace(step, status="failed", reason=step.reason or "not measured",
                                           verdict=Verdict.FAILED.value))
        elif step.screened:
            out.append(dataclasses.replace(step, status="rejected", verdict=Verdict.SCREENED.value))
        elif chosen is not None and step.name == chosen.name:
            why = (f"highest throughput ({figure(step, objective) or 0:,.1f}/s)" if objective == "throughput"
                   else f"lowest p50 latency ({fmt_ms(figure(step, objective))} ms)")
            if step.runs and step.runs_kind.startswith("interleaved"):
                why += f", median of {len(step.runs)} interleaved runs"
            drop = _drop(step, ref, metric)
            reason = f"{why} among the steps that meet the constraints ({metric} drop {fmt_pct(drop)})"
            if step.name in vs_parent:
                reason += f"; against its parent {step.parent}: ratio {vs_parent[step.name].text()}"
            runner_up = ranked[1] if len(ranked) > 1 else None
            ci = _ratio(step, runner_up, objective) if runner_up is not None else None
            if runner_up is not None and ci is not None and not ci.significant:
                reason += (f"; not significantly better than {runner_up.name} (ratio {ci.text()}): the two are "
                           "within noise")
            out.append(dataclasses.replace(step, status="chosen", reason=reason, verdict=Verdict.CHOSEN.value))
        elif step.name in not_significant and step.name not in verdicts:
            out.append(dataclasses.replace(step, status="rejected", reason=not_significant[step.name],
                                           verdict=Verdict.NOT_SIGNIFICANT.value))
        elif step.name in verdicts:
            code = Verdict.NOT_CANDIDATE if not step.candidate else Verdict.CONSTRAINT
            out.append(dataclasses.replace(step, status="rejected", reason=verdicts[step.name], verdict=code.value))
        else:
            assert chosen is not None
            out.append(dataclasses.replace(step, status="rejected", verdict=Verdict.LOST.value,
                                           reason=_why_lost(step, chosen, objective)))
    out = [dataclasses.replace(s, vs_parent=vs_parent[s.name].to_json()) if s.name in vs_parent else s for s in out]
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
