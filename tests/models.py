"""Small ONNX models for tests, built with onnx.helper (seeded, so every run builds the same bytes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """``graph`` as a checked model of opset 17 and IR version 8, as every model here is."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxsmith-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


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
    return _model(graph)


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
    return _model(graph)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ort_reference(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime fp32 outputs of a loaded model: what every backend is compared with."""
    from onnxsmith.check.reference import reference_runner

    with reference_runner(model.path) as runner:
        return runner.run(feeds)


def _prototypes(seed: int, size: int, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(seed + 100).standard_normal((classes, 8, size, size)).astype(np.float32)


def make_outlier_cnn(seed: int = 0, channels: int = 32, size: int = 16, classes: int = 10, depth: int = 8,
                     outliers: tuple[int, ...] = (3, 6), scale: float = 400.0) -> onnx.ModelProto:
    """A CNN that per-tensor int8 breaks: ``depth`` Conv+Relu layers (``conv1``...), then Flatten + Gemm (``fc``).

    Each layer ``conv{k}`` with k in ``outliers`` reads activations with a few channels ``scale`` times larger than
    the rest: the layer before it writes them (its weight rows and biases for those channels are multiplied by
    ``scale``) and the layer itself divides them back (its weight columns for them divided by ``scale``). The fp32
    function is an ordinary CNN's (Relu is positively homogeneous), but one per-tensor activation scale must span
    both the outliers and the small channels that carry the signal, so those tensors quantize to a few levels:
    the outlier layers are ``conv{k-1}`` and ``conv{k}`` for each k (ONNX Runtime's QDQ quantizes a tensor when its
    producer or a consumer is quantized). ``fc`` is a nearest-class-mean classifier over the features of
    :func:`_prototypes`, so the samples of :func:`outlier_data` have wide margins and plain int8 is accurate
    without the outliers.
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    c, inits, nodes = channels, [], []
    loud = rng.choice(c, size=max(1, c // 16), replace=False)
    source = "input"
    for k in range(1, depth + 1):
        cin = 8 if k == 1 else c
        w = rng.standard_normal((c, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        b = rng.standard_normal(c) * 0.05
        if k + 1 in outliers:
            w[loud] *= scale
            b[loud] *= scale
        if k in outliers:
            w[:, loud] /= scale
        inits += [_init(f"w{k}", w), _init(f"b{k}", b)]
        nodes += [helper.make_node("Conv", [source, f"w{k}", f"b{k}"], [f"c{k}"], pads=[1, 1, 1, 1], name=f"conv{k}"),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
        source = f"r{k}"
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", [source, "shape"], ["flat"], name="flatten"))
    x_info = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, size, size])
    features = helper.make_model(helper.make_graph(nodes, "features", [x_info], [
        helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", c * size * size])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    features.ir_version = 8
    session = ort.InferenceSession(features.SerializeToString(), providers=["CPUExecutionProvider"])
    centres = session.run(None, {"input": _prototypes(seed, size, classes)})[0].astype(np.float64)
    centres -= centres.mean(axis=0)
    wf = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    inits += [_init("wf", wf), _init("bf", np.zeros(classes))]
    nodes.append(helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(nodes, "outlier_cnn", [x_info],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return _model(graph)


def outlier_data(model: onnx.ModelProto, samples: int = 300, seed: int = 0, noise: float = 0.5,
                 data_seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs for :func:`make_outlier_cnn` (built with ``seed``): noisy copies of its class prototypes, with labels
    that are the fp32 model's own top-1 (its accuracy is 100 %)."""
    import onnxruntime as ort

    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    protos = _prototypes(seed, size)
    rng = np.random.default_rng(data_seed)
    x = (protos[rng.integers(0, len(protos), samples)]
         + noise * rng.standard_normal((samples, *protos.shape[1:]))).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    return {"input": x, "label": logits.argmax(axis=1).astype(np.int64)}
