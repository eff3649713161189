"""Stage 1, load: read an ONNX model safely, check it, fix dynamic shapes and fingerprint it.

ONNX is the one intermediate form: every later stage takes a :class:`LoadedModel`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from onnxsmith.errors import ModelError, UserInputError, first_line

if TYPE_CHECKING:
    import onnx

Dim = int | str | None
"""A dimension: an int when fixed, the symbol name (or ``None``) when dynamic."""

MAX_DIM = 2**31 - 1
"""The largest dimension ``--shape`` accepts (ONNX stores dims as int64; no tensor comes near this)."""
MAX_INPUT_BYTES = 16 * 2**30
"""An input tensor larger than this (16 GiB) is refused at load: no sample of it could be generated or held."""

_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
    # the float8/4 and int4 types, named as ml_dtypes (onnx's own numpy types) names them
    17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz", 21: "uint4", 22: "int4",
    23: "float4_e2m1fn", 24: "float8_e8m0fnu",
    8: "string",  # UTF-8 text: fixed-width numpy unicode ('<U') in data files (onnxsmith.values)
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one model input or output."""

    name: str
    dtype: str
    """numpy dtype name (``float32``, ``int64``...)."""
    shape: tuple[Dim, ...]
    wrap: tuple[str, ...] = ()
    """Containers around the tensor, outermost first: ``("sequence",)``, ``("optional",)``,
    ``("optional", "sequence")``; empty for a plain tensor. ``dtype`` is then the element tensors' type and
    ``shape`` is ``()`` (elements may differ in shape). Data files give them by :mod:`onnxsmith.values`."""

    @property
    def is_tensor(self) -> bool:
        return not self.wrap

    @property
    def numeric(self) -> bool:
        """A plain tensor of numbers (what every backend takes), not text, a sequence or an optional."""
        return not self.wrap and self.dtype != "string"

    @property
    def dynamic_dims(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if not isinstance(d, int)]

    @property
    def is_static(self) -> bool:
        return not self.dynamic_dims

    def shape_text(self) -> str:
        if self.wrap:
            return " of ".join(self.wrap) + f" of {self.dtype} tensors"
        return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape) or "scalar"

    def type_text(self) -> str:
        """``float32``, ``string``, ``sequence of float32``, ``optional of sequence of int64``."""
        return " of ".join((*self.wrap, self.dtype))

    def to_json(self) -> dict[str, Any]:
        data = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.wrap:
            data["wrap"] = list(self.wrap)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]), tuple(data.get("wrap", ())))


