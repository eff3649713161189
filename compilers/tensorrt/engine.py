"""Building TensorRT engines: ONNX parsing, builder configuration, timing cache, engine inspection.

Written against the TensorRT 10 and 11 Python APIs (``tensorrt`` module); the calls follow NVIDIA's own Polygraphy
loaders. Differences between the two majors are detected by feature, never by version string:
``trt.BuilderFlag.FP16`` exists only in 10 (weak typing), ``IInt8EntropyCalibrator2`` only in 10.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, UnsupportedError, first_line

if TYPE_CHECKING:
    import onnx
    from onnxsmith.compilers.tensorrt.gpu import GpuInfo
    from onnxsmith.compilers.tensorrt.options import BuildOptions
    from onnxsmith.model.shapes import ShapeRange


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`MissingDependencyError` (also for PyPI's stub packages)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: bindings present, libnvinfer missing
        why = "the 'tensorrt' backend needs it" if isinstance(exc, ImportError) else \
            f"its libraries failed to load ({first_line(exc)})"
        raise MissingDependencyError("tensorrt", "tensorrt", why) from exc
    if not all(hasattr(trt, name) for name in ("Builder", "Runtime", "OnnxParser")):
        raise MissingDependencyError("tensorrt", "tensorrt", "the installed 'tensorrt' package is a stub without "
                                     "NVIDIA's bindings (its libraries come from NVIDIA's package index)")
    return trt


def weak_typing_available(trt: Any) -> bool:
    """TensorRT 10 has precision builder flags; TensorRT 11 removed them (networks are always strongly typed)."""
    return hasattr(trt.BuilderFlag, "FP16")


def legacy_calibration_available(trt: Any) -> bool:
    return hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.BuilderFlag, "INT8")


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps warnings and errors, so failures can say what TensorRT said."""

    class CollectingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []
            with contextlib.suppress(Exception):
                # TensorRT drops lower severities before calling back: VERBOSE/INFO messages (thousands per build)
                # never cross into Python
                self.min_severity = trt.ILogger.Severity.WARNING

        def log(self, severity: Any, msg: str) -> None:  # called from C++: must not raise
            try:
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.messages.append(("error", msg))
                elif severity == trt.ILogger.Severity.WARNING:
                    self.messages.append(("warning", msg))
            except Exception:
                pass

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level == "error"]

        def warnings(self) -> list[str]:
            return [m for level, m in self.messages if level == "warning"]

    return CollectingLogger()


@dataclasses.dataclass(frozen=True)
class ParserProblem:
    """One node TensorRT's ONNX parser rejected."""

    node_index: int
    node_name: str
    op_type: str
    message: str


def parser_problems(parser: Any, model: onnx.ModelProto | None = None) -> list[ParserProblem]:
    """The parser's errors, each tied to the ONNX node it failed on (``node() == -1`` for whole-model errors)."""
    nodes = list(model.graph.node) if model is not None else []
    problems = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = int(error.node())
        name = _call(error, "node_name") or (nodes[node].name if 0 <= node < len(nodes) else "")
        op = _call(error, "node_operator") or (nodes[node].op_type if 0 <= node < len(nodes) else "")
        problems.append(ParserProblem(node, name or (f"node_{node}" if node >= 0 else ""), op, str(error.desc())))
    return problems


def _call(obj: Any, method: str) -> str:
    try:
        return str(getattr(obj, method)() or "")
    except Exception:  # older releases lack node_name()/node_operator()
        return ""


def create_parser(trt: Any, logger: Any, strongly_typed: bool) -> tuple[Any, Any, Any]:
    """(builder, network, parser). Explicit batch is the only mode since TensorRT 10 (flags 0)."""
    try:
        builder = trt.Builder(logger)
    except Exception as exc:
        raise UnsupportedError("TensorRT could not create a builder", first_line(exc),
                               "TensorRT needs an NVIDIA GPU with a working driver, even to parse a model") from exc
    if builder is None:
        raise UnsupportedError("TensorRT could not create a builder", "; ".join(logger.errors()[-2:]) or
                               "no CUDA device", "check the GPU and driver with nvidia-smi")
    flags = 0
    if strongly_typed and weak_typing_available(trt):  # 11 ignores (and deprecates) the flag: always strong
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    with contextlib.suppress(Exception):
        trt.init_libnvinfer_plugins(logger, "")
    parser = trt.OnnxParser(network, logger)
    return builder, network, parser


