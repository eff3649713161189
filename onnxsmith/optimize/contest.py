"""The head-to-head: the leading steps and their ancestors timed in interleaved runs, which every later comparison
of the ladder uses."""

from __future__ import annotations

import dataclasses

from onnxsmith.optimize.record import Constraints, Step, Verdict
from onnxsmith.optimize.selection import select
from onnxsmith.optimize.steps import StepRunner


def _contest(runner: StepRunner, steps: list[Step], constraints: Constraints, rounds: int, seconds: float,
             tag: int, within: float | None = None, most: int = 6, cap: int = 8) -> list[Step]:
    """Time the leading candidates and their ancestors head to head in interleaved runs; every later comparison
    (the selection's "significantly better than its parent", improved/worse) uses those runs.

    Leaders: the best ``most`` steps that meet the constraints (only those within ``within`` of the best, when
    given), plus the ancestors of each that meet them too, so a step and the parent it must beat are always timed
    side by side. No fixed window by default: on a shared machine the load drifts by tens of per cent between one
    step's profile and the next, so single profiles cannot say which steps are close.
    Each is loaded once in its own process; then ``rounds`` runs of ``seconds`` each, in alternating order, so
    drift and load from other processes hit every candidate alike and run i of one pairs with run i of another."""
    from onnxsmith.optimize.selection import figure

    if rounds < 2:
        return steps
    selection = select(steps, constraints, "baseline")
    if not selection.chosen:
        return steps
    by = {s.name: s for s in selection.steps}
    ok = {s.name for s in selection.steps if s.verdict in (Verdict.CHOSEN.value, Verdict.LOST.value,
                                                               Verdict.NOT_SIGNIFICANT.value) and s.bundle}
    objective = constraints.objective
    best = figure(by[selection.chosen], objective) or 0.0

    def close(name: str) -> bool:
        if within is None:
            return True
        value = figure(by[name], objective) or 0.0
        return value <= best * (1 + within) if objective == "latency" else value >= best / (1 + within)

    leaders = sorted((n for n in ok if close(n)), key=lambda n: (figure(by[n], objective) or 0.0)
                     * (1 if objective == "latency" else -1))[:most]
    chosen: list[str] = []
    for name in leaders:
        while name and name in ok and name not in chosen and len(chosen) < cap:
            chosen.append(name)
            name = by[name].parent or ""
    if len(chosen) < 2:
        return steps
    mode = "throughput" if objective == "throughput" else "latency"
    runs, notes = runner.interleave([by[n] for n in chosen], rounds, seconds, mode)
    metric = "throughput_per_s" if mode == "throughput" else "latency_p50_ms"
    out = []
    for step in steps:
        if step.name in runs:
            others = ", ".join(n for n in runs if n != step.name)
            unit = "/s" if mode == "throughput" else " ms"
            step = dataclasses.replace(step, runs=tuple(runs[step.name]), runs_metric=metric,
                                       runs_kind=f"interleaved#{tag}", notes=(*step.notes, (
                                           f"timed head to head with {others} in {rounds} interleaved runs of "
                                           f"{seconds:g} s (alternating order; {mode} per run: "
                                           f"{', '.join(f'{v:.4g}' for v in runs[step.name])}{unit}); "
                                           "comparisons use these runs")))
        out.append(step)
    if notes:
        out = [dataclasses.replace(s, notes=(*s.notes, *[n.removeprefix(s.name + " ") for n in notes
                                                         if n.startswith(s.name + " ")])) for s in out]
    return out


def _replicate(runner: StepRunner, steps: list[Step], constraints: Constraints, rounds: int, seconds: float,
               tries: int = 3) -> list[Step]:
    """The pick must win again: it and its parent are timed a second time, the two alone in fresh processes; when
    the win does not replicate (:data:`~onnxsmith.optimize.selection.MIN_WIN` again), the selection keeps the
    parent, which must then replicate its own win in turn (at most ``tries`` pairs).

    Measured need: in quiet ResNet-50 ladders the OpenVINO int8 pick with CPU pinning off beat int8 by 0.844
    [0.757, 0.883] in the ladder's head-to-head of eight processes, and lost by 1.137 [1.085, 1.232] when the same
    two bundles were timed again: a runtime setting's effect depends on the processes around it."""
    from onnxsmith.profiling.stats import compare_runs

    if rounds < 2:
        return steps
    mode = "throughput" if constraints.objective == "throughput" else "latency"
    for _ in range(tries):
        selection = select(steps, constraints, "baseline")
        by = {s.name: s for s in selection.steps}
        pick = by.get(selection.chosen or "")
        parent = by.get(pick.parent or "") if pick is not None else None
        if (pick is None or parent is None or pick.replication is not None or not pick.bundle or not parent.bundle
                or parent.verdict not in (Verdict.LOST.value, Verdict.NOT_SIGNIFICANT.value)):
            break
        runs, _ = runner.interleave([pick, parent], rounds, seconds, mode)
        if pick.name not in runs or parent.name not in runs:
            break
        ci = compare_runs(runs[pick.name], runs[parent.name], paired=True)
        record = {"ratio": ci.to_json(), "runs": runs[pick.name], "parent_runs": runs[parent.name]}
        note = (f"timed again against its parent {parent.name}, the two alone in fresh processes ({rounds} "
                f"interleaved runs of {seconds:g} s): ratio {ci.text()}")
        steps = [dataclasses.replace(s, replication=record, notes=(*s.notes, note)) if s.name == pick.name else s
                 for s in steps]
    return steps