@dataclasses.dataclass(frozen=True)
class ShapeRange:
    """The shapes one input takes at run time: every dim between ``min`` and ``max``, ``opt`` the one to tune for
    (``--shape NAME=MIN:OPT:MAX``; TensorRT's optimization profile, OpenVINO's bounded dims)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    POINTS: ClassVar[tuple[str, ...]] = ("min", "opt", "max")

    @property
    def dynamic_dims(self) -> list[int]:
        """The dims that vary (min < max); the others are fixed."""
        return [i for i, (lo, hi) in enumerate(zip(self.min, self.max)) if lo != hi]

    def point(self, name: str) -> tuple[int, ...]:
        """The shape at ``min``, ``opt`` or ``max``."""
        return {"min": self.min, "opt": self.opt, "max": self.max}[name]

    def text(self) -> str:
        return ":".join("x".join(map(str, s)) for s in (self.min, self.opt, self.max))

    def bounds_text(self) -> str:
        """``[1..16]x3x224x224``: the fixed dims as numbers, the varying ones as ranges."""
        return "x".join(str(lo) if lo == hi else f"[{lo}..{hi}]" for lo, hi in zip(self.min, self.max))

    def outside(self, shape: tuple[int, ...]) -> str | None:
        """Why ``shape`` is not one this range takes (``None``: it is)."""
        if len(shape) != len(self.min):
            return f"it has rank {len(shape)}, the bundle takes rank {len(self.min)}"
        for i, (got, lo, hi) in enumerate(zip(shape, self.min, self.max)):
            if not lo <= got <= hi:
                takes = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
                return f"dim {i} is {got}, the bundle takes {takes}"
        return None

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShapeRange:
        return cls(tuple(int(d) for d in data["min"]), tuple(int(d) for d in data["opt"]),
                   tuple(int(d) for d in data["max"]))


ShapeValue = tuple[int, ...] | ShapeRange
"""What ``--shape`` gives for one input: fixed dims, or a range."""

_DIMS = r"\d+(?:x\d+)*"


def _parse_dims(value: str, dims: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims.split("x"))  # 0 is a valid (empty) dimension, as in ONNX
    if max(shape) > MAX_DIM:
        raise UserInputError(f"invalid --shape '{value}'", f"dimension {max(shape)} is larger than {MAX_DIM}",
                             "give the size the model really runs at")
    return shape


def parse_shape(value: str) -> tuple[str, ShapeValue]:
    """One ``--shape`` value: ``NAME=DIMS`` (fixed) or ``NAME=MIN:OPT:MAX`` (a range), DIMS like ``1x3x224x224``.

    A range whose three shapes are equal is the fixed shape. (A caller that accepts a trailing ``:dtype`` strips it
    before calling this: a non-numeric part is refused here.)"""
    name, sep, dims = value.rpartition("=")
    parts = dims.split(":")
    if not sep or not name or len(parts) not in (1, 3) or not all(re.fullmatch(_DIMS, p) for p in parts):
        why = "expected NAME=DIMS or NAME=MIN:OPT:MAX, each DIMS like 1x3x224x224 (non-negative integers)"
        if sep and name and len(parts) == 2 and all(re.fullmatch(_DIMS, p) for p in parts):
            why = "a range needs three shapes, MIN:OPT:MAX (OPT is the one backends tune for)"
        raise UserInputError(f"invalid --shape '{value}'", why,
                             "for example --shape input=1x3x224x224 or --shape input=1x3x224x224:8x3x224x224:32x3x224x224")
    shapes = [_parse_dims(value, p) for p in parts]
    if len(shapes) == 1 or shapes[0] == shapes[1] == shapes[2]:
        return name, shapes[0]
    lo, opt, hi = shapes
    if not len(lo) == len(opt) == len(hi):
        raise UserInputError(f"invalid --shape '{value}'", f"MIN, OPT and MAX have different ranks "
                             f"({len(lo)}, {len(opt)}, {len(hi)})", "give the same number of dims in all three")
    for i, (a, b, c) in enumerate(zip(lo, opt, hi)):
        if not a <= b <= c:
            raise UserInputError(f"invalid --shape '{value}'", f"dim {i} is {a}:{b}:{c}; it must grow from MIN "
                                 "through OPT to MAX", "order them MIN:OPT:MAX, e.g. 1x3x224x224:8x3x224x224:32x3x224x224")
    return name, ShapeRange(lo, opt, hi)


def parse_shape_overrides(values: tuple[str, ...] | list[str]) -> dict[str, ShapeValue]:
    """Parse ``--shape NAME=1x3x224x224`` (fixed) and ``--shape NAME=MIN:OPT:MAX`` (a range) options."""
    shapes: dict[str, ShapeValue] = {}
    for value in values:
        name, shape = parse_shape(value)
        shapes[name] = shape
    return shapes


def parse_batch(value: str | None) -> tuple[int, int, int] | None:
    """``--batch 8`` (fixed), ``--batch 1..32`` (a range, tuned for 32) or ``--batch 1..32@8`` (tuned for 8), as
    (min, opt, max); ``None`` when not given."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*(?:@\s*(\d+))?)?\s*", value)
    if not match:
        raise UserInputError(f"invalid --batch '{value}'", "expected N, MIN..MAX or MIN..MAX@OPT",
                             "for example --batch 8 or --batch 1..32@8")
    lo = int(match.group(1))
    hi = int(match.group(2)) if match.group(2) else lo
    opt = int(match.group(3)) if match.group(3) else hi
    if lo < 1 or hi > MAX_DIM or not lo <= opt <= hi:
        raise UserInputError(f"invalid --batch '{value}'", f"need 1 <= MIN <= OPT <= MAX (got {lo}, {opt}, {hi})",
                             "for example --batch 1..32@8")
    return lo, opt, hi


def specs_at(specs: tuple[TensorSpec, ...], ranges: Mapping[str, ShapeRange], point: str) -> tuple[TensorSpec, ...]:
    """``specs`` with each ranged input at its ``min``, ``opt`` or ``max`` shape (the others as they are)."""
    return tuple(dataclasses.replace(s, shape=ranges[s.name].point(point)) if s.name in ranges else s for s in specs)


