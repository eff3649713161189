"""Runtime knobs as ladder steps: one declared option changed each, kept only when it wins significantly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import onnxsmith
from onnxsmith.data.sources import open_dataset
from onnxsmith.model import load_model
from onnxsmith.optimize.ladder import run_ladder
from onnxsmith.profiles import load_profile
from onnxsmith.registry import get_backend
from onnxsmith.targets import load_target

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits"
pytest.importorskip("onnxruntime")


def test_backends_propose_declared_knobs_for_the_objective() -> None:
    target = load_target("host")
    ort = get_backend("onnxruntime")
    knobs = ort.runtime_knobs(target, load_profile("latency"), {})
    declared = {o.name for o in ort.options}
    assert {k for v in knobs for k in v.options} <= declared
    assert all(len(v.options) == 1 and v.change for v in knobs)  # one change each
    assert any("execution_mode" in v.options for v in knobs)
    assert not ort.runtime_knobs(target, load_profile("latency"), {"execution_mode": "parallel",
                                                                   "graph_optimization_level": "extended",
                                                                   "threads": "1"})
    pytest.importorskip("openvino")
    ov = get_backend("openvino")
    latency = {k for v in ov.runtime_knobs(target, load_profile("latency"), {}) for k in v.options}
    throughput = {k for v in ov.runtime_knobs(target, load_profile("throughput"), {}) for k in v.options}
    assert "pinning" in latency and "num_streams" not in latency  # streams do not serve one request at a time
    assert {"num_streams", "performance_hint"} <= throughput
    assert latency | throughput <= {o.name for o in ov.options}


def test_knob_steps_change_one_option_of_the_best_step_and_win_only_significantly(tmp_path: Path) -> None:
    model = load_model(DIGITS / "digits_cnn.onnx")
    data = open_dataset(str(DIGITS / "validation.npz"), model.inputs, labels="label")
    profile = dataclasses.replace(load_profile("quick"), batch_sizes=(1,), ladder=("fp32",), knobs=True)
    card = run_ladder(model, load_target("host"), profile, data=data, calibration=None, max_accuracy_drop=0.01,
                      latency_budget_ms=None, output=tmp_path / "out", backends=["onnxruntime"])
    knobs = [s for s in card.steps if "+" in s.name]
    assert knobs, [s.name for s in card.steps]
    parent = knobs[0].parent
    assert all(s.parent == parent and s.change.startswith("runtime knob: ") for s in knobs)
    for step in knobs:
        assert step.measured and step.samples_checked == 360  # validated like any step
        if step.name == card.chosen:
            assert step.vs_parent is not None and step.vs_parent["significant"] and step.vs_parent["high"] < 1
        else:
            assert step.status == "rejected"
            if step.vs_parent is not None and not step.vs_parent["significant"]:
                assert step.verdict == "not_significant" and "the simpler parent is kept" in step.reason
    from onnxsmith.bundle import Bundle

    chosen = Bundle.open(tmp_path / "out" / "bundle")
    if card.chosen in {s.name for s in knobs}:  # the knob is in the published artifact
        key, value = card.chosen.split("+", 1)[1].split("=")
        field = {"graph_optimization_level": "load_graph_level"}.get(key, key)
        assert str(chosen.artifact.options[field]) == value


def test_onnxruntime_knobs_reach_the_session(tmp_path: Path) -> None:
    import onnxruntime as ort

    from onnxsmith.build.compile import compile_model

    model = load_model(DIGITS / "digits_cnn.onnx")
    bundle = compile_model(model, load_target("host"), profile=load_profile("quick"), output=tmp_path / "b",
                           backend="onnxruntime", precision="fp32",
                           options={"execution_mode": "parallel", "graph_optimization_level": "extended",
                                    "threads": "1"})
    with bundle.load_runner() as runner:
        opts = runner.session.get_session_options()
        assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        assert opts.intra_op_num_threads == 1