def parse_onnx(trt: Any, logger: Any, path: Path, model: onnx.ModelProto, strongly_typed: bool
               ) -> tuple[Any, Any, Any]:
    """Parse ``path`` (from the file, so external weights resolve); raise with the failing node on error."""
    builder, network, parser = create_parser(trt, logger, strongly_typed)
    ok = parser.parse_from_file(str(path))
    problems = parser_problems(parser, model)
    if not ok or problems:
        if problems:
            first = problems[0]
            where = f"node '{first.node_name}' (op {first.op_type})" if first.node_index >= 0 else "the model"
            why = f"{where}: {first.message}" + (f" (+{len(problems) - 1} more error(s))" if len(problems) > 1 else "")
        else:
            why = "; ".join(logger.errors()[-2:]) or "no error recorded"
        raise BackendError("TensorRT's ONNX parser rejected the model", why,
                           "'onnxsmith inspect MODEL --target <nvidia target>' lists every unsupported node; "
                           "simplifying the model (onnxslim) or a newer TensorRT may help")
    return builder, network, parser


def unsupported_nodes(trt: Any, path: Path, model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op type -> node names TensorRT cannot import (``supports_model_v2`` where available, else a parse).

    Nodes the parser names in its errors are listed; when it names none, every node of each partition
    ``supports_model_v2`` marks unsupported is listed (a partition may hold convertible nodes too). A plain parse
    (TensorRT before 10.1) stops at the first failing node.
    """
    logger = make_logger(trt)
    _, _, parser = create_parser(trt, logger, strongly_typed=False)
    nodes = list(model.graph.node)
    found: dict[str, list[str]] = {}

    def add(op: str, name: str) -> None:
        if name not in found.setdefault(op or "?", []):
            found[op or "?"].append(name)

    if hasattr(parser, "supports_model_v2"):
        supported = parser.supports_model_v2(path.read_bytes(), str(path))
        problems = parser_problems(parser, model)
        for problem in problems:
            if problem.node_index >= 0:
                add(problem.op_type, problem.node_name)
        if not supported and not any(p.node_index >= 0 for p in problems):
            for index in range(parser.num_subgraphs):
                if not parser.is_subgraph_supported(index):
                    for node in parser.get_subgraph_nodes(index):
                        if 0 <= node < len(nodes):
                            add(nodes[node].op_type, nodes[node].name or f"node_{node}")
        return found
    parser.parse_from_file(str(path))
    for problem in parser_problems(parser, model):
        if problem.node_index >= 0:
            add(problem.op_type, problem.node_name)
    return found


# ---- timing cache ---------------------------------------------------------------------------------------------

def timing_cache_path(trt_version: str, gpu: GpuInfo) -> Path:
    """``<cache root>/tensorrt-timing/<gpu>-sm<cc>-trt<version>.cache`` (timings are GPU- and version-specific)."""
    from onnxsmith.build.cache import cache_root

    name = re.sub(r"[^A-Za-z0-9.]+", "-", gpu.name).strip("-")
    return cache_root() / "tensorrt-timing" / f"{name}-{gpu.sm}-trt{trt_version}.cache"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # Windows: builds of one machine rarely race; the atomic rename keeps the file whole
            pass
        yield


def attach_timing_cache(config: Any, path: Path) -> bool:
    """Give ``config`` the timing cache stored at ``path`` (or an empty one); True when one was loaded."""
    data = b""
    with _locked(path):
        if path.is_file():
            data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if data and (cache is None or not config.set_timing_cache(cache, ignore_mismatch=False)):
        # unreadable, or written for another device/version: build with an empty cache (saving replaces it)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        return False
    if not data:
        config.set_timing_cache(cache, ignore_mismatch=False)
    return bool(data)


def save_timing_cache(config: Any, path: Path) -> None:
    """Merge this build's timings into ``path`` (others may have added some meanwhile) and rename it into place."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    with _locked(path):
        if path.is_file():
            previous = config.create_timing_cache(path.read_bytes())
            if previous is not None:
                cache.combine(previous, ignore_mismatch=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(bytes(memoryview(cache.serialize())))
        os.replace(tmp, path)


# ---- builder configuration ------------------------------------------------------------------------------------

def configure(trt: Any, builder: Any, network: Any, opts: BuildOptions, flags: list[str],
              ranges: Mapping[str, ShapeRange] | None = None, copies: int = 1) -> tuple[Any, Any]:
    """The builder config: memory pool, precision flags, optimization level, hardware compatibility, profiles.

    Dynamic network inputs get an optimization profile from ``ranges`` (MIN:OPT:MAX, kernels tuned at OPT) or the
    batch options, added ``copies`` times (identical profiles: one per execution context that may exist at once,
    :func:`onnxsmith.compilers.tensorrt.options.profile_copies`). Returns (config, the first profile or None).
    """
    from onnxsmith.compilers.tensorrt.options import profile_shapes

    config = builder.create_builder_config()
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    if opts.builder_optimization_level is not None:
        config.builder_optimization_level = opts.builder_optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector reports per-layer precisions
    if not opts.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if opts.hardware_compatibility != "none":
        level = getattr(trt.HardwareCompatibilityLevel, opts.hardware_compatibility.upper(), None)
        if level is None:  # SAME_COMPUTE_CAPABILITY exists from TensorRT 10.9
            raise UnsupportedError(f"TensorRT {getattr(trt, '__version__', '?')} has no hardware compatibility "
                                   f"level {opts.hardware_compatibility}", "same_compute_capability arrived in "
                                   "TensorRT 10.9", "use hardware_compatibility=ampere_plus, or a newer TensorRT")
        config.hardware_compatibility_level = level
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = profile_shapes([(t.name, tuple(int(d) for d in t.shape)) for t in inputs], opts, ranges)
    first = None
    for _ in range(max(1, copies) if shapes else 0):
        profile = builder.create_optimization_profile()
        for name, (low, best, high) in shapes.items():
            profile.set_shape(name, low, best, high)
        if config.add_optimization_profile(profile) < 0:
            raise BackendError("TensorRT refused the optimization profile", f"shapes {shapes}",
                               "each MIN <= OPT <= MAX, with the network's fixed dims")
        first = first or profile
    return config, first


def build_serialized(builder: Any, network: Any, config: Any, logger: Any, calibrator: Any = None) -> bytes:
    """The serialized engine. When a calibrator failed during the build, its own error is raised (TensorRT only
    sees a calibration that stopped early and fails with a generic message)."""
    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as exc:
        _raise_calibrator_error(calibrator, exc)
        raise BackendError("TensorRT failed to build the engine", first_line(exc)) from exc
    _raise_calibrator_error(calibrator, None)
    if serialized is None:
        errors = logger.errors()
        raise BackendError("TensorRT failed to build the engine", "; ".join(errors[-3:]) or "no error recorded",
                           "a smaller builder_optimization_level or workspace_mb, or another precision, may help")
    return bytes(memoryview(serialized))


def _raise_calibrator_error(calibrator: Any, cause: BaseException | None) -> None:
    from onnxsmith.errors import OnnxsmithError

    error = getattr(calibrator, "error", None)
    if error is None:
        return
    if isinstance(error, OnnxsmithError):
        raise error from cause
    raise BackendError("int8 calibration failed while TensorRT built the engine",
                       f"{type(error).__name__}: {first_line(error)}",
                       "check the calibration data; --option int8_method=qdq calibrates with ONNX Runtime instead")\
        from error


def deserialize(trt: Any, logger: Any, data: bytes) -> tuple[Any, Any]:
    """(runtime, engine); the runtime must outlive the engine."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError("TensorRT could not load the engine", "; ".join(logger.errors()[-2:]) or
                           "deserialization failed",
                           "engines run only with the TensorRT version and GPU architecture they were built with: "
                           "rebuild it here")
    return runtime, engine


def engine_information(trt: Any, engine: Any) -> dict[str, Any]:
    """The engine inspector's JSON (layers with types, tactics and tensor formats when built DETAILED)."""
    inspector = engine.create_engine_inspector()
    try:
        return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except (ValueError, TypeError):
        return {"Layers": []}


def layer_types(engine_info: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Layer name -> (layer type, tactic) from the inspector's JSON."""
    out = {}
    for layer in engine_info.get("Layers", []):
        if isinstance(layer, dict) and "Name" in layer:
            tactic = layer.get("TacticName") or layer.get("TacticValue") or ""
            out[str(layer["Name"])] = (str(layer.get("LayerType", "")), str(tactic))
    return out


def io_tensors(trt: Any, engine: Any) -> list[dict[str, Any]]:
    """Name, mode, dtype and shape (-1 where dynamic) of every engine input and output."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        tensors.append({
            "name": name,
            "input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1],
            "shape": [int(d) for d in engine.get_tensor_shape(name)],
        })
    return tensors