def _value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        return _wrapped_spec(value)
    t = value.type.tensor_type
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # 0: an empty dimension, which backends run
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return TensorSpec(value.name, _ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"), tuple(dims))


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


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass
class LoadedModel:
    """A checked ONNX model with static input shapes, ready for the optimize and compile stages."""

    source: Path
    """The file the user gave."""
    proto: onnx.ModelProto
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    fingerprint: str
    """sha256 over the model file and its external data, in the order the graph names them."""
    shape_overrides: dict[str, tuple[int, ...]]
    notes: list[str] = dataclasses.field(default_factory=list)
    data_files: tuple[Path, ...] = ()
    """The external-data files the model's tensors were read from (resolved, inside the model's folder)."""
    batch_inputs: tuple[str, ...] | None = None
    """The inputs whose first dim was dynamic in the original model (their batch); ``None`` when none was."""
    shape_ranges: dict[str, ShapeRange] = dataclasses.field(default_factory=dict)
    """Inputs kept dynamic within bounds (``--shape NAME=MIN:OPT:MAX``, ``--batch``); their varying dims are
    symbols in :attr:`inputs` and in the saved model."""
    export: dict[str, Any] | None = None
    """For a model exported from PyTorch (:mod:`onnxsmith.torchin`): the export's record and check figures."""
    _path: Path | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def name(self) -> str:
        return self.source.stem

    @property
    def path(self) -> Path:
        """A file on disk holding exactly this model (with fixed shapes); backends read this."""
        if self._path is None:
            from onnxsmith.cache import owner_tag, sweep_once

            sweep_once(Path(tempfile.gettempdir()))
            self._tmp = tempfile.TemporaryDirectory(prefix=f"onnxsmith-model-{owner_tag()}-")
            self._path = save_model(self.proto, Path(self._tmp.name) / f"{self.name}.onnx")
        return self._path

    def __getstate__(self) -> dict[str, Any]:
        """For the compiling child process (:mod:`onnxsmith.isolate`): it reads the copy on disk this process
        owns, and never deletes it."""
        state = dict(self.__dict__)
        state["_tmp"] = None
        if state["_path"] is not None:  # the child loads the saved copy only if its backend needs the proto,
            state.pop("proto", None)  # so it need not import onnx (1-2 s) to compile with OpenVINO
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        if name == "proto" and self.__dict__.get("_path") is not None:
            import onnx

            self.proto = onnx.load_model(str(self._path))
            return self.proto
        raise AttributeError(name)

    def input_spec(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def inputs_at(self, point: str = "opt") -> tuple[TensorSpec, ...]:
        """The inputs with every ranged one at its ``min``, ``opt`` or ``max`` shape (all static)."""
        return specs_at(self.inputs, self.shape_ranges, point)

    def signature(self) -> dict[str, Any]:
        return {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs]}


def save_model(proto: onnx.ModelProto, path: Path) -> Path:
    """Save a model; models over 1.8 GB keep their weights in ``<name>.data`` beside it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if proto.ByteSize() > 1_800_000_000:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(proto, str(path))
    return path


def load_model(path: str | os.PathLike[str], shapes: Mapping[str, ShapeValue] | None = None,
               default_batch: int | None = 1, check: bool = True,
               batch: tuple[int, int, int] | None = None) -> LoadedModel:
    """Load, check and shape-infer ``path``; ``shapes`` fixes dynamic input dimensions or bounds them
    (:class:`ShapeRange`); ``batch`` (min, opt, max) does so for the first dim of every input whose first dim is
    dynamic and that ``shapes`` does not name (``--batch``).

    A dynamic first (batch) dimension left unset becomes ``default_batch`` with a note; any other dynamic
    dimension without an override is an error naming it (pass ``default_batch=None`` to keep shapes dynamic).
    A dim that shares its symbol with a ranged dim of another input gets the same range.
    """
    import onnx
    from google.protobuf.message import DecodeError

    source = Path(path)
    if not source.is_file():
        raise ModelError(f"cannot load model '{source}'", "file not found" if not source.exists() else "not a file")
    with open(source, "rb") as f:
        head = f.read(64)
    if head[:1] in (b"{", b"<") or head.startswith((b"PK", b"\x89HDF", b"\x80\x02", b"GGUF")):
        raise ModelError(f"cannot load model '{source}'", "this is not an ONNX file (it looks like JSON, XML, a zip, "
                         "HDF5, a pickle or GGUF)", "export the model to ONNX first (torch.onnx.export)")
    try:
        proto = onnx.load_model(str(source), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"cannot load model '{source}'", f"not a valid ONNX protobuf ({first_line(exc)})",
                         "is the file truncated? re-export or copy it again") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"cannot load model '{source}'", "it parsed as an empty graph; this is not an ONNX model",
                         "check the file; export the model to ONNX first")
    data_files = _check_external_data(proto, source.parent)
    if data_files:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(source.parent))
        except (onnx.checker.ValidationError, ValueError, OSError) as exc:
            raise ModelError(f"cannot load the external data of '{source}'", first_line(exc),
                             "keep the data files next to the model, as plain files") from exc
    _check_graph(proto, source)
    fingerprint = _sha256_files([source, *data_files])
    if check:
        try:
            if proto.ByteSize() < 2_000_000_000:
                onnx.checker.check_model(proto)
            else:
                onnx.checker.check_model(str(source))
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"invalid ONNX model '{source}'", f"the ONNX checker says: {first_line(exc)}",
                             "fix the exporter or run onnx.checker.check_model for details") from exc
    model = LoadedModel(source=source, proto=proto, inputs=(), outputs=(), opset=_opset(proto),
                        fingerprint=fingerprint, data_files=tuple(data_files),
                        shape_overrides={k: v for k, v in (shapes or {}).items() if not isinstance(v, ShapeRange)})
    _fix_shapes(model, dict(shapes or {}), default_batch, batch)
    _check_input_sizes(model)
    return model


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
        _check_convention_names([v.name for v in values], [_value_spec(v) for v in values], kind, where)


def _unwrap(type_proto: onnx.TypeProto) -> tuple[tuple[str, ...], onnx.TypeProto]:
    """The containers around a value's type (outermost first) and the innermost type."""
    wrap: list[str] = []
    while True:
        field = type_proto.WhichOneof("value")
        if field == "sequence_type":
            wrap.append("sequence")
            type_proto = type_proto.sequence_type.elem_type
        elif field == "optional_type":
            wrap.append("optional")
            type_proto = type_proto.optional_type.elem_type
        else:
            return tuple(wrap), type_proto


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
    if elem not in _ONNX_DTYPES:
        name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else elem
        raise ModelError(where, f"{kind} '{value.name}' has element type {name}, which onnxsmith cannot "
                         "feed, compare or compile", "give the model inputs and outputs of numbers or strings")


def _wrapped_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    wrap, inner = _unwrap(value.type)
    elem = inner.tensor_type.elem_type
    return TensorSpec(value.name, _ONNX_DTYPES.get(elem, f"onnx:{elem}"), (), wrap)


def _check_convention_names(names: list[str], specs: list[TensorSpec], kind: str, where: str) -> None:
    """A sequence or optional NAME is stored in data files as keys ``NAME.0``, ``NAME.length``, ``NAME.none``
    (:mod:`onnxsmith.values`): no other input or output name may start with ``NAME.``."""
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


def _opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]


