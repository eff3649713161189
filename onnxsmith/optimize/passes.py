"""Passes on the ONNX form: each changes one thing, declares its config, and records what it changed.

A pass (Olive style) is a class with a frozen config dataclass and one ``run`` method::

    result = Int8QdqPass(Int8QdqConfig(calibrate_method="percentile")).run(model, calibration=data)
    result.model    # the new onnx.ModelProto
    result.record   # PassRecord: nodes and size before/after, op changes, details, notes

The catalogue (:data:`PASSES`) maps names to ``module:class`` so it can be listed without importing any pass.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import importlib
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from onnxsmith.errors import MissingDependencyError, UserInputError

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel, TensorSpec

PASSES = {
    "simplify": "onnxsmith.optimize.simplify:SimplifyPass",
    "fp16": "onnxsmith.optimize.fp16:Fp16Pass",
    "int8_qdq": "onnxsmith.optimize.quantize:Int8QdqPass",
    "prune": "onnxsmith.optimize.prune:PrunePass",
}
"""Pass name -> ``module:class``."""


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """What one pass did to a model (JSON-ready)."""

    name: str
    tool: str
    """Which implementation ran, with its version (``onnxslim 0.1.98``)."""
    config: Mapping[str, Any]
    summary: str
    """One line: what changed."""
    nodes_before: int
    nodes_after: int
    size_before: int
    size_after: int
    """Serialized ModelProto size in bytes."""
    op_changes: Mapping[str, int]
    """Op type -> change in node count (only types whose count changed)."""
    details: Mapping[str, Any]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = dict(self.config)
        data["op_changes"] = dict(self.op_changes)
        data["details"] = dict(self.details)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PassRecord:
        values = dict(data)
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    record: PassRecord


@dataclasses.dataclass(frozen=True)
class Change:
    """What a pass's ``_apply`` returns: the new model and its own account of the change."""

    model: onnx.ModelProto
    tool: str
    summary: str
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


class Pass(abc.ABC):
    """Base of every pass: a name, a frozen config and one ``run``."""

    name: ClassVar[str]
    config_type: ClassVar[type]
    needs_calibration: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        if config is None:
            config = self.config_type()
        if not isinstance(config, self.config_type):
            raise TypeError(f"{type(self).__name__} takes a {self.config_type.__name__}")
        self.config = config

    def run(self, model: onnx.ModelProto | LoadedModel, *, calibration: Dataset | None = None) -> PassResult:
        """Apply the pass to a copy of ``model``; the input is never modified."""
        import onnx

        proto = as_proto(model)
        if self.needs_calibration and calibration is None:
            from onnxsmith.errors import DataError

            raise DataError(f"the {self.name} pass needs calibration data", "it measures activations on real inputs",
                            "pass --calibration calib.npz (one array per model input)")
        start = time.perf_counter()
        work = onnx.ModelProto()
        work.CopyFrom(proto)
        change = self._apply(work, calibration)
        seconds = time.perf_counter() - start
        before, after = op_counts(proto), op_counts(change.model)
        record = PassRecord(
            name=self.name, tool=change.tool, config=dataclasses.asdict(self.config), summary=change.summary,
            nodes_before=len(proto.graph.node), nodes_after=len(change.model.graph.node),
            size_before=proto.ByteSize(), size_after=change.model.ByteSize(),
            op_changes={k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))
                        if after.get(k, 0) != before.get(k, 0)},
            details=dict(change.details), notes=tuple(change.notes), seconds=round(seconds, 3),
        )
        return PassResult(change.model, record)

    @abc.abstractmethod
    def _apply(self, model: onnx.ModelProto, calibration: Dataset | None) -> Change:
        """Change ``model`` (a private copy) and say what changed."""


def get_pass(name: str, **config: Any) -> Pass:
    """A pass from the catalogue, configured by keyword (``get_pass("prune", method="2:4")``)."""
    if name not in PASSES:
        raise UserInputError(f"unknown pass '{name}'", f"passes are {', '.join(PASSES)}")
    module_name, _, class_name = PASSES[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(cls.config_type(**config))  # type: ignore[no-any-return]
    except TypeError as exc:
        fields = ", ".join(f.name for f in dataclasses.fields(cls.config_type))
        raise UserInputError(f"invalid config for pass '{name}'", str(exc), f"its settings are {fields}") from exc


# --- helpers shared by the passes ---------------------------------------------------------------------------------

def as_proto(model: onnx.ModelProto | LoadedModel) -> onnx.ModelProto:
    proto = getattr(model, "proto", model)
    import onnx

    if not isinstance(proto, onnx.ModelProto):
        raise TypeError(f"expected an onnx.ModelProto or LoadedModel, got {type(model).__name__}")
    return proto


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node))


def input_specs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """The graph inputs that are not initializers, as TensorSpecs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    from onnxsmith.model import TensorSpec

    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        if not value.type.HasField("tensor_type") or t.elem_type == 8:  # strings, sequences, optionals
            from onnxsmith.model.specs import value_spec

            specs.append(value_spec(value))
            continue
        dims: list[int | str | None] = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                                        else (d.dim_param or None) for d in t.shape.dim]
        specs.append(TensorSpec(value.name, tensor_dtype_to_np_dtype(t.elem_type).name, tuple(dims)))
    return tuple(specs)


def feed_batches(model: onnx.ModelProto, data: Dataset, limit: int, dynamic_batch: int = 8
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for ``model`` from ``data``: its fixed batch size (or ``dynamic_batch``), at most ``limit`` samples."""
    from onnxsmith.data.dataset import check_against_model

    specs = input_specs(model)
    check_against_model(data.arrays, specs, f"calibration data '{data.source}'")
    first = specs[0].shape[0] if specs and specs[0].shape else 1
    batch = first if isinstance(first, int) else min(dynamic_batch, max(len(data), 1))
    names = {s.name for s in specs}
    used = 0
    for feeds in data.batches(batch):
        if used >= limit:
            break
        yield {k: v for k, v in feeds.items() if k in names}
        used += batch


def ort_session(model: onnx.ModelProto, optimize: bool = False) -> Any:
    """A CPU ONNX Runtime session on ``model`` (graph optimizations off unless asked, so every tensor is kept)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def toposort(model: onnx.ModelProto) -> None:
    """Sort the graph's nodes topologically in place (tools that append nodes leave them out of order)."""
    graph = model.graph
    known = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):  # a cycle or an outer-scope name: keep the rest as they were
            ordered.extend(remaining)
            break
        pending = remaining
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"
