"""Import path: ONNX (fixed shapes) -> onnxslim -> Relax, naming unsupported ops and failing nodes.

Measured here: the Relax ONNX frontend fails on raw BERT-style exports ("shape_of expects a tensor input") until the graph
is simplified with fixed shapes, so every model goes through ``onnxslim.slim`` first (constant folding, shape
arithmetic removed, fusions). When slimming fails the original graph is imported and the report says so.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, UnsupportedError, first_line

from onnxsmith.compilers.tvm.common import tvm, vendor_why

if TYPE_CHECKING:
    import onnx

    from onnxsmith.model import LoadedModel

_DEFAULT_DOMAINS = ("", "ai.onnx")
_HANDLED_DIRECTLY = ("If", "Constant")
"""Ops the frontend builds itself instead of through its converter map."""


@dataclasses.dataclass(frozen=True)
class Imported:
    """A Relax module and how it was obtained."""

    mod: Any
    """The ``tvm.IRModule`` (constants bound: weights live in the exported library)."""
    input_names: tuple[str, ...]
    """ONNX input names in the order ``main`` takes them (onnxslim drops inputs the graph does not use)."""
    output_names: tuple[str, ...]
    slimmed: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    notes: tuple[str, ...] = ()


def converter_ops() -> frozenset[str]:
    """ONNX op types (default domain) the Relax frontend has a converter for."""
    tvm()
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return frozenset(_get_convert_map()) | frozenset(_HANDLED_DIRECTLY)


def unsupported_ops(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Op type (``domain.Type`` outside the default domain) -> names of the nodes the frontend cannot convert.

    Subgraphs (If branches, Loop bodies) are searched too. The frontend looks ops up by type alone, so an op of
    another domain (``com.microsoft.FusedMatMul``) is unsupported even when a default-domain op shares its name.
    """
    known = converter_ops()
    local_functions = {(f.domain, f.name) for f in proto.functions}
    found: dict[str, list[str]] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            default = node.domain in _DEFAULT_DOMAINS
            if not (default and node.op_type in known) or (node.domain, node.op_type) in local_functions:
                op = node.op_type if default else f"{node.domain}.{node.op_type}"
                found.setdefault(op, []).append(node.name or (node.output[0] if node.output else op))
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)

    visit(proto.graph)
    return found


def slim(model: LoadedModel) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """The model simplified by onnxslim with its fixed input shapes; the original when onnxslim fails."""
    try:
        import onnxslim
    except ImportError as exc:
        raise MissingDependencyError("onnxslim", "tvm", "the TVM backend simplifies graphs with it") from exc
    import onnx

    source = onnx.ModelProto()
    source.CopyFrom(model.proto)  # onnxslim edits the graph it is given; the core still needs the original
    try:  # the core fixed every input shape already (load_model), so onnxslim folds all shape arithmetic
        slimmed = onnxslim.slim(source, model_check=False)
    except Exception as exc:  # onnxslim is a best-effort optimizer: import the graph as it is
        return model.proto, (f"onnxslim could not simplify the graph ({first_line(exc)}); imported it unchanged",)
    if slimmed is None or not len(slimmed.graph.output):
        return model.proto, ("onnxslim returned no graph; imported the original",)
    return slimmed, ()


def import_model(model: LoadedModel) -> Imported:
    """Slim, check ops, and convert to Relax; errors name the op and the node."""
    start = time.perf_counter()
    proto, notes = slim(model)
    missing = unsupported_ops(proto)
    if missing and proto is not model.proto and not unsupported_ops(model.proto):
        notes += (f"onnxslim produced ops TVM cannot convert ({', '.join(missing)}); imported the original graph",)
        proto, missing = model.proto, {}
    if missing:
        op, nodes = next(iter(missing.items()))
        raise UnsupportedError(f"TVM's ONNX frontend cannot convert op {op}", f"node(s) {', '.join(nodes[:3])}" +
                               (f" and {len(missing) - 1} other op type(s)" if len(missing) > 1 else ""),
                               "run 'onnxsmith inspect' for the list; try another --backend")
    # ranged inputs (--shape NAME=MIN:OPT:MAX) keep their dims' symbols: the frontend makes them symbolic (tir.Var)
    shapes = {s.name: [int(d) for d in s.shape] for s in model.inputs if s.name not in model.shape_ranges}
    dtypes = {s.name: s.dtype for s in model.inputs}
    try:
        mod = _convert(proto, shapes, dtypes)
    except BackendError as exc:
        if proto is model.proto:
            raise
        # onnxslim can leave shape arithmetic half folded (Shape folded, the Slice/Div/Concat on it not), which
        # the frontend refuses where it takes the original graph (ONNX test_spacetodepth_expanded)
        mod = _convert(model.proto, shapes, dtypes)
        notes += (f"the slimmed graph did not import ({exc.one_line()}); imported the original",)
        proto = model.proto
    initializers = {t.name for t in proto.graph.initializer}
    input_names = tuple(v.name for v in proto.graph.input if v.name not in initializers)
    output_names = tuple(v.name for v in proto.graph.output)
    return Imported(mod=mod, input_names=input_names, output_names=output_names, slimmed=proto is not model.proto, nodes_before=len(model.proto.graph.node),
                    nodes_after=len(proto.graph.node), seconds=round(time.perf_counter() - start, 3),
                    notes=notes)


def _convert(proto: onnx.ModelProto, shapes: dict[str, list[int]], dtypes: dict[str, str]) -> Any:
    """Run the Relax frontend, remembering which node it was converting when it failed."""
    import contextlib
    import io
    import warnings

    tvm()
    from tvm.relax.frontend.onnx import onnx_frontend

    class TrackingImporter(onnx_frontend.ONNXGraphImporter):  # type: ignore[misc, name-defined]
        current: tuple[str, str] | None = None

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
            self.current = (op_name, str(attrs.get("tvm_custom", {}).get("name", "")))
            return super()._convert_operator(op_name, inputs, attrs, opset)

    opset = next((int(i.version) for i in proto.opset_import if i.domain in _DEFAULT_DOMAINS), 1)
    importer = TrackingImporter(shapes, dtypes)
    # The frontend prints the failing op's inputs on stdout, which would corrupt --json output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # renamed inputs and the like: the report does not need them
        try:
            return importer.from_onnx(proto.graph, opset)
        except Exception as exc:
            where = ""
            if importer.current:
                op, node = importer.current
                where = f" at node '{node}' ({op})" if node else f" at an unnamed {op} node"
            raise BackendError(f"TVM's ONNX frontend failed{where}", vendor_why(exc),
                               "simplify the model (fixed --shape), or choose another --backend") from exc
