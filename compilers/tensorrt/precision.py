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
    import numpy as np
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


FP32_KEEP_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
                 "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
                 "ReduceProd")
"""Op types a strongly typed fp16/bf16 (or int8+fp16) graph keeps in fp32 by default: normalizations, softmax and
sum-type reductions accumulate over many values, where fp16 overflows or loses the small terms (what mixed-precision
tools such as ModelOpt AutoCast keep wide too). The converter puts Casts around them."""


def to_float16(model: onnx.ModelProto, keep_ops: Iterable[str] = FP32_KEEP_OPS, keep_nodes: Iterable[str] = ()
               ) -> onnx.ModelProto:
    """The model computing in fp16 with fp32 inputs and outputs (ONNX Runtime's converter); op types in
    ``keep_ops`` and nodes named in ``keep_nodes`` (a keep-list) stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    source = onnx.ModelProto()
    source.CopyFrom(model)  # the converter edits the graph it is given
    try:
        converted = convert_float_to_float16(source, keep_io_types=True,
                                             op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *keep_ops}),
                                             node_block_list=list(keep_nodes) or None)
    except Exception as exc:
        raise BackendError("converting the model to fp16 for TensorRT's strong typing failed", first_line(exc),
                           "convert it yourself (e.g. ModelOpt AutoCast) and compile the converted model") from exc
    _drop_cast_round_trips(converted.graph)
    sort_nodes(converted.graph)
    return converted


def _drop_cast_round_trips(graph: onnx.GraphProto) -> None:
    """Remove the fp32 -> fp16 -> fp32 Cast pairs the converter leaves between two kept-fp32 ops (LayerNorm then
    Softmax): the value would be rounded to fp16 between them for nothing."""
    import onnx

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT or not node.input:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != _FLOAT16 or node.output[0] in outputs:
            continue
        source = producer.get(first.input[0])
        if source is None or not source.output[0].endswith("_cast_to_fp16"):  # the output of a kept-fp32 op
            continue
        rename[node.output[0]] = first.input[0]
        dropped.add(id(node))
    if not rename:
        return
    kept = [n for n in graph.node if id(n) not in dropped]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    used = {name for n in kept for name in n.input} | outputs
    kept = [n for n in kept if not (cast_to(n) == _FLOAT16 and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)


def _float32_tensors(graph: onnx.GraphProto, found: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every fp32 initializer and Constant value of the fp32 model, by tensor name (subgraphs included)."""
    import onnx
    from onnx import numpy_helper

    found = {} if found is None else found
    for tensor in graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            found[tensor.name] = numpy_helper.to_array(tensor)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == onnx.TensorProto.FLOAT:
                found[node.output[0] if node.op_type == "Constant" and node.output else attr.t.name] = \
                    numpy_helper.to_array(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _float32_tensors(attr.g, found)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _float32_tensors(sub, found)
    return found


def _retype_tensor(tensor: onnx.TensorProto, original: np.ndarray | None = None) -> None:
    """An fp16 tensor as bf16, from its fp32 original when known (fp16 first would clamp to +-65504 and round to
    fp16's grid before bf16's)."""
    import ml_dtypes
    import numpy as np
    from onnx import numpy_helper

    if tensor.data_type != _FLOAT16:
        return
    half = numpy_helper.to_array(tensor)
    source = original if original is not None and original.shape == half.shape else half
    values = np.asarray(source, dtype=np.float32).astype(ml_dtypes.bfloat16)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))


def _retype_graph(graph: onnx.GraphProto, originals: Mapping[str, np.ndarray]) -> None:
    import onnx

    for tensor in graph.initializer:
        _retype_tensor(tensor, originals.get(tensor.name))
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == _FLOAT16:
            value.type.tensor_type.elem_type = _BFLOAT16
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT16:
                attr.i = _BFLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR:
                key = node.output[0] if node.op_type == "Constant" and node.output else attr.t.name
                _retype_tensor(attr.t, originals.get(key))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _retype_graph(attr.g, originals)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _retype_graph(sub, originals)


def to_bfloat16(model: onnx.ModelProto, keep_ops: Iterable[str] = FP32_KEEP_OPS, keep_nodes: Iterable[str] = ()
                ) -> onnx.ModelProto:
    """The model computing in bf16 with fp32 inputs and outputs: the fp16 graph structure, every fp16 tensor, cast
    and constant retyped to bf16 with its values converted from the fp32 original, then type-checked."""
    import onnx

    converted = to_float16(model, keep_ops, keep_nodes)
    _retype_graph(converted.graph, _float32_tensors(model.graph))
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UnsupportedError("the model cannot be typed bf16 for TensorRT's strong typing", first_line(exc),
                               "an op's schema at this opset lacks bfloat16: re-export at a newer opset, or use fp16")\
            from exc
    return converted


QDQ_FP16_OPSET = 19
"""QuantizeLinear/DequantizeLinear take fp16 scales from opset 19: a DQ with an fp16 scale outputs fp16, so the
layers between Q/DQ pairs compute in fp16 under strong typing."""


def qdq_to_float16(model: onnx.ModelProto, keep_ops: Iterable[str] = FP32_KEEP_OPS, keep_nodes: Iterable[str] = ()
                   ) -> onnx.ModelProto:
    """A Q/DQ (int8) model with everything that is not quantized computing in fp16, Q/DQ scales in fp16, as
    TensorRT 11 needs for an int8+fp16 engine (strong typing takes every type from the ONNX); ``keep_ops`` and
    ``keep_nodes`` stay fp32. The default-domain opset is raised to 19 first where it is lower."""
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_FP16_OPSET:
        try:
            model = version_converter.convert_version(model, QDQ_FP16_OPSET)
        except Exception as exc:
            raise UnsupportedError(f"the int8 model cannot be raised from opset {opset} to {QDQ_FP16_OPSET}",
                                   f"fp16 Q/DQ scales need opset {QDQ_FP16_OPSET} ({first_line(exc)})",
                                   "export the model at opset 19 or newer, or give --option int8_fallback=fp32")\
                from exc
    converted = to_float16(model, keep_ops, keep_nodes)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BackendError("the int8+fp16 rewrite of the model is not valid ONNX", first_line(exc),
                           "give --option int8_fallback=fp32") from exc
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
