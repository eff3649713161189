"""What is refused at load: external data outside the model's folder or short, graphs the later stages cannot
handle (unknown types, maps, colliding names), inputs too large to generate."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.errors import ModelError, first_line
from onnxsmith.model.specs import ONNX_DTYPES, _graph_inputs, _opset, _unwrap, value_spec

if TYPE_CHECKING:
    import onnx

    from onnxsmith.model.loading import LoadedModel
    from onnxsmith.model.specs import TensorSpec


MAX_INPUT_BYTES = 16 * 2**30
"""An input tensor larger than this (16 GiB) is refused at load: no sample of it could be generated or held."""


def _check_external_data(model: onnx.ModelProto, base: Path) -> list[Path]:
    """Reject external-data locations that leave the model directory or point at missing/short files."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = base.resolve()
    files: list[Path] = []
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        try:
            info = ExternalDataInfo(tensor)
        except ValueError as exc:
            raise ModelError("bad external data", f"tensor '{tensor.name}': {first_line(exc)}",
                             "save the model again with onnx.save_model") from exc
        location = info.location or ""
        where = f"tensor '{tensor.name}' stores its data in '{location}'"
        if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in Path(location).parts:
            raise ModelError("unsafe external data", f"{where}, outside the model's directory",
                             "external data files must sit beside the model, named by relative paths")
        path = (base / location).resolve()
        if base not in path.parents:
            raise ModelError("unsafe external data", f"{where}, which resolves outside the model's directory "
                             "(symbolic link?)", "copy the data file next to the model")
        if path.is_dir():
            raise ModelError("bad external data", f"{where}, which is a directory, not a file",
                             "name the data file the model was saved with")
        if not path.is_file():
            raise ModelError("missing external data", f"{where}, which does not exist",
                             "keep the data file next to the .onnx file")
        stat = path.stat()
        if stat.st_nlink > 1:
            raise ModelError("unsafe external data", f"{where}, which has {stat.st_nlink} hard links, so its "
                             "content may belong to a file outside the model's directory (ONNX refuses it too)",
                             "copy the data file (cp, not ln) next to the model")
        size = stat.st_size
        try:
            offset, length = int(info.offset or 0), int(info.length or 0)
        except (TypeError, ValueError):
            offset, length = -1, -1
        if offset < 0 or length < 0:
            raise ModelError("bad external data", f"{where} at offset {info.offset} with length {info.length}; "
                             "neither may be negative", "save the model again with onnx.save_model")
        if info.length:
            needed = offset + int(info.length)
        else:
            count = functools.reduce(lambda a, b: a * b, tensor.dims, 1)
            import onnx.helper

            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            needed = offset + count * itemsize
        if size < needed:
            raise ModelError("truncated external data", f"{where}, which has {size} bytes but needs {needed}",
                             "copy the data file again; it is incomplete")
        if path not in files:
            files.append(path)
    return files


def _check_graph(proto: onnx.ModelProto, source: Path) -> None:
    """What the later stages cannot handle, refused at load: an opset or IR newer than the installed onnx
    knows, a graph without outputs, inputs or outputs that are maps, sparse tensors or of unknown element types
    (strings, sequences and optionals load; backends that cannot take them refuse at compile)."""
    import onnx

    where = f"cannot use model '{source}'"
    newest = onnx.defs.onnx_opset_version()
    opset = _opset(proto)
    if opset > newest:
        raise ModelError(where, f"it needs ONNX opset {opset}, and the installed onnx {onnx.__version__} knows up "
                         f"to {newest}", f"export with opset {newest} or lower, or upgrade onnx")
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelError(where, f"its IR version {proto.ir_version} is newer than the installed onnx's "
                         f"{onnx.IR_VERSION}", "export it again with this onnx version, or upgrade onnx")
    if not proto.graph.output:
        raise ModelError(where, "its graph has no outputs", "export the model with its outputs")
    for kind, values in (("input", _graph_inputs(proto)), ("output", list(proto.graph.output))):
        for value in values:
            _check_value_type(value, kind, where)
        _check_convention_names([v.name for v in values], [value_spec(v) for v in values], kind, where)


def _check_value_type(value: onnx.ValueInfoProto, kind: str, where: str) -> None:
    """Tensors of the known element types (numbers or strings), and sequences and optionals of them; maps and
    sparse tensors are refused."""
    import onnx

    wrap, inner = _unwrap(value.type)
    field = inner.WhichOneof("value")
    if field != "tensor_type":
        what = {"map_type": "a map", "sparse_tensor_type": "a sparse tensor", None: "of no type"}.get(field, field)
        raise ModelError(where, f"{kind} '{value.name}' is {what}" + (f" inside a {' of '.join(wrap)}" if wrap
                         else ""), "onnxsmith feeds and compares tensors, and sequences and optionals of tensors")
    elem = inner.tensor_type.elem_type
    if elem not in ONNX_DTYPES:
        name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else elem
        raise ModelError(where, f"{kind} '{value.name}' has element type {name}, which onnxsmith cannot "
                         "feed, compare or compile", "give the model inputs and outputs of numbers or strings")


def _check_convention_names(names: list[str], specs: list[TensorSpec], kind: str, where: str) -> None:
    """A sequence or optional NAME is stored in data files as keys ``NAME.0``, ``NAME.length``, ``NAME.none``
    (:mod:`onnxsmith.data.values`): no other input or output name may start with ``NAME.``."""
    for spec in specs:
        if not spec.wrap:
            continue
        clash = [n for n in names if n != spec.name and n.startswith(spec.name + ".")]
        if clash:
            raise ModelError(where, f"{kind} '{spec.name}' is a {spec.type_text()} and {kind} '{clash[0]}' "
                             f"starts with '{spec.name}.', so their arrays in an .npz would collide",
                             "rename one of them in the model (onnxsmith stores a sequence NAME as NAME.0, "
                             "NAME.1, ..., NAME.length)")


def _check_input_sizes(model: LoadedModel) -> None:
    import numpy as np

    for spec in model.inputs_at("max"):
        if not spec.is_static or not spec.numeric:  # strings: their width is the data's; containers: ragged
            continue
        count = functools.reduce(lambda a, b: a * b, spec.shape, 1)
        size = count * np.dtype(spec.dtype if spec.dtype != "bfloat16" else "float16").itemsize
        if size > MAX_INPUT_BYTES:
            raise ModelError(f"input '{spec.name}' is too large", f"{spec.shape_text()} {spec.dtype} is "
                             f"{size / 2**30:.3g} GiB per inference (limit {MAX_INPUT_BYTES // 2**30} GiB)",
                             f"give a smaller size with --shape {spec.name}=DIMS")
