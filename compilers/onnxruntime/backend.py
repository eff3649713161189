"""ONNX Runtime compiler and runner."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, UnsupportedError, UserInputError, first_line
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import Artifact, CompileRequest, LayerTime, Support

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.model import LoadedModel
    from onnxsmith.targets import Target

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "onnxruntime") from exc
    onnxruntime.set_default_logger_severity(4)  # no coloured log line before our own one-line error
    return onnxruntime


def available_providers() -> list[str]:
    ort = _ort()
    if hasattr(ort, "preload_dlls") and "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            ort.preload_dlls()
        except Exception:  # the CUDA provider then fails to load, and is reported so below
            pass
    return list(ort.get_available_providers())


def session_options(threads: int = 0, profile_file: str | None = None) -> Any:
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4  # fatal only: an error is raised to us and reported as one line, never logged too
    if threads:
        opts.intra_op_num_threads = threads
    if profile_file:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_file
    return opts


def providers_for(target: Target) -> list[str]:
    wanted = list(target.options_for("onnxruntime").get("providers", []))
    if not wanted:
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if target.kind == "gpu" else ["CPUExecutionProvider"]
    return wanted


class OnnxRuntimeRunner:
    """An ONNX Runtime session with I/O binding for the timed loop."""

    def __init__(self, model_path: Path, providers: list[str], threads: int = 0) -> None:
        ort = _ort()
        self._path = model_path
        self._providers = providers
        self._threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), session_options(threads), providers=providers)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime could not load '{model_path.name}'", first_line(exc)) from exc
        self.providers = self.session.get_providers()
        self.inputs = tuple(_spec(i) for i in self.session.get_inputs())
        self.outputs = tuple(_spec(o) for o in self.session.get_outputs())
        self._names = [o.name for o in self.outputs]

    def __enter__(self) -> OnnxRuntimeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self._names, dict(feeds))
        except Exception as exc:
            raise BackendError("ONNX Runtime inference failed", first_line(exc)) from exc
        return dict(zip(self._names, results))

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        binding = self.session.io_binding()
        device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        ort = _ort()
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

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        return None  # one session uses every intra-op thread already; no request-level parallelism

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        import json
        import os
        import tempfile

        ort = _ort()
        with tempfile.TemporaryDirectory() as tmp:
            opts = session_options(self._threads, os.path.join(tmp, "ort"))
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
                                    args.get("provider", ""))
        return sorted(times.values(), key=lambda t: -t.time_ms)


def _spec(arg: Any) -> TensorSpec:
    dtype = arg.type.replace("tensor(", "").rstrip(")")
    dtype = {"float": "float32", "double": "float64", "float16": "float16"}.get(dtype, dtype)
    return TensorSpec(arg.name, dtype, tuple(d if isinstance(d, int) else None for d in arg.shape))


class OnnxRuntimeCompiler:
    """ONNX Runtime backend: optimizes the graph offline and runs it with the CPU or CUDA provider."""

    name = "onnxruntime"
    extra = "onnxruntime"
    artifact_kind = "ONNX model (optimized offline by ONNX Runtime)"

    def check_environment(self) -> None:
        _ort()

    def version(self) -> str:
        return str(_ort().__version__)

    def devices(self) -> list[str]:
        providers = available_providers()
        return ["CPU"] + (["CUDA"] if "CUDAExecutionProvider" in providers else [])

    def supports(self, target: Target) -> Support:
        if target.kind in ("cpu", "gpu"):
            return Support(True)
        return Support(False, f"ONNX Runtime has no provider here for {target.kind} targets")

    def runs_here(self, target: Target) -> Support:
        from onnxsmith.hostcheck import host_matches

        if target.kind == "gpu":
            import platform

            from onnxsmith.hostcheck import gpu_matches

            arch = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
            if target.requires.arch and target.requires.arch != arch:
                return Support(False, f"{target.id} is an {target.requires.arch} device and this machine is {arch}",
                               "run the bundle on the device")
            if "CUDAExecutionProvider" not in available_providers():
                return Support(False, "ONNX Runtime's CUDA provider is not available",
                               "pip install onnxruntime-gpu on a machine with an NVIDIA GPU")
            return gpu_matches(target)
        return host_matches(target)

    def precisions(self, target: Target) -> tuple[str, ...]:
        return ("fp32",)

    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        return {}

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        ort = _ort()
        if request.precision != "fp32":
            raise UnsupportedError(f"onnxruntime backend cannot compile {request.precision}",
                                   "it runs the ONNX graph as given",
                                   "run 'onnxsmith optimize' for fp16/int8 ONNX passes, or choose another backend")
        unknown = set(request.options) - {"threads"}
        if unknown:
            raise UserInputError(f"unknown onnxruntime option '{sorted(unknown)[0]}'", "allowed: threads",
                                 "drop the --option, or choose the backend that takes it")
        src = request.model.path
        shutil.copyfile(src, workdir / "model.onnx")
        for extra in src.parent.glob(src.name + ".data"):
            shutil.copyfile(extra, workdir / extra.name)
        opts = session_options(int(request.options.get("threads", request.profile.threads or 0)))
        # The saved file stays portable (extended level); sessions apply the hardware-specific layouts at load.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(workdir / "model.optimized.onnx")
        start = time.perf_counter()
        try:
            ort.InferenceSession(str(workdir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendError("ONNX Runtime could not optimize the model", first_line(exc)) from exc
        files = ["model.optimized.onnx"] if (workdir / "model.optimized.onnx").exists() else ["model.onnx"]
        if files[0] != "model.onnx":
            (workdir / "model.onnx").unlink()
        files += [p.name for p in workdir.glob("*.data")]
        providers = providers_for(request.target)
        used = graph_precision(request.model.proto)
        notes = () if used == "fp32" else (f"the ONNX graph itself is {used} (an ONNX pass transformed it); ONNX "
                                           "Runtime runs it as given",)
        return Artifact(
            backend=self.name, backend_version=self.version(), device=providers[0], precision="fp32",
            precision_used=used, files=tuple(files), notes=notes,
            options={"providers": providers, "graph_optimization_level": "ORT_ENABLE_EXTENDED offline, ORT_ENABLE_ALL at load",
                     "threads": int(request.options.get("threads", request.profile.threads or 0))},
            metadata={"optimize_seconds": round(time.perf_counter() - start, 3)},
        )

    def load(self, artifact: Artifact, directory: Path, target: Target) -> OnnxRuntimeRunner:
        providers = list(artifact.options.get("providers", ["CPUExecutionProvider"]))
        have = available_providers()
        providers = [p for p in providers if p in have] or ["CPUExecutionProvider"]
        return OnnxRuntimeRunner(directory / artifact.files[0], providers, int(artifact.options.get("threads", 0)))


_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
             "DynamicQuantizeLinear"}


def graph_precision(proto: Any) -> str:
    """The compute precision an ONNX graph carries: ``int8`` (QDQ or integer ops), ``fp16`` (fp16 weights) or fp32.

    Mixed graphs read ``int8+fp32`` / ``fp16+fp32`` when some weights stay fp32 (an fp16 overflow guard keeps ops
    in fp32, a quantizer excludes some)."""
    from onnx import TensorProto

    ops = {node.op_type for node in proto.graph.node}
    floats = [t.data_type for t in proto.graph.initializer
              if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(t.dims) >= 2]
    if ops & _INT8_OPS:
        return "int8"
    if TensorProto.FLOAT16 in floats:
        return "fp16+fp32" if TensorProto.FLOAT in floats else "fp16"
    return "fp32"


def reference_runner(model_path: Path, device: str = "cpu", threads: int = 0) -> OnnxRuntimeRunner:
    """ONNX Runtime fp32 on the original model: the reference for validation and the profile baseline."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return OnnxRuntimeRunner(model_path, providers, threads)
