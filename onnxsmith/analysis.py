"""What a model is: ops, parameters, FLOPs, dynamic dims (for ``inspect`` and efficiency figures)."""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from onnxsmith.model import LoadedModel


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    for init in proto.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def count_flops(proto: onnx.ModelProto) -> tuple[int, list[str]]:
    """FLOPs (2 x multiply-accumulates) of Conv, ConvTranspose, Gemm, MatMul and Einsum-free attention.

    These dominate every vision and transformer model; element-wise ops are not counted. Returns the count and
    the node names whose shapes were unknown (their FLOPs are missing from the count)."""
    shapes = _shapes(proto)
    flops = 0
    unknown: list[str] = []
    for node in proto.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QLinearConv",
                      "ConvInteger"):
            continue
        try:
            if op in ("Conv", "ConvInteger", "QLinearConv"):
                w_name = node.input[3] if op == "QLinearConv" else node.input[1]
                out, w = shapes[node.output[0]], shapes[w_name]
                flops += 2 * math.prod(out) * math.prod(w[1:])
            elif op == "ConvTranspose":
                x, w = shapes[node.input[0]], shapes[node.input[1]]
                flops += 2 * math.prod(x) * math.prod(w[1:])
            elif op == "Gemm":
                a = shapes[node.input[0]]
                out = shapes[node.output[0]]
                trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
                k = a[0] if trans_a else a[1]
                flops += 2 * math.prod(out) * k
            else:
                a_name = node.input[0]
                out = shapes[node.output[0]]
                k = shapes[a_name][-1]
                flops += 2 * math.prod(out) * k
        except (KeyError, IndexError):
            unknown.append(node.name or node.output[0])
    return flops, unknown


def summarize(model: LoadedModel) -> dict[str, Any]:
    """Inputs/outputs, opset, op histogram, parameter count and bytes, FLOPs, dynamic dims."""
    import onnx.helper

    proto = model.proto
    ops = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in proto.graph.node)
    params = 0
    param_bytes = 0
    for init in proto.graph.initializer:
        count = math.prod(init.dims) if init.dims else 1
        params += count
        try:
            param_bytes += count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            pass
    flops, unknown = count_flops(proto)
    return {
        "name": model.name,
        "source": str(model.source),
        "fingerprint": model.fingerprint,
        "opset": model.opset,
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": [s.to_json() for s in model.inputs],
        "outputs": [s.to_json() for s in model.outputs],
        "dynamic_inputs": {s.name: s.dynamic_dims for s in model.inputs if not s.is_static},
        "nodes": len(proto.graph.node),
        "ops": dict(ops.most_common()),
        "parameters": params,
        "parameter_bytes": param_bytes,
        "flops": flops,
        "flops_unknown_nodes": unknown,
        "notes": list(model.notes),
    }
