"""A loaded OpenVINO artifact: sync requests for latency, an AsyncInferQueue for throughput, PERF_COUNT layers."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.openvino.common import (
    core, full_device_name, inference_precision, ov, read_property, vendor_why,
)
from onnxsmith.errors import BackendError, DataError
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import LayerTime, Runner

if TYPE_CHECKING:
    import numpy as np

PROFILE_RUNS = 5
"""Inferences averaged per layer by :meth:`OpenVINORunner.layer_profile` (after 2 warm-up runs)."""


def port_spec(port: Any, name: str | None = None) -> TensorSpec:
    """A model input/output port as a :class:`TensorSpec`."""
    shape = port.get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else None for d in shape) if shape.rank.is_static else ()
    try:
        dtype = port.get_element_type().to_dtype().name
    except Exception:  # bf16 and other types numpy lacks
        dtype = port.get_element_type().get_type_name()
    return TensorSpec(name or port.get_any_name(), dtype, dims)


def _match_ports(ports: list[Any], names: list[str]) -> list[tuple[str, Any]]:
    """(name, port) pairs: ports named like the ONNX model's tensors when known, else the model's name at that
    position (an input wired straight to an output can keep only the output's name), else their first name."""
    pairs = []
    claimed = {n for port in ports for n in port.get_names() if n in names}
    for index, port in enumerate(ports):
        known = port.get_names()
        wanted = names[index] if index < len(names) else ""
        fallback = wanted if wanted and wanted not in claimed else port.get_any_name()
        name = wanted if wanted in known else next((n for n in names if n in known), fallback)
        pairs.append((name, port))
    return pairs


class OpenVINORunner(Runner):
    """A compiled OpenVINO model ready to run (imported from the blob, or compiled from the IR)."""

    def __init__(self, compiled: Any, device: str, properties: Mapping[str, str], ir_path: Path,
                 input_names: list[str] | None = None, output_names: list[str] | None = None,
                 notes: tuple[str, ...] = (), loaded_from: str = "") -> None:
        self.compiled = compiled
        self.device = device
        self.device_name = f"{device} ({full_device_name(device)})"
        self.properties = dict(properties)
        self.notes = notes
        """Fallbacks taken while loading (e.g. the blob did not import and the IR was compiled)."""
        self.loaded_from = loaded_from
        self._ir_path = ir_path
        self._in = _match_ports(list(compiled.inputs), input_names or [])
        self._out = _match_ports(list(compiled.outputs), output_names or [])
        self.inputs = tuple(port_spec(port, name) for name, port in self._in)
        self.outputs = tuple(port_spec(port, name) for name, port in self._out)
        self.precision_used = inference_precision(compiled)
        self._request: Any = None

    def __enter__(self) -> OpenVINORunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._request = None
        self.compiled = None

    def _tensors(self, feeds: Mapping[str, np.ndarray]) -> list[tuple[Any, Any]]:
        """(port, openvino.Tensor) per input, converted once to the port's type; the arrays stay referenced."""
        import numpy as np

        openvino = ov()
        pairs = []
        for name, port in self._in:
            if name not in feeds:
                raise DataError("input feeds do not fit the OpenVINO model", f"no array for input '{name}'",
                                f"give arrays for {', '.join(n for n, _ in self._in)}")
            try:
                dtype = port.get_element_type().to_dtype()
            except Exception:  # bf16 and other types numpy lacks: pass the array as given
                dtype = None
            pairs.append((port, openvino.Tensor(np.asarray(feeds[name], dtype=dtype, order="C"))))
        return pairs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        if self._request is None:
            self._request = self.compiled.create_infer_request()
        request = self._request
        try:
            for port, tensor in self._tensors(feeds):
                request.set_tensor(port, tensor)
            request.infer()
            return {name: np.array(request.get_tensor(port).data, copy=True) for name, port in self._out}
        except DataError:
            raise
        except Exception as exc:
            raise BackendError("OpenVINO inference failed", vendor_why(exc)) from exc

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Set the inputs on one InferRequest once; the call is ``request.infer()``, as ``benchmark_app -api sync``."""
        request = self.compiled.create_infer_request()
        tensors = self._tensors(feeds)
        for port, tensor in tensors:
            request.set_tensor(port, tensor)

        def call() -> None:
            request.infer(share_outputs=True)  # no output copy: benchmark_app's figure excludes it too

        call.keep_alive = tensors  # type: ignore[attr-defined]  # the Tensors share the arrays' memory
        return call

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        """Inferences/s with ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` jobs in an AsyncInferQueue."""
        jobs = int(read_property(self.compiled, "OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1)
        queue = ov().AsyncInferQueue(self.compiled, jobs)
        tensors = self._tensors(feeds)
        for index in range(len(queue)):
            for port, tensor in tensors:
                queue[index].set_tensor(port, tensor)
        done = [0]

        def completed(request: Any, userdata: Any) -> None:
            done[0] += 1

        try:
            for _ in range(len(queue)):  # warm every request once
                queue.start_async()
            queue.wait_all()
            queue.set_callback(completed)
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                queue.start_async()  # blocks while every request is busy
            queue.wait_all()
            elapsed = time.perf_counter() - start
        except Exception as exc:
            raise BackendError("OpenVINO parallel inference failed", vendor_why(exc)) from exc
        return (done[0] / elapsed if elapsed > 0 else 0.0), len(queue)

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        """Per-layer times from ``get_profiling_info()`` with ``PERF_COUNT=YES``, slowest first, executed only."""
        openvino = ov()
        try:
            compiled = core().compile_model(str(self._ir_path), self.device, {**self.properties, "PERF_COUNT": "YES"})
        except Exception as exc:
            raise BackendError("OpenVINO could not compile the IR with PERF_COUNT", vendor_why(exc)) from exc
        request = compiled.create_infer_request()
        for port, tensor in self._tensors(feeds):
            request.set_tensor(compiled.input(port.get_any_name()), tensor)
        totals: dict[str, list[Any]] = {}
        executed = openvino.ProfilingInfo.Status.EXECUTED
        for run in range(2 + PROFILE_RUNS):
            request.infer()
            if run < 2:
                continue
            for info in request.get_profiling_info():
                if info.status != executed:
                    continue
                entry = totals.setdefault(info.node_name, [info.node_type, info.exec_type, 0.0])
                entry[2] += info.real_time.total_seconds() * 1000
        runtime = runtime_precisions(compiled)
        layers = [LayerTime(name, op_type, round(ms / PROFILE_RUNS, 6), exec_type,
                            runtime.get(name) or exec_precision(exec_type))
                  for name, (op_type, exec_type, ms) in totals.items()]
        return sorted(layers, key=lambda layer: -layer.time_ms)


_OV_PRECISIONS = {"i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4", "bf16": "bf16", "f16": "fp16",
                  "f32": "fp32", "i32": "int32", "i64": "int64", "boolean": "bool", "u1": "bool"}


def runtime_precisions(compiled: Any) -> dict[str, str]:
    """Node name -> the precision the CPU plugin runs it in: the execution graph's ``runtimePrecision``."""
    out = {}
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except Exception:  # a device without an execution graph: the kernel names still tell
        return out
    for op in ops:
        info = op.get_rt_info()
        try:
            value = str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else ""
        except Exception:
            value = str(info["runtimePrecision"]) if "runtimePrecision" in info else ""
        if value:
            out[op.get_friendly_name()] = _OV_PRECISIONS.get(value.lower(), value.lower())
    return out


def exec_precision(exec_type: str) -> str:
    """The precision in a CPU kernel name (``brgconv_avx512_amx_I8``, ``jit_avx512_f32``)."""
    tail = exec_type.rsplit("_", 1)[-1].lower() if "_" in exec_type else ""
    return _OV_PRECISIONS.get(tail, "")
