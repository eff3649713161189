"""A real ladder run whose decision is fed synthetic interleaved timings: within noise, the parent is kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import onnxsmith
from onnxsmith.data.sources import open_dataset
from onnxsmith.model import load_model
from onnxsmith.optimize import ladder
from onnxsmith.optimize.record import Card
from onnxsmith.optimize.steps import StepRunner
from onnxsmith.profiles import load_profile
from onnxsmith.targets import load_target

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits"
pytest.importorskip("onnxruntime")

# simplify is 0.7 % "faster" than the baseline: the kind of win a single run used to pick a step for
CENTRES = {"baseline": 10.0, "simplify": 9.93}


JITTER = {"baseline": (-0.02, 0.015, -0.01, 0.02, 0.0, -0.015, 0.01, 0.0),
          "simplify": (0.01, -0.02, 0.0, 0.015, -0.01, 0.02, 0.0, -0.015)}
"""+-2 % per run, median 0 on both sides: the medians' ratio is exactly 0.993."""


def _runs(centres: dict[str, float], name: str, n: int) -> list[float]:
    return [round(centres[name] * (1 + j), 5) for j in JITTER[name][:n]]


def _ladder_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, centres_per_call: list[dict[str, float]]
                 ) -> tuple[Card, list[list[str]]]:
    """A real ladder (digits, ONNX Runtime, fp32) whose head-to-heads return ``centres_per_call[i]`` (+-2 %
    jitter) on their i-th call."""
    calls: list[list[str]] = []

    def synthetic(self: StepRunner, steps: list, rounds: int, seconds: float, mode: str = "latency"
                  ) -> tuple[dict[str, list[float]], list[str]]:
        centres = centres_per_call[min(len(calls), len(centres_per_call) - 1)]
        calls.append(sorted(s.name for s in steps))
        return {s.name: _runs(centres, s.name, rounds) for s in steps}, []

    monkeypatch.setattr(StepRunner, "interleave", synthetic)
    model = load_model(DIGITS / "digits_cnn.onnx")
    data = open_dataset(str(DIGITS / "validation.npz"), model.inputs, labels="label")
    quick = load_profile("quick")
    profile = dataclasses.replace(quick, batch_sizes=(1,), ladder=("fp32",), knobs=False,
                                  measure=dataclasses.replace(quick.measure, rounds=8))
    card = ladder.run_ladder(model, load_target("host"), profile, data=data, calibration=None,
                             max_accuracy_drop=0.01, latency_budget_ms=None, output=tmp_path / "out",
                             backends=["onnxruntime"])
    return card, calls



def test_a_ladder_run_within_noise_keeps_the_parent_and_says_no_significant_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card, asked = _ladder_with(tmp_path, monkeypatch, [CENTRES])
    assert sorted(asked[0]) == ["baseline", "simplify"]
    by = {s.name: s for s in card.steps}
    assert card.chosen == "baseline"
    simplify = by["simplify"]
    assert simplify.verdict == "not_significant" and simplify.status == "rejected"
    assert simplify.reason.startswith("no significant change against its parent baseline (p50 ratio 0.993 [")
    assert "8 interleaved runs each" in simplify.reason and "the simpler parent is kept" in simplify.reason
    assert simplify.runs_kind == "interleaved#1" and len(simplify.runs) == 8
    md = (tmp_path / "out" / "card.md").read_text()
    assert "no significant change" in md and "Chosen: baseline" in md
    from onnxsmith.bundle import Bundle

    notes = Bundle.open(tmp_path / "out" / "bundle").manifest["notes"]
    assert any(n.startswith("optimize step 'baseline'") for n in notes)  # the parent is what was published


def test_a_win_that_does_not_replicate_in_fresh_processes_keeps_the_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the ladder's head-to-head: simplify 15 % faster; timed again, the two alone: the same speed
    card, calls = _ladder_with(tmp_path, monkeypatch, [{"baseline": 10.0, "simplify": 8.5},
                                                       {"baseline": 10.0, "simplify": 10.05}])
    assert calls == [["baseline", "simplify"], ["baseline", "simplify"]]  # the contest, then the pair again
    by = {s.name: s for s in card.steps}
    assert card.chosen == "baseline"
    simplify = by["simplify"]
    assert simplify.verdict == "not_significant" and "did not replicate" in simplify.reason
    assert simplify.replication["ratio"]["ratio"] == pytest.approx(1.005, abs=1e-3)
    assert "timed again against its parent baseline" in " ".join(simplify.notes)


def test_a_win_that_replicates_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card, calls = _ladder_with(tmp_path, monkeypatch, [{"baseline": 10.0, "simplify": 8.5},
                                                       {"baseline": 10.0, "simplify": 8.7}])
    assert len(calls) == 2 and card.chosen == "simplify"
    simplify = {s.name: s for s in card.steps}["simplify"]
    assert simplify.replication["ratio"]["high"] < 0.95 and "against its parent baseline" in simplify.reason
