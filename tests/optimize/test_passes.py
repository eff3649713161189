"""ONNX passes: each runs on a small model, keeps the outputs within its precision, and records what it changed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsmith.data.dataset import Dataset
from onnxsmith.errors import DataError, UserInputError
from onnxsmith.optimize.passes import PASSES, get_pass, ort_session
from onnxsmith.optimize.prune import is_two_four
from tests.models import cosine, make_cnn, make_mlp

ort = pytest.importorskip("onnxruntime")


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort_session(model, optimize=True).run(None, feeds)


def _cnn_data(n: int = 32, seed: int = 0) -> Dataset:
    return Dataset({"input": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)})


def _conv_bn_model() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Identity -> Relu, plus a constant subgraph (Shape-free Add of two constants)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w", rng.standard_normal((4, 3, 3, 3))), ("scale", rng.random(4) + 0.5), ("bias", rng.standard_normal(4)),
        ("mean", rng.standard_normal(4) * 0.1), ("var", rng.random(4) + 0.5), ("c1", np.ones((1, 4, 1, 1))),
        ("c2", np.full((1, 4, 1, 1), 2.0))]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Identity", ["bn"], ["i"], name="identity"),
             helper.make_node("Add", ["c1", "c2"], ["k"], name="const_add"),
             helper.make_node("Mul", ["i", "k"], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_catalogue_and_config_errors() -> None:
    assert set(PASSES) == {"simplify", "fp16", "int8_qdq", "prune"}
    with pytest.raises(UserInputError, match="unknown pass 'sparsify'"):
        get_pass("sparsify")
    with pytest.raises(UserInputError, match="invalid config for pass 'prune'.*its settings are method"):
        get_pass("prune", amount=0.5)


@pytest.mark.parametrize("tool", ["auto", "onnxruntime"])
def test_simplify_folds_and_fuses_without_changing_outputs(tool: str) -> None:
    model = _conv_bn_model()
    original = model.SerializeToString()
    result = get_pass("simplify", tool=tool).run(model)
    record = result.record
    assert model.SerializeToString() == original  # the input is never modified
    assert record.nodes_after < record.nodes_before
    assert record.op_changes.get("BatchNormalization", 0) == -1 and record.op_changes.get("Identity", 0) == -1
    assert record.tool.startswith("onnxslim" if tool == "auto" else "onnxruntime")
    assert record.tool.split(" ")[0] in record.summary
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_fp16_keeps_io_fp32_and_stays_close() -> None:
    model = make_cnn()
    result = get_pass("fp16").run(model, calibration=_cnn_data())
    types = {v.name: v.type.tensor_type.elem_type for v in [*result.model.graph.input, *result.model.graph.output]}
    assert types == {"input": TensorProto.FLOAT, "probs": TensorProto.FLOAT}
    halves = [t for t in result.model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert len(halves) == 6
    assert result.record.size_after < 0.75 * result.record.size_before
    assert result.record.details["ops_kept_fp32"] == []
    assert result.record.details["overflow_guard"]["samples"] == 32
    x = _cnn_data(4, seed=5).arrays["input"][:1]
    assert cosine(_run(result.model, {"input": x})[0], _run(model, {"input": x})[0]) > 0.9999


def _overflowing_model() -> onnx.ModelProto:
    """MatMul -> MatMul with large weights (its output overflows fp16) -> MatMul with small weights (back to normal
    range) -> Add and Sub of a weight beyond the fp16 range."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((8, 8)) * 3000).astype(np.float32), "up"),
             numpy_helper.from_array((rng.standard_normal((8, 8)) / 3000).astype(np.float32), "down"),
             numpy_helper.from_array(np.full(8, 1e5, np.float32), "big")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
             helper.make_node("MatMul", ["mm", "up"], ["scaled"], name="scale_up"),
             helper.make_node("MatMul", ["scaled", "down"], ["back"], name="scale_down"),
             helper.make_node("Add", ["back", "big"], ["shifted"], name="shift"),
             helper.make_node("Sub", ["shifted", "big"], ["y"], name="unshift")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the unguarded model overflows, as it should
def test_fp16_overflow_guard_keeps_overflowing_ops_fp32() -> None:
    model = _overflowing_model()
    data = Dataset({"x": (np.random.default_rng(2).standard_normal((16, 8)) * 3).astype(np.float32)})
    guarded = get_pass("fp16").run(model, calibration=data)
    kept = {k["node"]: k["why"] for k in guarded.record.details["ops_kept_fp32"]}
    assert set(kept) == {"scale_up", "scale_down", "shift", "unshift"}  # the first MatMul alone runs in fp16
    assert "output 'scaled' reaches" in kept["scale_up"] and "input 'scaled' reaches" in kept["scale_down"]
    assert "weight 'big' has values up to 1e+05" in kept["shift"]
    assert "4 by the overflow guard" in guarded.record.summary
    assert guarded.record.details["fp16_round_trips_removed"] == 4  # between the kept nodes and at the output
    unguarded = get_pass("fp16", threshold=float("inf")).run(model, calibration=data)
    assert unguarded.record.details["ops_kept_fp32"] == []
    # ONNX Runtime's CPU provider runs these ops in fp32 internally and would hide the overflow; the ONNX
    # reference evaluator computes in the declared types, as fp16 hardware does.
    from onnx.reference import ReferenceEvaluator

    x = data.arrays["x"][:1]
    want = _run(model, {"x": x})[0]
    assert not np.isfinite(ReferenceEvaluator(unguarded.model).run(None, {"x": x})[0]).all()  # what the guard prevents
    got = ReferenceEvaluator(guarded.model).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and np.isfinite(got).all() and cosine(got, want) > 0.999
    assert cosine(_run(guarded.model, {"x": x})[0], want) > 0.999


