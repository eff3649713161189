"""Choosing a step under the constraints, the reasons for the others, and the record's JSON round trip."""

from __future__ import annotations

import dataclasses

from onnxsmith.optimize.record import Card, Constraints, Step, compare, pareto_front
from onnxsmith.optimize.selection import select


def _step(name: str, p50: float, accuracy: float, **kw: object) -> Step:
    return Step(name, kw.pop("parent", "baseline") if name != "baseline" else None, "x", "onnxruntime",  # type: ignore[arg-type]
                str(kw.pop("precision", "fp32")), latency_p50_ms=p50, latency_p99_ms=p50 * 1.3,
                throughput_per_s=1000 / p50, size_bytes=int(kw.pop("size", 1000)), accuracy=accuracy,  # type: ignore[call-overload]
                agreement=1.0, cosine_min=1.0, samples_checked=360, **kw)  # type: ignore[arg-type]


STEPS = [_step("baseline", 10.0, 0.95), _step("simplify", 9.0, 0.95), _step("int8", 4.0, 0.93, size=250),
         _step("fp16", 6.0, 0.945)]


def test_fastest_step_within_the_accuracy_budget_wins() -> None:
    result = select(STEPS, Constraints(max_accuracy_drop=0.01), "baseline")
    assert result.chosen == "fp16" and result.failure is None
    by = {s.name: s for s in result.steps}
    assert by["fp16"].status == "chosen" and "lowest p50 latency (6.00 ms)" in by["fp16"].reason
    assert by["int8"].status == "rejected"
    assert "accuracy drop 2.00 % exceeds the 1.00 % allowed by 1.00 %" in by["int8"].reason
    assert by["baseline"].reason.startswith("slower than fp16: p50 10.00 ms vs 6.00 ms (+66.7 %)")


def test_a_wider_budget_lets_int8_win() -> None:
    result = select(STEPS, Constraints(max_accuracy_drop=0.02), "baseline")
    assert result.chosen == "int8"


def test_latency_budget_failure_says_which_constraint_and_by_how_much() -> None:
    result = select(STEPS, Constraints(max_accuracy_drop=0.01, latency_budget_ms=5.0), "baseline")
    assert result.chosen is None
    assert result.failure == ("latency: the fastest step that meets the accuracy constraint, fp16, has p50 6.00 ms, "
                              "1.00 ms (20.0 %) over the 5.00 ms budget")
    assert all(s.status == "rejected" for s in result.steps)


def test_when_no_step_meets_both_the_fastest_accurate_one_is_named() -> None:
    # the baseline meets only the accuracy constraint, int8 only the latency budget
    steps = [STEPS[0], _step("int8", 4.0, 0.90)]
    result = select(steps, Constraints(max_accuracy_drop=0.01, latency_budget_ms=5.0), "baseline")
    assert result.chosen is None
    assert result.failure == ("latency: the fastest step that meets the accuracy constraint, baseline, has p50 "
                              "10.00 ms, 5.00 ms (100.0 %) over the 5.00 ms budget")
    assert "accuracy drop 5.00 % exceeds" in {s.name: s for s in result.steps}["int8"].reason


def test_no_accuracy_anywhere_is_explained() -> None:
    steps = [_step("baseline", 10.0, 0.95), _step("int8", 4.0, 0.80)]
    result = select(steps, Constraints(max_accuracy_drop=0.01), "baseline")
    assert result.chosen == "baseline"
    steps = [dataclasses.replace(s, accuracy=None) for s in steps]
    result = select(steps, Constraints(max_accuracy_drop=0.01), "baseline")
    assert result.chosen is None
    assert result.failure == "accuracy: not measured on any step (give validation data with --data)"


def test_failed_steps_stay_failed_and_batch_sweep_steps_are_not_candidates_for_latency() -> None:
    failed = Step("openvino-int8", "baseline", "x", "openvino", "int8", status="failed", reason="compile failed: boom")
    sweep = dataclasses.replace(_step("simplify@b8", 1.0, 0.95), candidate=False)
    result = select([*STEPS, failed, sweep], Constraints(max_accuracy_drop=0.01), "baseline")
    by = {s.name: s for s in result.steps}
    assert by["openvino-int8"].status == "failed" and by["openvino-int8"].reason == "compile failed: boom"
    assert by["simplify@b8"].status == "rejected" and "not a candidate" in by["simplify@b8"].reason
    assert result.chosen == "fp16"
    throughput = select([*STEPS, dataclasses.replace(sweep, candidate=True, throughput_per_s=8000.0)],
                        Constraints(max_accuracy_drop=0.01, objective="throughput"), "baseline")
    assert throughput.chosen == "simplify@b8"


def test_compare_and_pareto_front() -> None:
    base, int8 = STEPS[0], STEPS[2]
    improved, worse = compare(int8, base)
    assert improved == ("latency", "size", "throughput")
    assert worse == ("accuracy",)
    assert compare(dataclasses.replace(base, latency_p50_ms=10.1), base) == ((), ())  # within noise
    assert set(pareto_front(STEPS, "accuracy")) == {"int8", "fp16", "simplify"}


def test_card_json_round_trip(tmp_path: object) -> None:
    result = select(STEPS, Constraints(max_accuracy_drop=0.01), "baseline")
    card = Card(model="m", model_fingerprint="f", target="host", profile="quick",
                constraints=Constraints(max_accuracy_drop=0.01), reference="baseline", steps=result.steps,
                chosen=result.chosen, batching={"sweep": {"points": []}}, notes=("n",))
    assert Card.from_json(card.to_json()) == card


class _Rerun:
    """Plays back the p50 of further profile runs per step (the ladder's re-profiling, without the backends)."""

    def __init__(self, runs: dict[str, list[float]]) -> None:
        self.runs, self.order = runs, []

    def remeasure(self, step: Step) -> tuple[Step, float]:
        self.order.append(step.name)
        p50 = self.runs[step.name].pop(0)
        return (dataclasses.replace(step, latency_p50_ms=p50) if p50 < (step.latency_p50_ms or 0) else step), p50


def test_close_leaders_are_profiled_head_to_head_and_the_faster_in_the_runoff_wins() -> None:
    from onnxsmith.optimize.ladder import _runoff

    # int8 looked 7 % faster than fp16 in one run taken at a quiet moment; three alternating runs each say otherwise
    steps = [_step("baseline", 10.0, 0.95), _step("fp16", 4.3, 0.95), _step("int8", 4.0, 0.95)]
    rerun = _Rerun({"int8": [4.4, 4.5, 4.4], "fp16": [3.9, 3.95, 4.0]})
    again = _runoff(rerun, steps, Constraints(max_accuracy_drop=0.01))  # type: ignore[arg-type]
    assert rerun.order == ["fp16", "int8", "int8", "fp16", "fp16", "int8"]  # alternating, the baseline left out
    by = {s.name: s for s in again}
    assert by["fp16"].latency_p50_ms == 3.9 and by["int8"].latency_p50_ms == 4.0
    assert by["baseline"] is steps[0]
    assert "profiled 4 times, head to head with int8" in by["fp16"].notes[-1]
    assert select(again, Constraints(max_accuracy_drop=0.01), "baseline").chosen == "fp16"
