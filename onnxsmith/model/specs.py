"""What one model input or output is (:class:`TensorSpec`), read from the ONNX graph."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx


Dim = int | str | None
"""A dimension: an int when fixed, the symbol name (or ``None``) when dynamic."""


ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
    # the float8/4 and int4 types, named as ml_dtypes (onnx's own numpy types) names them
    17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz", 21: "uint4", 22: "int4",
    23: "float4_e2m1fn", 24: "float8_e8m0fnu",
    8: "string",  # UTF-8 text: fixed-width numpy unicode ('<U') in data files (onnxsmith.data.values)
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
    ``shape`` is ``()`` (elements may differ in shape). Data files give them by :mod:`onnxsmith.data.values`."""

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


def value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        return _wrapped_spec(value)
    t = value.type.tensor_type
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # 0: an empty dimension, which backends run
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return TensorSpec(value.name, ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"), tuple(dims))


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


def _wrapped_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    wrap, inner = _unwrap(value.type)
    elem = inner.tensor_type.elem_type
    return TensorSpec(value.name, ONNX_DTYPES.get(elem, f"onnx:{elem}"), (), wrap)


def _opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]
