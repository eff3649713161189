"""Shapes: ``--shape`` and ``--batch`` values, shape ranges (MIN:OPT:MAX), and fixing a model's dynamic dims."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from onnxsmith.errors import UserInputError, first_line
from onnxsmith.model.specs import _graph_inputs, value_spec

if TYPE_CHECKING:
    from onnxsmith.model.loading import LoadedModel
    from onnxsmith.model.specs import TensorSpec


MAX_DIM = 2**31 - 1
"""The largest dimension ``--shape`` accepts (ONNX stores dims as int64; no tensor comes near this)."""


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
    original = [value_spec(v) for v in graph_inputs]
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
        spec = value_spec(value)
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
    model.inputs = tuple(value_spec(v) for v in _graph_inputs(inferred))
    model.outputs = tuple(value_spec(v) for v in inferred.graph.output)


def require_static(model: LoadedModel) -> None:
    """Raise a clear error when an input still has dynamic dims (other than the bounded ones of a range)."""
    for spec in model.inputs:
        if not spec.is_static and spec.name not in model.shape_ranges:
            example = "x".join(str(d) if isinstance(d, int) else "N" for d in spec.shape)
            raise UserInputError(f"input '{spec.name}' has dynamic dims {spec.dynamic_dims}",
                                 "this step needs fixed shapes", f"give them with --shape {spec.name}={example}")
