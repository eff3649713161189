"""Running a Core ML package with ``coremltools.models.MLModel.predict`` (macOS only)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.coreml.common import coremltools, openable_package, quiet
from onnxsmith.errors import BackendError, DataError, first_line
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import LayerTime, Runner

if TYPE_CHECKING:
    import numpy as np

_ARRAY_TYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32"}


def feature_spec(feature: Any, name: str) -> TensorSpec:
    """A Core ML multi-array feature as a :class:`TensorSpec` (named with the ONNX name)."""
    from coremltools.proto import FeatureTypes_pb2

    array = feature.type.multiArrayType
    dtype = _ARRAY_TYPES.get(FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType), "float32")
    return TensorSpec(name, dtype, tuple(int(d) for d in array.shape))


class CoreMLRunner(Runner):
    """An ``MLModel`` loaded for the chosen compute units; feeds and outputs use the ONNX names."""

    def __init__(self, package: Path, compute_units: str, io: Mapping[str, Mapping[str, str]]) -> None:
        ct = coremltools()
        try:
            with quiet(), openable_package(package) as readable:  # Core ML compiles the package when loading it
                self.model = ct.models.MLModel(str(readable), compute_units=getattr(ct.ComputeUnit,
                                                                                     compute_units.upper()))
        except Exception as exc:
            raise BackendError(f"Core ML could not load '{package.name}'", first_line(exc),
                               "this macOS may be older than the package's minimum deployment target") from exc
        spec = self.model.get_spec()
        in_map = dict(io.get("inputs", {})) or {f.name: f.name for f in spec.description.input}
        out_map = dict(io.get("outputs", {})) or {f.name: f.name for f in spec.description.output}
        by_name = {f.name: f for f in [*spec.description.input, *spec.description.output]}
        self._inputs = in_map
        self._outputs = out_map
        self.inputs = tuple(feature_spec(by_name[cm], onnx) for onnx, cm in in_map.items())
        self.outputs = tuple(feature_spec(by_name[cm], onnx) for onnx, cm in out_map.items())

    def __enter__(self) -> CoreMLRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.model = None

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        prepared = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise DataError("input missing for the Core ML model", f"no array for input '{spec.name}'")
            prepared[self._inputs[spec.name]] = np.asarray(feeds[spec.name], dtype=np.dtype(spec.dtype), order="C")
        return prepared

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        try:
            result = self.model.predict(self._prepare(feeds))
        except Exception as exc:
            raise BackendError("Core ML prediction failed", first_line(exc)) from exc
        return {onnx: np.asarray(result[cm]) for onnx, cm in self._outputs.items()}

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        prepared = self._prepare(feeds)
        model = self.model

        def call() -> None:
            model.predict(prepared)

        return call

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        return None  # MLModel.predict is synchronous; Core ML schedules across units itself

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        """Per-op rows from Core ML's compute plan (macOS 14.4+): the compute device each op is dispatched to and
        its precision (the op's output type in the ML Program). Core ML measures no per-op time: an op's
        ``time_ms`` is its share of the plan's *estimated* cost times the measured mean latency of 5 predictions,
        and ``exec_type`` says so."""
        import time

        ct = coremltools()
        try:
            from coremltools.models.compute_plan import MLComputePlan
        except ImportError:
            return None
        compiled = getattr(self.model, "get_compiled_model_path", lambda: None)()
        if not compiled:
            return None
        prepared = self._prepare(feeds)
        start = time.perf_counter()
        for _ in range(5):
            self.model.predict(prepared)
        mean_ms = (time.perf_counter() - start) * 1000 / 5
        plan = MLComputePlan.load_from_path(path=str(compiled), compute_units=self.model.compute_unit)
        dtypes = op_output_precisions(self.model.get_spec())
        rows = []
        for function in plan.model_structure.program.functions.values():
            for op in function.block.operations:
                cost = plan.get_estimated_cost_for_mlprogram_operation(op)
                usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
                if cost is None or usage is None:
                    continue
                name = op.outputs[0].name if op.outputs else op.operator_name
                device = type(usage.preferred_compute_device).__name__.removeprefix("ML").removesuffix(
                    "ComputeDevice")
                rows.append(LayerTime(name, op.operator_name, round(float(cost.weight) * mean_ms, 6),
                                      f"{device} (estimated cost share)", dtypes.get(name, "")))
        del ct
        return sorted(rows, key=lambda t: -t.time_ms) or None


_MIL_PRECISIONS = {"FLOAT16": "fp16", "FLOAT32": "fp32", "BFLOAT16": "bf16", "INT8": "int8", "UINT8": "int8",
                   "INT32": "int32", "INT4": "int4"}


def op_output_precisions(spec: Any) -> dict[str, str]:
    """MIL op output name -> its precision, read from an ML Program spec (runs anywhere, no macOS needed)."""
    from coremltools.proto import MIL_pb2

    out: dict[str, str] = {}
    if spec.WhichOneof("Type") != "mlProgram":
        return out
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                for value in op.outputs:
                    kind = value.type.tensorType.dataType
                    text = MIL_pb2.DataType.Name(kind) if kind else ""
                    if text:
                        out[value.name] = _MIL_PRECISIONS.get(text, text.lower())
    return out
