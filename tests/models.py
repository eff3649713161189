"""Small ONNX models for tests, built with onnx.helper (seeded, so every run builds the same bytes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def make_cnn(seed: int = 0, batch: int | str = 1, size: int = 16, classes: int = 10) -> onnx.ModelProto:
    """Conv(3->8,3x3) + Relu + MaxPool(2) + Conv(8->16) + Relu + GlobalAveragePool + Flatten + Gemm + Softmax."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3), _init("b1", rng.standard_normal(8) * 0.1),
        _init("w2", rng.standard_normal((16, 8, 3, 3)) * 0.2), _init("b2", rng.standard_normal(16) * 0.1),
        _init("wf", rng.standard_normal((classes, 16)) * 0.5), _init("bf", rng.standard_normal(classes) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxsmith-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_mlp(seed: int = 0, features: int = 32, hidden: int = 64, classes: int = 10) -> onnx.ModelProto:
    """MatMul + Add + Relu + MatMul + Add with a dynamic batch dim 'N'."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.standard_normal((features, hidden)) * 0.2), _init("b1", rng.standard_normal(hidden) * 0.1),
        _init("w2", rng.standard_normal((hidden, classes)) * 0.2), _init("b2", rng.standard_normal(classes) * 0.1),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["logits"], name="bias2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxsmith-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ort_reference(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime fp32 outputs of a loaded model: what every backend is compared with."""
    from onnxsmith.reference import reference_runner

    with reference_runner(model.path) as runner:
        return runner.run(feeds)
