"""Precision handling that needs no TensorRT: ONNX rewrites for strongly typed builds, and reading precisions back.

TensorRT 10 picks reduced precision per layer from builder flags (``BuilderFlag.FP16/BF16/INT8``, "weak typing").
TensorRT 11 removed those flags: a network is always strongly typed, so its precision comes from the ONNX file's
types. For that mode we rewrite the ONNX first:

* fp16: ONNX Runtime's float16 converter (inputs/outputs stay fp32, ops it blocks stay fp32 behind Casts). NVIDIA
  recommends ModelOpt AutoCast for this; it is not a dependency here, the ONNX Runtime converter does the same job.
* bf16: the same fp16 graph with every fp16 tensor, cast and constant retyped to bf16, then checked with the ONNX
  checker's full type check.
* int8: explicit quantization. A model that already holds QuantizeLinear/DequantizeLinear nodes is used as given;
  otherwise ONNX Runtime's static quantizer writes Q/DQ pairs in TensorRT's scheme (symmetric int8, per-channel
  weights, float bias, only on Conv/ConvTranspose/MatMul/Gemm inputs) calibrated on ``request.calibration``.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, UnsupportedError, first_line

if TYPE_CHECKING:
    import onnx
    from onnxsmith.compilers.tensorrt.calibrator import CalibrationFeeder

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_FLOAT16, _BFLOAT16 = 10, 16


def iter_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes the model holds (explicit quantization)."""
    counts = Counter(n.op_type for n in iter_nodes(model.graph) if n.op_type in QDQ_OPS and n.domain in ("", "ai.onnx"))
    return {op: counts.get(op, 0) for op in QDQ_OPS}


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put ``graph``'s nodes in topological order (the float16 converter appends its input casts at the end)."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    done: set[int] = set()
    started: set[int] = set()
    ordered: list[int] = []

    def visit(index: int) -> None:
        stack = [(index, False)]
        while stack:
            current, expanded = stack.pop()
            if expanded:
                if current not in done:
                    done.add(current)
                    ordered.append(current)
                continue
            if current in started:  # finished, or on the current path (a cycle): keep the given order
                continue
            started.add(current)
            stack.append((current, True))
            for name in reversed(nodes[current].input):
                before = producer.get(name)
                if before is not None and before not in done and before != current:
                    stack.append((before, False))

    for index in range(len(nodes)):
        visit(index)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in ordered)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model computing in fp16 with fp32 inputs and outputs (ONNX Runtime's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.ModelProto()
    source.CopyFrom(model)  # the converter edits the graph it is given
    try:
        converted = convert_float_to_float16(source, keep_io_types=True)
    except Exception as exc:
        raise BackendError("converting the model to fp16 for TensorRT's strong typing failed", first_line(exc),
                           "convert it yourself (e.g. ModelOpt AutoCast) and compile the converted model") from exc
    sort_nodes(converted.graph)
    return converted


def _retype_tensor(tensor: onnx.TensorProto) -> None:
    import ml_dtypes
    import numpy as np
    from onnx import numpy_helper

    if tensor.data_type != _FLOAT16:
        return
    values = numpy_helper.to_array(tensor).astype(np.float32).astype(ml_dtypes.bfloat16)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))


def _retype_graph(graph: onnx.GraphProto) -> None:
    import onnx

    for tensor in graph.initializer:
        _retype_tensor(tensor)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == _FLOAT16:
            value.type.tensor_type.elem_type = _BFLOAT16
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT16:
                attr.i = _BFLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR:
                _retype_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _retype_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _retype_graph(sub)