def _symbol(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", value)


def _fix_shapes(model: LoadedModel, shapes: dict[str, ShapeValue], default_batch: int | None,
                batch: tuple[int, int, int] | None = None) -> None:
    import onnx

    proto = model.proto
    graph_inputs = _graph_inputs(proto)
    names = [v.name for v in graph_inputs]
    for name in shapes:
        if name not in names:
            raise UserInputError(f"invalid --shape for '{name}'", "the model has no input of that name",
                                 f"inputs are: {', '.join(names)}")
    changed = False
    original = [_value_spec(v) for v in graph_inputs]
    batched = tuple(s.name for s in original if s.shape and not isinstance(s.shape[0], int))
    if batched:
        model.batch_inputs = batched
    if batch is not None and not [n for n in batched if n not in shapes]:
        raise UserInputError(f"cannot use --batch {batch[0]}..{batch[2]}", "no input left for it has a dynamic first "
                             "(batch) dim" if batched else "no input of the model has a dynamic first (batch) dim",
                             "give the shapes with --shape NAME=DIMS or NAME=MIN:OPT:MAX")
    # Ranges of dims named by a symbol: another input's dim with the same symbol takes the same range.
    symbols: dict[str, tuple[int, int, int]] = {}
    for spec in original:
        wanted = shapes.get(spec.name)
        if isinstance(wanted, ShapeRange) and len(wanted.min) == len(spec.shape):
            for i, have in enumerate(spec.shape):
                if isinstance(have, str) and have:
                    symbols.setdefault(have, (wanted.min[i], wanted.opt[i], wanted.max[i]))
    for value in graph_inputs:
        spec = _value_spec(value)
        dims = value.type.tensor_type.shape.dim
        wanted = shapes.get(value.name)
        if wanted is None and spec.dynamic_dims:
            per_dim: list[tuple[int, int, int] | None] = [
                (d, d, d) if isinstance(d, int) else symbols.get(d) if d else None for d in spec.shape]
            if batch is not None and value.name in batched:
                per_dim[0] = batch
            if all(d is not None for d in per_dim):
                lo, opt, hi = (tuple(d[k] for d in per_dim if d is not None) for k in range(3))
                wanted = lo if lo == hi else ShapeRange(lo, opt, hi)
                if isinstance(wanted, ShapeRange) and not (batch is not None and value.name in batched
                                                           and wanted.dynamic_dims == [0]):
                    model.notes.append(f"input '{value.name}': takes {wanted.bounds_text()}, the range of the "
                                       "dims it shares a symbol with")
        if wanted is not None:
            lo_shape = wanted.min if isinstance(wanted, ShapeRange) else wanted
            if len(lo_shape) != len(spec.shape):
                raise UserInputError(f"invalid --shape for '{value.name}'",
                                     f"the input has rank {len(spec.shape)} ({spec.shape_text()}), "
                                     f"the option gives {len(lo_shape)} dims")
            ranged = isinstance(wanted, ShapeRange)
            lows = wanted.min if isinstance(wanted, ShapeRange) else wanted
            highs = wanted.max if isinstance(wanted, ShapeRange) else wanted
            for i, (have, lo, hi) in enumerate(zip(spec.shape, lows, highs)):
                if isinstance(have, int) and not lo == hi == have:
                    given = f"{lo}..{hi}" if lo != hi else str(lo)
                    raise UserInputError(f"invalid --shape for '{value.name}'",
                                         f"dim {i} is fixed to {have} in the model, the option gives {given}")
            for i, (dim, lo, hi) in enumerate(zip(dims, lows, highs)):
                symbol = dim.dim_param if dim.HasField("dim_param") and dim.dim_param else ""
                dim.Clear()
                if lo == hi:
                    dim.dim_value = lo
                else:  # the model keeps a symbol there (its own, else batch / <input>_dim<i>)
                    dim.dim_param = symbol or ("batch" if i == 0 and value.name in batched and batch is not None
                                               and value.name not in shapes else f"{_symbol(value.name)}_dim{i}")
            if ranged:
                assert isinstance(wanted, ShapeRange)
                model.shape_ranges[value.name] = wanted
            changed = True
            continue
        dynamic = spec.dynamic_dims
        if not dynamic or default_batch is None:
            continue
        if dynamic == [0]:
            dims[0].Clear()
            dims[0].dim_value = default_batch
            model.notes.append(f"input '{value.name}': dynamic batch dim '{spec.shape[0] or '?'}' set to "
                               f"{default_batch} (use --shape or --batch to choose)")
            changed = True
            continue
        names_text = ", ".join(f"{i} ('{spec.shape[i] or '?'}')" for i in dynamic)
        example = "x".join(str(d) if isinstance(d, int) else "N" for d in spec.shape)
        raise UserInputError(f"input '{value.name}' has dynamic dims {names_text}",
                             "onnxsmith compiles for fixed shapes or bounded ranges",
                             f"give them with --shape {value.name}={example} (N = your size) or "
                             f"--shape {value.name}=MIN:OPT:MAX")
    if changed:
        # Drop stale inferred shapes and re-infer with the fixed inputs.
        del proto.graph.value_info[:]
        for out in proto.graph.output:
            for dim in out.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value"):
                    dim.Clear()
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True) if proto.ByteSize() < 2_000_000_000 else proto
    except Exception as exc:  # shape inference is best-effort; backends infer again
        model.notes.append(f"ONNX shape inference failed: {first_line(exc)}")
        inferred = proto
    model.proto = inferred
    model.inputs = tuple(_value_spec(v) for v in _graph_inputs(inferred))
    model.outputs = tuple(_value_spec(v) for v in inferred.graph.output)


def require_static(model: LoadedModel) -> None:
    """Raise a clear error when an input still has dynamic dims (other than the bounded ones of a range)."""
    for spec in model.inputs:
        if not spec.is_static and spec.name not in model.shape_ranges:
            example = "x".join(str(d) if isinstance(d, int) else "N" for d in spec.shape)
            raise UserInputError(f"input '{spec.name}' has dynamic dims {spec.dynamic_dims}",
                                 "this step needs fixed shapes", f"give them with --shape {spec.name}={example}")
