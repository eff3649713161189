"""The reference: ONNX Runtime fp32 on the original model, the one engine every validation compares with and
every profile's baseline row. It lives in the core (ONNX Runtime is a core dependency); the ``onnxruntime`` backend
plugin runs its artifacts with the same runner class.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, first_line
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import LayerTime, Runner

if TYPE_CHECKING:
    import numpy as np


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "") from exc
    onnxruntime.set_default_logger_severity(4)  # no coloured log line before our own one-line error
    return onnxruntime


def available_providers() -> list[str]:
    ort = import_ort()
    if hasattr(ort, "preload_dlls") and "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            ort.preload_dlls()
        except Exception:  # the CUDA provider then fails to load, and is reported so below
            pass
    return list(ort.get_available_providers())


GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}


def session_options(threads: int = 0, profile_file: str | None = None, graph_level: str = "all",
                    execution_mode: str = "sequential") -> Any:
    """Session options: ``graph_level`` one of :data:`GRAPH_LEVELS`, ``execution_mode`` sequential or parallel."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[graph_level])
    opts.log_severity_level = 4  # fatal only: an error is raised to us and reported as one line, never logged too
    if execution_mode == "parallel":
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if threads:
        opts.intra_op_num_threads = threads
    if profile_file:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_file
    return opts


class OnnxRuntimeRunner(Runner):
    """An ONNX Runtime session with I/O binding for the timed loop."""

    def __init__(self, model_path: Path, providers: list[str], threads: int = 0, graph_level: str = "all",
                 execution_mode: str = "sequential") -> None:
        ort = import_ort()
        self._path = model_path
        self._providers = providers
        self._threads = threads
        self._session_args = {"graph_level": graph_level, "execution_mode": execution_mode}
        try:
            self.session = ort.InferenceSession(str(model_path), session_options(threads, **self._session_args),
                                                providers=providers)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime could not load '{model_path.name}'", first_line(exc)) from exc
        self.providers = self.session.get_providers()
        self.inputs = tuple(_spec(i) for i in self.session.get_inputs())
        self.outputs = tuple(_spec(o) for o in self.session.get_outputs())
        self._names = [o.name for o in self.outputs]
        self._plain = not all(s.numeric for s in (*self.inputs, *self.outputs))

    def __enter__(self) -> OnnxRuntimeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self._names, dict(feeds))
        except Exception as exc:
            raise BackendError("ONNX Runtime inference failed", first_line(exc)) from exc
        if self._plain:
            from onnxsmith.data.values import to_plain

            results = [to_plain(r) for r in results]  # string outputs as '<U' arrays, sequences as lists
        return dict(zip(self._names, results))

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        if self._plain:  # I/O binding takes numeric tensors only: strings, sequences and optionals go through run
            session, names, given = self.session, self._names, dict(feeds)

            def run_once() -> None:
                session.run(names, given)

            return run_once
        binding = self.session.io_binding()
        device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        ort = import_ort()
        for name, value in feeds.items():
            if device == "cuda":
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
            else:
                binding.bind_cpu_input(name, value)
        for name in self._names:
            binding.bind_output(name, device)
        session = self.session

        def call() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return call

    # parallel_throughput: the default (None): one session uses every intra-op thread already.

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        ort = import_ort()
        with tempfile.TemporaryDirectory() as tmp:
            opts = session_options(self._threads, os.path.join(tmp, "ort"), **self._session_args)
            session = ort.InferenceSession(str(self._path), opts, providers=self._providers)
            for _ in range(3):
                session.run(None, dict(feeds))
            events = json.loads(Path(session.end_profiling()).read_text())
        times: dict[str, LayerTime] = {}
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            name = event["name"][: -len("_kernel_time")]
            args = event.get("args", {})
            prev = times.get(name)
            dur = event.get("dur", 0) / 1000 / 3
            times[name] = LayerTime(name, args.get("op_name", ""), (prev.time_ms if prev else 0) + dur,
                                    args.get("provider", ""), ort_precision(args))
        return sorted(times.values(), key=lambda t: -t.time_ms)


_ORT_INT8_OPS = ("QLinear", "QGemm", "QAttention", "QuantizeLinear", "DequantizeLinear", "DynamicQuantize",
                 "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
_ORT_TYPES = (("int8", "int8"), ("uint8", "int8"), ("int4", "int4"), ("bfloat16", "bf16"), ("float16", "fp16"),
              ("float", "fp32"), ("double", "fp64"))


def ort_precision(args: Mapping[str, Any]) -> str:
    """The precision of one ONNX Runtime kernel from its profiling record: int8 for the quantized kernels
    (QLinear*, QGemm, *Integer, Quantize/Dequantize), else the lowest float type among its inputs."""
    op = str(args.get("op_name", ""))
    if op.startswith(_ORT_INT8_OPS):
        return "int8"
    kinds = set()
    for item in args.get("input_type_shape", []) or []:
        if isinstance(item, dict):
            kinds.update(str(k) for k in item)
    for name, precision in _ORT_TYPES:
        if name in kinds:
            return precision
    return ""


def _spec(arg: Any) -> TensorSpec:
    """ONNX Runtime's type text (``tensor(float)``, ``seq(tensor(string))``, ``optional(seq(tensor(int64)))``)."""
    text, wrap = arg.type, []
    while text.startswith(("seq(", "optional(")):
        head, _, text = text.partition("(")
        wrap.append("sequence" if head == "seq" else "optional")
        text = text[:-1]
    dtype = text.replace("tensor(", "").rstrip(")")
    dtype = {"float": "float32", "double": "float64", "float16": "float16"}.get(dtype, dtype)
    if wrap:
        return TensorSpec(arg.name, dtype, (), tuple(wrap))
    return TensorSpec(arg.name, dtype, tuple(d if isinstance(d, int) else None for d in (arg.shape or ())))


def reference_runner(model_path: Path, device: str = "cpu", threads: int = 0) -> OnnxRuntimeRunner:
    """ONNX Runtime fp32 on the original model: the reference for validation and the profile baseline."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return OnnxRuntimeRunner(model_path, providers, threads)