def test_fp16_without_calibration_says_ranges_come_from_generated_inputs() -> None:
    result = get_pass("fp16").run(make_mlp())
    assert any("generated inputs" in note for note in result.record.notes)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_qdq_quantizes_with_each_calibration_method(method: str) -> None:
    model = make_cnn()
    data = _cnn_data(48)
    result = get_pass("int8_qdq", calibrate_method=method).run(model, calibration=data)
    details = result.record.details
    assert details["quantized_ops"].get("Conv") == 2 and details["quantized_ops"].get("Gemm") == 1
    assert details["quantize_linear"] > 0 and details["calibration"]["samples"] == 48
    assert details["calibration"]["method"] == method
    assert result.record.op_changes["DequantizeLinear"] > 0
    weights = [t for t in result.model.graph.initializer if t.data_type == TensorProto.INT8]
    assert any(len(t.dims) == 4 for t in weights)  # conv weights stored as int8
    scales = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert any(v.ndim == 1 and v.size == 16 for k, v in scales.items() if "scale" in k)  # per-channel (16 outputs)
    assert result.record.size_after < result.record.size_before
    x = _cnn_data(8, seed=9).arrays["input"]
    for i in range(4):
        got, want = _run(result.model, {"input": x[i:i + 1]})[0], _run(model, {"input": x[i:i + 1]})[0]
        assert cosine(got, want) > 0.98


def test_int8_needs_calibration() -> None:
    with pytest.raises(DataError, match="needs calibration data"):
        get_pass("int8_qdq").run(make_cnn())
    with pytest.raises(UserInputError, match="unknown calibration method"):
        get_pass("int8_qdq", calibrate_method="kl").run(make_cnn(), calibration=_cnn_data(4))


def test_magnitude_pruning_reaches_the_target_per_layer() -> None:
    model = make_mlp()
    result = get_pass("prune", method="magnitude", sparsity=0.6).run(model)
    details = result.record.details
    assert [layer["weight"] for layer in details["layers"]] == ["w1", "w2"]
    for layer in details["layers"]:
        assert layer["sparsity"] == pytest.approx(0.6, abs=0.002)
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = inits["w1"] != 0
    assert np.abs(original["w1"][kept]).min() >= np.abs(original["w1"][~kept]).max()  # the smallest went
    np.testing.assert_array_equal(inits["b1"], original["b1"])  # biases untouched
    assert result.record.size_after == result.record.size_before  # dense storage
    assert details["compressed_size_after"] < details["compressed_size_before"]
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    assert _run(result.model, {"x": x})[0].shape == (2, 10)


def test_two_four_pruning_pattern_along_the_reduction_axis() -> None:
    cnn = get_pass("prune", method="2:4").run(make_cnn())
    inits = {t.name: numpy_helper.to_array(t) for t in cnn.model.graph.initializer}
    assert is_two_four(inits["w2"], axis=1)  # Conv: groups of 4 input channels
    assert not is_two_four(numpy_helper.to_array(make_cnn().graph.initializer[2]), axis=1)
    skipped = {s["weight"]: s["why"] for s in cnn.record.details["skipped"]}
    assert "fewer than min_params=256" in skipped["w1"] and "fewer than min_params" in skipped["wf"]
    mlp = get_pass("prune", method="2:4").run(make_mlp())
    weights = {t.name: numpy_helper.to_array(t) for t in mlp.model.graph.initializer}
    assert is_two_four(weights["w1"], axis=0) and is_two_four(weights["w2"], axis=0)  # MatMul B: K x N
    assert mlp.record.details["sparsity_pruned_weights"] == pytest.approx(0.5)


def test_two_four_on_gemm_with_trans_b_and_global_magnitude() -> None:
    model = make_cnn(classes=32)  # Gemm weight 32 x 16 (transB=1): 512 params, reduction axis 1
    result = get_pass("prune", method="2:4").run(model)
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert is_two_four(weights["wf"], axis=1)
    glob = get_pass("prune", scope="global", sparsity=0.5, min_params=0).run(model)
    layers = glob.record.details["layers"]
    total = sum(np.prod(layer["shape"]) for layer in layers)
    zeros = sum(layer["sparsity"] * np.prod(layer["shape"]) for layer in layers)
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    assert len({round(layer["sparsity"], 3) for layer in layers}) > 1  # one threshold: layers differ
