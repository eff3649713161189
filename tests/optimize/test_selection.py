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


def _noisy(center: float, n: int = 8, spread: float = 0.02, seed: int = 0) -> tuple[float, ...]:
    """``n`` per-run medians around ``center`` with +-``spread`` relative jitter (deterministic)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return tuple(round(center * (1 + spread * float(v)), 5) for v in rng.uniform(-1, 1, n))


def _timed(step: Step, runs: tuple[float, ...], kind: str = "interleaved#1") -> Step:
    return dataclasses.replace(step, runs=runs, runs_metric="latency_p50_ms", runs_kind=kind)


def test_a_step_within_noise_of_its_parent_is_no_significant_change_and_the_parent_is_kept() -> None:
    """Synthetic interleaved timings: simplify's median is 0.7 % below the baseline's, well inside a +-2 % jitter.
    The point estimate alone would pick simplify; the interval includes 1, so the simpler parent is kept."""
    base = _timed(_step("baseline", 10.0, 0.95), _noisy(10.0, seed=1))
    simplify = _timed(_step("simplify", 9.93, 0.95), _noisy(9.93, seed=2))
    int8 = _timed(_step("int8", 4.0, 0.90, parent="simplify"), _noisy(4.0, seed=3))  # misses the accuracy budget
    from onnxsmith.optimize.selection import figure

    assert figure(simplify, "latency") < figure(base, "latency")  # the coin toss that used to decide
    result = select([base, simplify, int8], Constraints(max_accuracy_drop=0.01), "baseline")
    by = {s.name: s for s in result.steps}
    assert result.chosen == "baseline"
    assert by["simplify"].status == "rejected" and by["simplify"].verdict == "not_significant"
    assert by["simplify"].reason.startswith("no significant change against its parent baseline (p50 ratio ")
    assert "interleaved runs each" in by["simplify"].reason and "the simpler parent is kept" in by["simplify"].reason
    ci = by["simplify"].vs_parent
    assert ci is not None and ci["low"] < 1.0 < ci["high"] and ci["runs_a"] == ci["runs_b"] == 8 and ci["paired"]
    assert not ci["significant"]
    assert by["int8"].verdict == "constraint"  # constraints are judged before significance
    again = select([base, simplify, int8], Constraints(max_accuracy_drop=0.01), "baseline")
    assert again == result  # seeded: the same timings give the same decision


def test_a_significant_win_is_chosen_and_its_interval_is_in_the_reason() -> None:
    base = _timed(_step("baseline", 10.0, 0.95), _noisy(10.0, seed=1))
    simplify = _timed(_step("simplify", 9.93, 0.95), _noisy(9.93, seed=2))
    fp16 = _timed(_step("fp16", 8.0, 0.95, parent="simplify"), _noisy(8.0, seed=4))
    result = select([base, simplify, fp16], Constraints(max_accuracy_drop=0.01), "baseline")
    by = {s.name: s for s in result.steps}
    assert result.chosen == "fp16"  # a significant win over its parent, built on a step that was not one
    assert "against its parent simplify: ratio 0.8" in by["fp16"].reason
    assert by["fp16"].vs_parent["significant"] and by["fp16"].vs_parent["high"] < 1.0
    assert by["simplify"].verdict == "not_significant"
    improved, _ = compare(fp16, simplify)
    assert "latency" in improved
    assert compare(simplify, base) == ((), ())  # within noise by the interval, not by a fixed threshold


def test_a_significant_win_under_the_minimum_keeps_the_parent() -> None:
    """Tight runs: a knob 3 % faster than its parent, the whole interval below 1 but not below 0.95, is no win
    (the same two artifacts in fresh processes can differ by more); 10 % faster is kept."""
    from onnxsmith.optimize.selection import MIN_WIN

    base = _timed(_step("baseline", 10.0, 0.95), _noisy(10.0, seed=1, spread=0.002))
    knob = _timed(_step("baseline+pinning=False", 9.7, 0.95), _noisy(9.7, seed=2, spread=0.002))
    result = select([base, knob], Constraints(max_accuracy_drop=0.01), "baseline")
    by = {s.name: s for s in result.steps}
    ci = by[knob.name].vs_parent
    assert ci is not None and ci["significant"] and 1 - MIN_WIN < ci["high"] < 1.0  # significant, but small
    assert result.chosen == "baseline" and by[knob.name].verdict == "not_significant"
    assert by[knob.name].reason.startswith("no significant change against its parent baseline: a win under the 5 %")
    assert "the simpler parent is kept" in by[knob.name].reason
    bigger = _timed(_step("baseline+pinning=False", 9.0, 0.95), _noisy(9.0, seed=2, spread=0.002))
    assert select([base, bigger], Constraints(max_accuracy_drop=0.01), "baseline").chosen == bigger.name


def test_two_unrelated_steps_within_noise_are_reported_as_such() -> None:
    base = _timed(_step("baseline", 10.0, 0.95), _noisy(10.0, seed=1))
    a = _timed(_step("ort-int8", 5.0, 0.95), _noisy(5.0, seed=5))
    b = _timed(_step("ov-int8", 5.02, 0.95), _noisy(5.02, seed=6))
    result = select([base, a, b], Constraints(max_accuracy_drop=0.01), "baseline")
    chosen = {s.name: s for s in result.steps}[result.chosen or ""]
    other = "ov-int8" if chosen.name == "ort-int8" else "ort-int8"
    assert f"not significantly better than {other}" in chosen.reason and "within noise" in chosen.reason


def test_blocks_of_one_run_are_compared_unpaired() -> None:
    base = _timed(_step("baseline", 10.0, 0.95), _noisy(10.0, 20, seed=1), kind="blocks")
    slow = _timed(_step("simplify", 10.05, 0.95), _noisy(10.05, 20, seed=2), kind="blocks")
    result = select([base, slow], Constraints(max_accuracy_drop=0.01), "baseline")
    ci = {s.name: s for s in result.steps}["simplify"].vs_parent
    assert ci is not None and not ci["paired"] and ci["runs_a"] == 20


class _Contest:
    """Plays back interleaved runs per step (the ladder's head-to-head, without the backends)."""

    def __init__(self, runs: dict[str, tuple[float, ...]]) -> None:
        self.runs = runs
        self.asked: list[str] = []

    def interleave(self, steps: list[Step], rounds: int, seconds: float, mode: str = "latency"
                   ) -> tuple[dict[str, list[float]], list[str]]:
        self.asked = [s.name for s in steps]
        assert rounds == 6 and mode == "latency"
        return {s.name: list(self.runs[s.name][:rounds]) for s in steps}, []


def test_the_head_to_head_times_leaders_with_their_ancestors_and_decides_by_those_runs() -> None:
    from onnxsmith.optimize.contest import _contest

    # one profile run said int8 (parent fp16) was 7 % faster than fp16; interleaved runs say it is within noise
    steps = [dataclasses.replace(_step("baseline", 10.0, 0.95), bundle="b0"),
             dataclasses.replace(_step("fp16", 4.3, 0.95), bundle="b1"),
             dataclasses.replace(_step("int8", 4.0, 0.95, parent="fp16"), bundle="b2"),
             dataclasses.replace(_step("far", 9.0, 0.95), bundle="b3")]
    contest = _Contest({"baseline": _noisy(10.0, seed=1), "fp16": _noisy(4.2, seed=2),
                        "int8": _noisy(4.18, seed=3)})
    again = _contest(contest, steps, Constraints(max_accuracy_drop=0.01), rounds=6, seconds=0.5,  # type: ignore[arg-type]
                     tag=1, within=0.25)
    assert sorted(contest.asked) == ["baseline", "fp16", "int8"]  # leaders and their ancestors; 'far' is not close
    by = {s.name: s for s in again}
    assert by["int8"].runs_kind == "interleaved#1" and len(by["int8"].runs) == 6
    assert by["far"].runs == () and "head to head" in by["int8"].notes[-1]
    result = select(again, Constraints(max_accuracy_drop=0.01), "baseline")
    assert result.chosen == "fp16"
    assert {s.name: s for s in result.steps}["int8"].verdict == "not_significant"


def test_the_card_shows_the_interval_and_the_runs(tmp_path: object) -> None:
    from pathlib import Path

    from onnxsmith.optimize.card import write_card

    base = _timed(_step("baseline", 10.0, 0.95), _noisy(10.0, seed=1))
    simplify = _timed(_step("simplify", 9.93, 0.95), _noisy(9.93, seed=2))
    result = select([base, simplify], Constraints(max_accuracy_drop=0.01), "baseline")
    card = Card(model="m", model_fingerprint="f", target="host", profile="quick",
                constraints=Constraints(max_accuracy_drop=0.01), reference="baseline", steps=result.steps,
                chosen=result.chosen)
    files = write_card(card, Path(str(tmp_path)))
    md, html = files["md"].read_text(), files["html"].read_text()
    ci = {s.name: s for s in result.steps}["simplify"].vs_parent
    assert ci is not None
    cell = f"{ci['ratio']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] n=8 (ns)"
    assert "vs parent (95 % CI, runs)" in md and f"| {cell} |" in md and f"<td>{cell}</td>" in html
    assert "runs: 8 interleaved runs (head to head 1)" in md
    assert "(95 % bootstrap CI, 8 vs 8 runs, paired) — no significant change" in md
    assert Card.from_json(card.to_json()) == card


def test_by_default_every_step_that_meets_the_constraints_takes_part() -> None:
    from onnxsmith.optimize.contest import _contest

    steps = [dataclasses.replace(_step("baseline", 10.0, 0.95), bundle="b0"),
             dataclasses.replace(_step("fp16", 4.3, 0.95), bundle="b1"),
             dataclasses.replace(_step("far", 16.0, 0.95, parent="fp16"), bundle="b3"),
             dataclasses.replace(_step("bad", 1.0, 0.5), bundle="b4")]  # misses the accuracy budget
    contest = _Contest({"baseline": _noisy(10.0, seed=1), "fp16": _noisy(4.2, seed=2), "far": _noisy(9.0, seed=3)})
    _contest(contest, steps, Constraints(max_accuracy_drop=0.01), rounds=6, seconds=0.5, tag=1)  # type: ignore[arg-type]
    assert sorted(contest.asked) == ["baseline", "far", "fp16"]
