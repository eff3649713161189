"""Which ONNX ops OpenVINO cannot take: the ONNX frontend's unconverted nodes, then the device's query."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.openvino.common import core, device_available, ov, vendor_why
from onnxsmith.errors import BackendError

if TYPE_CHECKING:
    import onnx

    from onnxsmith.model import LoadedModel

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _all_ops(model: Any) -> list[Any]:
    """Every op of ``model``, including those inside If/Loop/TensorIterator bodies."""
    ops = []
    for op in model.get_ordered_ops():
        ops.append(op)
        if op.get_type_name() == "If":
            bodies = [op.get_function(0), op.get_function(1)]
        elif op.get_type_name() in ("Loop", "TensorIterator"):
            bodies = [op.get_function()]
        else:  # other ops have no bodies (asking a plain op for them crashes the binding)
            bodies = []
        for body in bodies:
            ops.extend(_all_ops(body))
    return ops


def _onnx_nodes(graph: onnx.GraphProto, found: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """ONNX node name and output names -> (op type, node name), subgraphs included."""
    for node in graph.node:
        op_type = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
        label = node.name or (node.output[0] if node.output else op_type)
        for key in (node.name, *node.output):
            if key:
                found.setdefault(key, (op_type, label))
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _onnx_nodes(sub, found)
    return found


def _framework_op(op: Any, nodes: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(ONNX op type, node name) of a framework node: from the ONNX graph, else from the node's attributes."""
    name = op.get_friendly_name()
    if name in nodes:
        return nodes[name]
    try:
        attrs = op.get_attributes()
    except Exception:  # framework nodes inside bodies do not always expose their attributes
        return "unknown", name
    op_type, domain = str(attrs.get("ONNX_META_type", "unknown")), str(attrs.get("ONNX_META_domain", ""))
    return (op_type if domain in _DEFAULT_DOMAINS else f"{domain}.{op_type}"), name


def unconverted_ops(model: LoadedModel) -> dict[str, list[str]]:
    """ONNX op type (``domain.Type`` outside the default domain) -> names of the nodes the frontend left.

    The frontend converts what it can (``convert_partially``); nodes it has no rule for stay framework nodes.
    The frontend object must outlive the converted model: its library holds the framework nodes' code.
    """
    ov()
    from openvino.frontend import FrontEndManager

    try:
        frontend = FrontEndManager().load_by_framework("onnx")
        converted = frontend.convert_partially(frontend.load(str(model.path)))
    except Exception as exc:
        raise BackendError("OpenVINO's ONNX frontend could not read the model", vendor_why(exc)) from exc
    nodes = _onnx_nodes(model.proto.graph, {})
    found: dict[str, list[str]] = {}
    op: Any = None
    for op in _all_ops(converted):
        if "FrameworkNode" in op.get_type_name():
            op_type, name = _framework_op(op, nodes)
            if name not in found.get(op_type, []):
                found.setdefault(op_type, []).append(name)
    del op, converted  # release the framework nodes before the frontend that defines them
    del frontend
    return found


def device_unsupported_ops(path: Path, device: str) -> dict[str, list[str]]:
    """OpenVINO op type -> op names that ``device``'s plugin reports it cannot run (``core.query_model``)."""
    if not device_available(device):
        return {}
    try:
        model = core().read_model(str(path))
        supported = core().query_model(model, device)
    except Exception:  # a query failure is not an answer about single ops; compile reports it properly
        return {}
    missing: dict[str, list[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        if op.get_friendly_name() not in supported:
            missing.setdefault(op.get_type_name(), []).append(op.get_friendly_name())
    return missing