def to_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model computing in bf16 with fp32 inputs and outputs: the fp16 conversion, retyped and type-checked."""
    import onnx

    converted = to_float16(model)
    _retype_graph(converted.graph)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UnsupportedError("the model cannot be typed bf16 for TensorRT's strong typing", first_line(exc),
                               "an op's schema at this opset lacks bfloat16: re-export at a newer opset, or use fp16")\
            from exc
    return converted


def quantize_qdq(model_path: Path, output: Path, feeder: CalibrationFeeder, method: str = "entropy",
                 keep_fp32: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write ``output``: ``model_path`` with Q/DQ nodes in TensorRT's int8 scheme, calibrated on ``feeder``.

    The nodes in ``keep_fp32`` get no Q/DQ on their inputs (``nodes_to_exclude``): a strongly typed build then
    runs them in the ONNX's own type, fp32, which is how TensorRT keeps a layer wide without builder flags."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxsmith.compilers.tensorrt.calibrator import ort_data_reader

    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # the entropy calibrator prints its progress
            quantize_static(
                str(model_path), str(output), ort_data_reader(feeder), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, reduce_range=False,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
                nodes_to_exclude=list(keep_fp32) or None,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            )
    except Exception as exc:
        raise BackendError("writing Q/DQ nodes with ONNX Runtime's quantizer failed", first_line(exc),
                           "quantize the model yourself (e.g. NVIDIA ModelOpt) and compile the Q/DQ model") from exc
    counts = count_qdq(onnx.load(str(output), load_external_data=False))
    if not counts["QuantizeLinear"]:
        raise UnsupportedError("int8 quantization found nothing to quantize",
                               f"the model has no {', '.join(QUANTIZED_OP_TYPES)} nodes", "compile it as fp16")
    names = {n.name for n in iter_nodes(onnx.load(str(model_path), load_external_data=False).graph)}
    missing = [k for k in keep_fp32 if k not in names]
    if missing:
        raise UnsupportedError(f"keep_fp32 names {', '.join(missing)}, which the model does not have",
                               "the keep-list holds ONNX node names", "list them with 'onnxsmith inspect'")
    return {"method": f"ONNX Runtime quantize_static ({method})", "batches": feeder.num_batches,
            **({"kept_fp32": list(keep_fp32)} if keep_fp32 else {}),
            "batch_size": feeder.batch_size, **{k.lower(): v for k, v in counts.items()}}


# ---- reading precisions back from TensorRT's engine inspector -------------------------------------------------

_DTYPE_PATTERNS = (  # order matters: "bfloat16" contains "float16" and "float"
    ("int8", re.compile(r"\bint8\b", re.I)),
    ("fp8", re.compile(r"\bfp8\b|e4m3", re.I)),
    ("int4", re.compile(r"\bint4\b", re.I)),
    ("bf16", re.compile(r"\bbf16\b|bfloat16", re.I)),
    ("fp16", re.compile(r"\bfp16\b|\bhalf\b|float16", re.I)),
    ("fp32", re.compile(r"\bfp32\b|\bfloat\b|float32", re.I)),
    ("int32", re.compile(r"\bint32\b", re.I)),
    ("int64", re.compile(r"\bint64\b", re.I)),
    ("bool", re.compile(r"\bbool\b", re.I)),
)
_NON_COMPUTE = re.compile(r"reformat|shuffle|noop|constant|shape|cast|identity|copy|reshape", re.I)
PRECISION_ORDER = ("int4", "fp8", "int8", "fp16", "bf16", "fp32")


def tensor_dtype(tensor: Mapping[str, Any]) -> str:
    """The dtype of one tensor record (TensorRT 10: ``Format/Datatype``; 11: ``DataType`` and ``Format``)."""
    for key in ("DataType", "Datatype", "Format/Datatype", "Format"):
        text = tensor.get(key)
        if isinstance(text, str):
            for name, pattern in _DTYPE_PATTERNS:
                if pattern.search(text):
                    return name
    return ""


def layer_precision(layer: Mapping[str, Any]) -> str:
    """The precision one inspector layer record computes in: the lowest float/int8 type among its inputs and
    outputs (``""`` for data movement layers or records without tensor formats)."""
    if _NON_COMPUTE.search(str(layer.get("LayerType", ""))):
        return ""
    kinds = {tensor_dtype(t) for t in [*layer.get("Inputs", []), *layer.get("Outputs", [])] if isinstance(t, dict)}
    return next((k for k in PRECISION_ORDER if k in kinds), "")


def layer_precisions(engine_info: Mapping[str, Any]) -> Counter[str]:
    """How many compute layers run in each precision (the lowest precision among a layer's inputs and outputs).

    Needs an engine built with ``ProfilingVerbosity.DETAILED``; with less detail the layers are plain names and
    the counter is empty.
    """
    counts: Counter[str] = Counter()
    for layer in engine_info.get("Layers", []):
        if not isinstance(layer, dict) or _NON_COMPUTE.search(str(layer.get("LayerType", ""))):
            continue
        kinds = {tensor_dtype(t) for t in [*layer.get("Inputs", []), *layer.get("Outputs", [])] if isinstance(t, dict)}
        floating = [k for k in PRECISION_ORDER if k in kinds]
        if floating:
            counts[floating[0]] += 1
    return counts


def summarize_precision(counts: Mapping[str, int]) -> str:
    """``int8+fp16+fp32`` style summary, lowest precision first; ``""`` when nothing was read."""
    return "+".join(k for k in PRECISION_ORDER if counts.get(k))
